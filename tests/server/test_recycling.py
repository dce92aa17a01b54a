"""Worker recycling (-U, -T): a retiring worker stops accepting, its successor starts at
once, its sessions run to their end, and nothing a client sends is lost on the way."""

from __future__ import annotations

import re
import time

from tests.server.test_network import command, login, worker_pids
from tests.support.lab import Lab, Server, start_server


def _wait_for(server: Server, text: str, count: int = 1, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log_text()
        if log.count(text) >= count:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not seen {count} times in:\n{server.log_text()}")


def _session(port: int) -> None:
    sock, reader, reply = login(port)
    with sock:
        assert reply.startswith(b"+OK"), reply
        assert command(sock, reader, b"STAT").startswith(b"+OK ")
        assert command(sock, reader, b"QUIT").startswith(b"+OK")


def test_every_connection_is_served_while_workers_retire_after_one_use(lab: Lab) -> None:
    server = start_server(lab, {"pop3": "-U 1"})
    try:
        for _ in range(4):
            _session(server.port)
        # start_server's readiness probe was one use too: 5 connections, 5 retirements
        log = _wait_for(server, "retired worker (pid", count=4)
        assert log.count("worker retiring: served 1 connections (-U 1)") >= 4
        assert "exited with 0" in log and "keeps dying" not in log
    finally:
        assert server.stop() == 0


def test_sessions_of_a_retiring_worker_run_to_their_end(lab: Lab) -> None:
    server = start_server(lab, {"pop3": "-U 2"})  # the readiness probe was use 1
    try:
        [first_worker] = worker_pids(server)
        alice, alice_reader, reply = login(server.port, "alice", "wonderland")
        assert reply.startswith(b"+OK")
        _wait_for(server, "retires; starting its successor")
        before = len(lab.messages("alice"))
        # the successor serves a new session while alice's is still open on the old worker
        _session(server.port)
        assert first_worker in worker_pids(server)
        assert command(alice, alice_reader, b"DELE 1").startswith(b"+OK")
        assert command(alice, alice_reader, b"QUIT").startswith(b"+OK")
        alice.close()
        log = _wait_for(server, f"retired worker (pid {first_worker}) exited with 0")
        # alice's session, and perhaps the readiness probe's if the worker has not yet seen
        # it close
        assert re.search(r"served 2 connections \(-U 2\); [12] sessions to finish", log)
        assert len(lab.messages("alice")) == before - 1  # its UPDATE ran in full
        assert first_worker not in worker_pids(server)
    finally:
        assert server.stop() == 0


def test_an_idle_worker_retires_after_the_reuse_timeout(lab: Lab) -> None:
    server = start_server(lab, {"pop3": "-T 1"})
    try:
        [first_worker] = worker_pids(server)
        # the readiness probe ended; 1 to 2 s later the worker retires
        log = _wait_for(server, f"retired worker (pid {first_worker}) exited with 0")
        assert "(-T 1)" in log
        _session(server.port)
        assert first_worker not in worker_pids(server)
    finally:
        assert server.stop() == 0


def test_a_busy_worker_does_not_retire_for_idleness(lab: Lab) -> None:
    server = start_server(lab, {"pop3": "-T 1"})
    try:
        _wait_for(server, "(-T 1)")  # the probe's idle period ends the first worker
        _wait_for(server, "exited with 0")
        [worker] = worker_pids(server)
        sock, reader, reply = login(server.port)
        assert reply.startswith(b"+OK")
        for _ in range(6):  # 3 s with a session open: more than 2x -T
            time.sleep(0.5)
            assert command(sock, reader, b"NOOP").startswith(b"+OK")
        assert worker_pids(server) == [worker]
        assert command(sock, reader, b"QUIT").startswith(b"+OK")
        sock.close()
    finally:
        assert server.stop() == 0


def test_sigterm_ends_a_retiring_worker_too(lab: Lab) -> None:
    server = start_server(lab, {"pop3": "-U 2"})
    try:
        alice, alice_reader, reply = login(server.port, "alice", "wonderland")
        assert reply.startswith(b"+OK")
        _wait_for(server, "retires; starting its successor")
        before = len(lab.messages("alice"))
        assert command(alice, alice_reader, b"DELE 1").startswith(b"+OK")
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 10
        assert alice_reader.readline() == b""  # the idle session was closed
        alice.close()
        assert len(lab.messages("alice")) == before  # no QUIT, no deletion
    finally:
        if server.process.poll() is None:
            server.stop()
