"""Scale settings of a real master: the file-descriptor limit it raises (and what it says
that permits), the descriptors a connection really costs, and the default worker count
(one per core the master may run on)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from pop3d.server import fdlimit
from tests.server.test_network import command, connect, login, worker_pids
from tests.support.lab import Lab, start_server


def _open_files(pid: int) -> tuple[int, int]:
    text = Path(f"/proc/{pid}/limits").read_text()
    match = re.search(r"^Max open files\s+(\d+)\s+(\d+)", text, re.MULTILINE)
    assert match, text
    return int(match.group(1)), int(match.group(2))


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settled_fds(pid: int, expected: int) -> int:
    """The worker's descriptor count once it reaches ``expected`` (or after 5 s)."""
    deadline = time.monotonic() + 5
    count = _fds(pid)
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.02)
        count = _fds(pid)
    return count


def _steady_fds(pid: int) -> int:
    """The worker's descriptor count once it has not changed for 0.3 s (or after 5 s)."""
    deadline = time.monotonic() + 5
    count, since = _fds(pid), time.monotonic()
    while time.monotonic() - since < 0.3 and time.monotonic() < deadline:
        time.sleep(0.02)
        if (now := _fds(pid)) != count:
            count, since = now, time.monotonic()
    return count


def _use_lock(lab: Lab, mode: str) -> bool:
    """Set ``maildrop_lock``; whether the lock is a file in each Maildir."""
    with lab.config.open("a") as config:
        config.write(f"maildrop_lock: {mode}\n")
    return mode == "maildir"


@pytest.mark.parametrize("mode", ["maildir", "table"])
def test_master_raises_the_soft_limit_and_says_what_it_permits(lab: Lab, mode: str) -> None:
    in_maildir = _use_lock(lab, mode)
    per_session = (4096 - fdlimit.reserved(in_maildir)) // fdlimit.fds_logged_in(in_maildir)
    server = start_server(lab, wrapper=("prlimit", "--nofile=256:4096", "--"), maxchild=5000)
    try:
        (worker,) = worker_pids(server)
        assert _open_files(server.process.pid) == (4096, 4096)
        assert _open_files(worker) == (4096, 4096)  # inherited across exec
        log = server.log_text()
        assert "file descriptors per process: raised from 256 to 4096 (the hard limit)" in log
        assert f"each worker can hold {per_session} logged-in sessions" in log
        # maxchild=5000 on one worker is more than 4096 descriptors hold: said at start.
        assert f"permits {per_session} logged-in sessions per worker" in log
        assert re.search(r"service \S+ listening on 127\.0\.0\.1:\d+", log), log
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("mode", ["maildir", "table"])
def test_a_connection_costs_what_the_log_says(lab: Lab, mode: str) -> None:
    """1 descriptor before login; once the maildrop is open, 2 with its lock in the Maildir,
    1 with the lock table; none after. A second session of the same user is [IN-USE]."""
    logged_in = fdlimit.fds_logged_in(_use_lock(lab, mode))
    server = start_server(lab)
    try:
        (worker,) = worker_pids(server)
        # A first connection makes the worker finish its start-up (event loop, self-pipe,
        # lazily opened files, the lock table), however slowly a loaded machine lets it.
        warm_up, warm_reader = connect(server.port)
        assert warm_reader.readline().startswith(b"+OK")
        assert command(warm_up, warm_reader, b"USER bob").startswith(b"+OK")
        assert command(warm_up, warm_reader, b"PASS builder").startswith(b"+OK")
        assert command(warm_up, warm_reader, b"QUIT").startswith(b"+OK")
        warm_up.close()
        rest = _steady_fds(worker)
        sock, reader = connect(server.port)
        assert reader.readline().startswith(b"+OK")
        assert _settled_fds(worker, rest + fdlimit.FDS_BEFORE_LOGIN) == rest + 1
        assert command(sock, reader, b"USER alice").startswith(b"+OK")
        assert command(sock, reader, b"PASS wonderland").startswith(b"+OK")
        assert _settled_fds(worker, rest + logged_in) == rest + logged_in
        again, again_reader = connect(server.port)
        assert again_reader.readline().startswith(b"+OK")
        assert command(again, again_reader, b"USER alice").startswith(b"+OK")
        assert command(again, again_reader, b"PASS wonderland").startswith(b"-ERR [IN-USE]")
        again_reader.close()  # else the makefile keeps the socket open
        again.close()
        assert command(sock, reader, b"QUIT").startswith(b"+OK")
        sock.close()
        assert _settled_fds(worker, rest) == rest
        assert rest < fdlimit.reserved(mode == "maildir")
    finally:
        server.stop()


def _cyrus_default_workers(lab: Lab, wrapper: tuple[str, ...], expected: int) -> None:
    server = start_server(lab, prefork=None, wrapper=wrapper, workers=expected)
    try:
        time.sleep(0.5)  # a master that started too many would have started them by now
        assert len(worker_pids(server)) == expected
        assert f"service pop3: {expected} workers (one per core available" in server.log_text()
        sock, _reader, reply = login(server.port)
        assert reply.startswith(b"+OK")
        sock.close()
    finally:
        assert server.stop() == 0


def test_workers_follow_the_cores_without_prefork(lab: Lab) -> None:
    _cyrus_default_workers(lab, (), len(os.sched_getaffinity(0)))


def test_workers_follow_the_master_s_affinity(lab: Lab) -> None:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("one core: the default is 1 either way")
    _cyrus_default_workers(lab, ("taskset", "-c", str(cores[0])), 1)


def test_workers_without_prefork_are_no_more_than_maxchild(lab: Lab) -> None:
    """maxchild=1 on a machine of several cores: one worker, not one worker per core
    each holding a share of one session (which would let in one per worker)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: the default is 1 either way")
    server = start_server(lab, prefork=None, maxchild=1, workers=1)
    try:
        time.sleep(0.5)  # a master that started too many would have started them by now
        assert len(worker_pids(server)) == 1
        assert "1 workers (one per core available, no more than maxchild=1" in server.log_text()
    finally:
        assert server.stop() == 0
