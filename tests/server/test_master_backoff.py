"""A service whose workers keep dying is backed off, alone (issue 12, finding 3): the
master never exits because workers die, and the other services keep serving."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import time
from pathlib import Path

from pop3d.server.master import Backoff
from tests.support.lab import Lab, Server, start_server


def workers_of(server: Server, service: str) -> list[int]:
    """The master's children serving ``service`` (from their environment)."""
    path = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    found = []
    for pid in path.read_text().split():
        with contextlib.suppress(OSError):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"CYRUS_SERVICE={service}".encode() in environ:
                found.append(int(pid))
    return found


def serves(port: int) -> bool:
    """A full session: greeting, login, STAT, QUIT."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        if not reader.readline().startswith(b"+OK"):
            return False
        sock.sendall(b"USER bob\r\nPASS builder\r\nSTAT\r\nQUIT\r\n")
        replies = [reader.readline() for _ in range(4)]
        return all(reply.startswith(b"+OK") for reply in replies)


def wait_for_worker(server: Server, service: str, other: int, timeout: float) -> int:
    """Wait until ``service`` has a worker again; the other service is checked meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        assert server.process.poll() is None, server.log_text()
        pids = workers_of(server, service)
        if pids:
            return pids[0]
        assert serves(other), "the other service stopped serving"
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)


def test_a_crash_looping_service_is_backed_off_and_the_others_keep_serving(lab: Lab) -> None:
    server = start_server(lab, {"pop3": "", "other": ""})
    try:
        # The old master gave up (exit 70, every service down) at the sixth quick death.
        for _kill in range(6):
            pid = wait_for_worker(server, "pop3", server.ports["other"], timeout=40)
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        started = time.monotonic()
        wait_for_worker(server, "pop3", server.ports["other"], timeout=40)
        waited = time.monotonic() - started
        assert server.process.poll() is None
        deadline = time.monotonic() + 10
        while True:  # the new worker may still be importing
            with contextlib.suppress(OSError):
                if serves(server.port):
                    break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert serves(server.ports["other"])
        log = server.log_text()
        # exponential: the sixth death waited far longer than the first
        assert "was killed by SIGKILL" in log
        assert "restarting it in 0.25 s" in log and "restarting it in 8.00 s" in log, log
        assert waited > 5, waited
    finally:
        assert server.stop() == 0


def test_a_successor_that_cannot_start_does_not_take_the_master_down(lab: Lab) -> None:
    """A worker retires (-U) when the master has no descriptor left for its successor's
    pipes: the master logs it and tries again after the longest pause. It once died of
    the OSError (exit 70), every service with it."""
    server = start_server(lab, {"pop3": "-U 2", "other": ""})
    master = server.process.pid
    soft, hard = resource.prlimit(master, resource.RLIMIT_NOFILE)
    try:
        (retiring,) = workers_of(server, "pop3")
        # No descriptor number above the standard three may be given out: a limit at the
        # count of the open ones (or at the lowest free number) left free the numbers the
        # retirement itself frees (the retiring worker's status pipe and login channel),
        # and the successor started on them (seen in CI). Descriptors already open stay.
        resource.prlimit(master, resource.RLIMIT_NOFILE, (3, hard))
        assert serves(server.port)  # the second connection after start_server's probe
        deadline = time.monotonic() + 10
        while "cannot start a worker" not in server.log_text():
            assert server.process.poll() is None, server.log_text()
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.05)
        assert "Too many open files; trying again in 30.00 s" in server.log_text()
        assert serves(server.ports["other"])
        resource.prlimit(master, resource.RLIMIT_NOFILE, (soft, hard))
        deadline = time.monotonic() + 40  # the pause, then the start
        while not set(workers_of(server, "pop3")) - {retiring}:
            assert server.process.poll() is None, server.log_text()
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while True:  # the new worker may still be importing
            with contextlib.suppress(OSError):
                if serves(server.port):
                    break
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(master, resource.RLIMIT_NOFILE, (soft, hard))
        assert server.stop() == 0, server.log_text()


def test_backoff_doubles_to_its_cap_and_a_long_life_resets_it() -> None:
    backoff = Backoff(first=0.25, cap=30.0, stable_after=10.0)
    delays = [backoff.after_death(lived=0.5) for _ in range(10)]
    assert delays[:5] == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert max(delays) == 30.0 and delays[-1] == 30.0
    assert backoff.after_death(lived=3600) == 0.25  # an OOM kill after an hour: no loop
    assert backoff.after_death(lived=1.0) == 0.5
    assert backoff.after_death(lived=1.0, fatal=True) == 30.0
    assert Backoff().after_death(lived=0.0, fatal=False) == 0.25
    many = Backoff()
    assert all(many.after_death(0.0) <= 30.0 for _ in range(5000))


def test_a_reload_starts_a_worker_waiting_out_its_pause_now(lab: Lab) -> None:
    """Found probing: a configuration broken after start made the next worker exit 78 and
    the service wait 30 s, and fixing the file and sending SIGHUP changed nothing until
    the pause ended. The reload starts it now."""
    server = start_server(lab, {"pop3": "", "other": ""})
    good = lab.config.read_text()
    try:
        deadline = time.monotonic() + 20
        while not (serves(server.port) and serves(server.ports["other"])):  # both started
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.1)
        lab.config.write_text(good + "poptimeout: soon\n")  # every new worker: exit 78
        os.kill(wait_for_worker(server, "pop3", server.ports["other"], timeout=20), signal.SIGKILL)
        deadline = time.monotonic() + 20
        while not re.search(r"service pop3 worker 0 .* exited with 78", server.log_text()):
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.1)
        lab.config.write_text(good)
        os.kill(server.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 15  # not the 30 s pause
        while True:
            with contextlib.suppress(OSError):
                if serves(server.port):
                    break
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.1)
        assert "reload: starting worker" in server.log_text()
    finally:
        lab.config.write_text(good)
        assert server.stop() == 0
