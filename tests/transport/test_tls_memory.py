"""Memory held by TLS connections: aborted handshakes must not grow a worker (a denial of
service found by the hostile tester: 1,500 half ClientHellos took a worker from 42 MB to
396 MB), and an idle TLS connection must stay cheap."""

from __future__ import annotations

import poplib
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.support.lab import Lab, start_server

pytestmark = pytest.mark.slow


def worker_pid(master_pid: int) -> int:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def half_client_hello() -> bytes:
    """The first half of a real ClientHello: the server has read enough to allocate its
    TLS state and must wait for the rest, which never comes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="x")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    return hello[: len(hello) // 2]


def login_works(port: int, ca: Path) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    box = poplib.POP3_SSL("localhost", port, context=context, timeout=10)
    box.user("alice")
    box.pass_("wonderland")
    assert box.stat()[0] == 7
    box.quit()


def abort_handshakes(port: int, count: int, batch: int) -> None:
    prefix = half_client_hello()
    deadline = time.monotonic() + 60
    sent = 0
    while sent < count and time.monotonic() < deadline:
        sockets = []
        for _ in range(min(batch, count - sent)):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(prefix)
            sockets.append(sock)
        # Let the worker read every partial hello before the connections go away.
        time.sleep(0.05)
        for sock in sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            sock.close()  # RST: the rudest way to abort
        sent += len(sockets)
    assert sent == count, f"only {sent} of {count} connections in the time allowed"


def test_aborted_handshakes_leave_the_worker_as_it_was(tmp_path: Path) -> None:
    lab = Lab(tmp_path).create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, {"pop3s": "-s"})
    port = server.ports["pop3s"]
    try:
        pid = worker_pid(server.process.pid)
        # Warm up: the first real session loads what every later one shares (modules,
        # the TLS context's session cache, Argon2's thread).
        for _ in range(3):
            login_works(port, lab.tls.ca)
        abort_handshakes(port, 200, 100)
        time.sleep(0.3)
        before = rss_kib(pid)
        for _ in range(10):
            abort_handshakes(port, 300, 100)
            login_works(port, lab.tls.ca)  # a normal client is served throughout
        time.sleep(0.5)
        after = rss_kib(pid)
        print(f"aborted handshakes: worker {before} -> {after} KiB")
        assert after - before < 8 * 1024, f"worker grew from {before} to {after} KiB"
        assert "Traceback" not in server.log_text()
    finally:
        assert server.stop() == 0


def test_an_idle_tls_connection_costs_little(tmp_path: Path) -> None:
    """asyncio's own TLS held a 256 KiB read buffer per connection for its whole life."""
    lab = Lab(tmp_path).create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, {"pop3s": "-s"})
    port = server.ports["pop3s"]
    context = ssl.create_default_context(cafile=str(lab.tls.ca))
    idle: list[ssl.SSLSocket] = []
    try:
        pid = worker_pid(server.process.pid)
        login_works(port, lab.tls.ca)
        before = rss_kib(pid)
        for _ in range(200):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock = context.wrap_socket(raw, server_hostname="localhost")
            assert sock.recv(100).startswith(b"+OK")
            idle.append(sock)
        time.sleep(0.3)
        per_connection = (rss_kib(pid) - before) / len(idle)
        print(f"{per_connection:.1f} KiB per idle TLS connection")
        assert per_connection < 64, f"{per_connection:.1f} KiB per idle TLS connection"
    finally:
        for sock in idle:
            sock.close()
        assert server.stop() == 0
