"""How a peer is written (transport/peer.py): an IPv4 client that arrives as an
IPv4-mapped IPv6 address (a dual-stack listener, a proxy's TCP6) is written as the IPv4
address, so that it is one host for the audit trail (fail2ban), per-host limits and login
records whichever way it came."""

from __future__ import annotations

import asyncio
import socket
import struct

from pop3d.server.channel import Channel
from pop3d.transport import proxy
from pop3d.transport.peer import peer_text


def test_how_addresses_are_written() -> None:
    assert peer_text("192.0.2.7", 110) == "192.0.2.7:110"
    assert peer_text("2001:db8::1", 110) == "[2001:db8::1]:110"
    assert peer_text("::ffff:192.0.2.7", 5) == "192.0.2.7:5"  # as the kernel writes it
    assert peer_text("::ffff:c000:207", 5) == "192.0.2.7:5"  # as Python 3.11's str() does
    assert peer_text("::FFFF:C000:207", 5) == "192.0.2.7:5"
    assert peer_text("::1", 5) == "[::1]:5"
    assert peer_text("::ffff:0:c000:207", 5) == "[::ffff:0:c000:207]:5"  # not a mapped one


def test_a_proxy_s_tcp6_header_for_an_ipv4_client() -> None:
    v1 = proxy.parse(b"PROXY TCP6 ::ffff:203.0.113.9 ::1 4711 110\r\n")
    assert v1.peer() == "203.0.113.9:4711"
    mapped = b"\0" * 10 + b"\xff\xff" + socket.inet_aton("203.0.113.9")
    body = mapped + socket.inet_pton(socket.AF_INET6, "::1") + struct.pack("!HH", 4711, 110)
    v2 = proxy.V2_SIGNATURE + bytes([0x21, 0x21]) + struct.pack("!H", len(body)) + body
    assert proxy.parse(v2).peer() == "203.0.113.9:4711"


def test_an_ipv4_client_of_a_dual_stack_socket() -> None:
    """A real IPv6 socket taking IPv4 connections (bound to the IPv4-mapped loopback
    address, so nothing but loopback listens): the channel names the IPv4 client."""

    async def scenario() -> str:
        listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind(("::ffff:127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        connected: asyncio.Future[Channel] = asyncio.get_running_loop().create_future()
        server = await asyncio.get_running_loop().create_server(
            lambda: Channel(connected.set_result), sock=listener
        )
        client = socket.create_connection(("127.0.0.1", port))
        try:
            channel = await asyncio.wait_for(connected, 10)
            assert client.getsockname()[1] == int(channel.peer.rpartition(":")[2])
            return channel.peer.rpartition(":")[0]
        finally:
            client.close()
            server.close()

    assert asyncio.run(scenario()) == "127.0.0.1"
