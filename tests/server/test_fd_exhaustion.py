"""A worker at its file-descriptor limit (found probing). Without -H it ran out of
descriptors, and asyncio's accept loop logged "out of system resource" with a traceback
thousands of times a second (a CPython 3.11 bug: it does not stop after EMFILE), a core
spinning and the log growing by megabytes a second; with -H the accept loop ended with
the error and the worker never accepted again. Now a worker refuses connections past
what its limit permits (every session sending a message at once), counts -H connections
still sending their header, and logs its refusals once a second at most, counted."""

from __future__ import annotations

import select
import socket
import time

import pytest

from tests.support.lab import Lab, Server, start_server

# The master raises its soft limit to the hard one; 200 then permits (200 - 64) // 3 =
# 45 logged-in sessions a worker (server/fdlimit.py).
LIMITED = ("prlimit", "--nofile=200:200", "--")
FLOOD = 250  # more than 200 descriptors' worth


def _flood(port: int) -> list[socket.socket]:
    socks = []
    for _ in range(FLOOD):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(sock)
    return socks


def _greeting(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    try:
        return sock.recv(200)
    except (TimeoutError, ConnectionResetError):
        return b""


def _proxied_greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"PROXY TCP4 192.0.2.10 127.0.0.1 4711 110\r\n")
        return _greeting(sock)


@pytest.fixture
def limited(lab: Lab) -> Server:
    server = start_server(lab, {"pop3": "", "pop3h": "-H"}, wrapper=LIMITED)
    yield server
    server.stop()


def _answers(socks: list[socket.socket], seconds: float = 20) -> list[bytes]:
    """What each socket got first (b"" for a close, a reset or nothing in time), waiting
    for all of them at once."""
    answers: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + seconds
    waiting = list(socks)
    while waiting and time.monotonic() < deadline:
        ready, _, _ = select.select(waiting, [], [], 0.5)
        for sock in ready:
            try:
                answers[sock] = sock.recv(200)
            except OSError:
                answers[sock] = b""
            waiting.remove(sock)
    return [answers.get(sock, b"") for sock in socks]


def test_a_worker_refuses_what_its_descriptors_cannot_hold(limited: Server) -> None:
    socks = _flood(limited.port)
    try:
        answers = _answers(socks)
    finally:
        for sock in socks:
            sock.close()
    served = sum(answer.startswith(b"+OK") for answer in answers)
    refused = sum(answer.startswith(b"-ERR [SYS/TEMP] Too many connections") for answer in answers)
    assert served == 45 and refused == FLOOD - 45, (served, refused)
    time.sleep(0.5)
    log = limited.log_text()
    assert "out of system resource" not in log and "Too many open files" not in log
    refusals = [line for line in log.splitlines() if " refused: " in line]
    assert 1 <= len(refusals) <= 5, refusals  # counted, not one line each
    assert "all this worker's file-descriptor limit permits" in refusals[0]
    # and the worker serves again once they are gone
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        assert _greeting(sock).startswith(b"+OK")


def test_with_h_a_worker_accepts_again_after_a_flood(limited: Server) -> None:
    """Connections that never send their PROXY header hold a descriptor each for ten
    seconds; a flood of them took the worker's last descriptor, and its accept loop died."""
    port = limited.ports["pop3h"]
    socks = _flood(port)
    for sock in socks:
        sock.close()
    deadline = time.monotonic() + 15  # refused while the flood's closes are still queued
    while not (answer := _proxied_greeting(port)).startswith(b"+OK"):
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)
    assert "Too many open files" not in limited.log_text()
