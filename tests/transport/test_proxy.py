"""PROXY protocol v1/v2 (pop3d -H): the parser, and a real server behind a "proxy"."""

from __future__ import annotations

import socket
import ssl
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pop3d.transport import proxy
from tests.support.lab import Lab, start_server

V1 = b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 110\r\n"


def v2(source: str = "192.0.2.10", port: int = 56324, command: int = 0x21) -> bytes:
    body = (
        socket.inet_aton(source) + socket.inet_aton("198.51.100.1") + struct.pack("!HH", port, 110)
    )
    return proxy.V2_SIGNATURE + bytes([command, 0x11]) + struct.pack("!H", len(body)) + body


def test_v1() -> None:
    assert proxy.header_length(V1 + b"USER x\r\n") == len(V1)
    header = proxy.parse(V1)
    assert header.source == ("192.0.2.10", 56324)
    assert header.peer() == "192.0.2.10:56324"
    six = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"
    assert proxy.parse(six).peer() == "[2001:db8::1]:1"
    assert proxy.parse(b"PROXY UNKNOWN\r\n").source is None


def test_v2() -> None:
    data = v2()
    assert proxy.header_length(data[:10]) == proxy.NEED_MORE
    assert proxy.header_length(data + b"\x16\x03\x01") == len(data)
    assert proxy.parse(data).source == ("192.0.2.10", 56324)
    local = v2(command=0x20)
    assert proxy.parse(local).source is None
    # a client of the proxy on a unix socket (AF_UNIX, stream or datagram): 216 octets of
    # paths, valid, and no address of ours to take (found probing: it was refused)
    for family in (0x31, 0x32):
        body = b"/run/client.sock".ljust(108, b"\0") + b"/run/pop3.sock".ljust(108, b"\0")
        unix = proxy.V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body
        assert proxy.header_length(unix + b"+OK") == len(unix)
        assert proxy.parse(unix).source is None


@pytest.mark.parametrize(
    "bad",
    [
        b"USER alice\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
        b"PROXY TCP4 ::1 ::2 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY SCTP 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY " + b"x" * 200,
        # An IPv6 scope is free text to ip_address(): a line feed in it forged log lines
        b"PROXY TCP6 fe80::1%a\nbadlogin:_x_[203.0.113.9 ::1 5555 110\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 5555 110\r\n",
        b"PROXY TCP6 ::1 fe80::1%25 5555 110\r\n",
    ],
)
def test_malformed_headers(bad: bytes) -> None:
    with pytest.raises(proxy.ProxyHeaderError):
        length = proxy.header_length(bad)
        proxy.parse(bad[:length] if length > 0 else bad)


@given(st.binary(max_size=120))
def test_junk_never_escapes_as_another_exception(data: bytes) -> None:
    try:
        length = proxy.header_length(data)
        if length != proxy.NEED_MORE and len(data) >= length:
            proxy.parse(data[:length])
    except proxy.ProxyHeaderError:
        pass


def test_server_behind_a_proxy(tls_lab: Lab) -> None:
    assert tls_lab.tls is not None
    server = start_server(tls_lab, {"pop3": "-H", "pop3s": "-H -s"})
    try:
        with socket.create_connection(("127.0.0.1", server.ports["pop3"]), timeout=10) as sock:
            sock.sendall(V1 + b"USER bob\r\nPASS builder\r\nSTAT\r\nQUIT\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        assert b"+OK 3 6000\r\n" in data
        # v2 header and the TLS ClientHello in one write: not one byte may be lost
        context = ssl.create_default_context(cafile=str(tls_lab.tls.ca))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        with socket.create_connection(("127.0.0.1", server.ports["pop3s"]), timeout=10) as sock:
            sock.sendall(v2("203.0.113.7", 4242) + outgoing.read())
            while True:
                incoming.write(sock.recv(65536))
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    sock.sendall(outgoing.read())
            sock.sendall(outgoing.read())
            greeting = b""
            while not greeting.endswith(b"\r\n"):
                try:
                    greeting += tls.read(4096)
                except ssl.SSLWantReadError:
                    incoming.write(sock.recv(65536))
            assert greeting.startswith(b"+OK")
        # no header at all: closed without a greeting
        with socket.create_connection(("127.0.0.1", server.ports["pop3"]), timeout=15) as sock:
            sock.sendall(b"USER bob\r\n")
            try:
                assert sock.recv(4096) == b""  # no greeting: closed
            except ConnectionResetError:
                pass  # closed with our bytes unread: the kernel answers with RST
    finally:
        server.stop()
    log = server.log_text()
    assert "peer=192.0.2.10:56324" in log
    assert "bad PROXY protocol header" in log
