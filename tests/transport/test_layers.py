"""The security-layer stack's contract, with TLS as the layer: any chunking of the input
gives the same plaintext, several records in one read all come out, a record that fails
its checks raises LayerError (and over a real connection ends it with a log line, nothing
in it run), and bytes that arrived before a layer was pushed go through it."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from pathlib import Path

import pytest

from pop3d.server.channel import FdChannel
from pop3d.transport import tls
from pop3d.transport.layer import LayerError, LayerStack
from pop3d.transport.tls_layer import TLSLayer
from tests.support.lab import Lab, Server, make_certificates, start_server
from tests.transport.test_tls import client_context, config_for


class Client:
    """A real TLS client (an SSLObject over memory BIOs) talking to a server layer."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.ssl = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def handshake_with(self, server: TLSLayer) -> None:
        for _ in range(10):
            try:
                self.ssl.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            server.handshake(self.outgoing.read())
            self.incoming.write(server.outgoing())
            if done and server.handshake_done:
                return
        raise AssertionError("no handshake")

    def send(self, data: bytes) -> bytes:
        self.ssl.write(data)
        return self.outgoing.read()

    def receive(self, wire: bytes) -> bytes:
        self.incoming.write(wire)
        chunks = []
        while True:
            try:
                chunks.append(self.ssl.read(65536))
            except ssl.SSLWantReadError:
                return b"".join(chunks)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[LayerStack, TLSLayer, Client]:
    certs = make_certificates(tmp_path)
    server_tls = tls.server_tls(config_for(certs), None)
    layer = TLSLayer(server_tls.context)
    client = Client(client_context(certs))
    client.handshake_with(layer)
    stack = LayerStack()
    stack.push(layer)
    return stack, layer, client


def test_a_record_split_at_every_byte(pair: tuple[LayerStack, TLSLayer, Client]) -> None:
    stack, _layer, client = pair
    wire = client.send(b"STAT\r\n")
    got = b""
    for i in range(len(wire)):
        plain, _reply = stack.receive(wire[i : i + 1])
        if i < len(wire) - 1:
            assert plain == b"", i  # nothing before the record is whole
        got += plain
    assert got == b"STAT\r\n"


def test_several_records_in_one_read(pair: tuple[LayerStack, TLSLayer, Client]) -> None:
    stack, _layer, client = pair
    wire = b"".join(client.send(f"NOOP {n}\r\n".encode()) for n in range(20))
    plain, _reply = stack.receive(wire)
    assert plain == b"".join(f"NOOP {n}\r\n".encode() for n in range(20))


def test_wrap_round_trips_large_data(pair: tuple[LayerStack, TLSLayer, Client]) -> None:
    stack, _layer, client = pair
    data = bytes(range(256)) * 4096  # 1 MiB: many records
    assert client.receive(stack.wrap(data)) == data


@pytest.mark.parametrize("position", [0, 3, 5, 20, -1])
def test_a_tampered_record_raises_layer_error(
    pair: tuple[LayerStack, TLSLayer, Client], position: int
) -> None:
    stack, _layer, client = pair
    wire = bytearray(client.send(b"RETR 1\r\n"))
    wire[position] ^= 0x41
    with pytest.raises(LayerError):
        stack.receive(bytes(wire))


def test_an_oversize_record_raises_layer_error(pair: tuple[LayerStack, TLSLayer, Client]) -> None:
    stack, _layer, _client = pair
    # An application-data record header announcing 2^14 + 2048 + 1 octets: over TLS's limit.
    header = bytes([23, 3, 3]) + (16384 + 2048 + 1).to_bytes(2, "big")
    with pytest.raises(LayerError):
        stack.receive(header + b"\0" * 32)


def test_an_answer_after_a_refused_record_raises_layer_error(
    pair: tuple[LayerStack, TLSLayer, Client],
) -> None:
    """After a record failed its checks the connection is dead: wrapping an answer for it
    (the driver's error reply) is refused as a LayerError with a reason, never pyOpenSSL's
    own exception escaping the layer."""
    stack, _layer, _client = pair
    header = bytes([23, 3, 3]) + (16384 + 2048 + 1).to_bytes(2, "big")
    with pytest.raises(LayerError):
        stack.receive(header + b"\0" * 32)
    with pytest.raises(LayerError, match=r"^TLS: \w"):
        stack.wrap(b"-ERR [SYS/TEMP] Internal server error\r\n")


def test_close_notify_ends_input(pair: tuple[LayerStack, TLSLayer, Client]) -> None:
    stack, _layer, client = pair
    with pytest.raises(ssl.SSLWantReadError):
        client.ssl.unwrap()
    plain, _reply = stack.receive(client.outgoing.read())
    assert plain == b""
    assert stack.peer_closed


def test_bytes_buffered_before_the_push_go_through_the_layer(tmp_path: Path) -> None:
    """The channel keeps raw bytes raw until read(): what arrived before push_layer is
    unwrapped by the new layer; plaintext already handed up (trailing data) is given to it."""
    certs = make_certificates(tmp_path)
    server_tls = tls.server_tls(config_for(certs), None)
    layer = TLSLayer(server_tls.context)
    client = Client(client_context(certs))
    client.handshake_with(layer)
    first = client.send(b"CAPA\r\n")
    second = client.send(b"QUIT\r\n")

    async def scenario() -> bytes:
        read_fd, write_fd = os.pipe()
        out_read, out_write = os.pipe()
        channel = FdChannel(read_fd, out_write)
        os.write(write_fd, second)
        channel.push_layer(layer, trailing=first)  # first: handed back by the session
        data = await channel.read()
        while not data.endswith(b"QUIT\r\n"):
            data += await channel.read()
        channel.close()
        for fd in (write_fd, out_read, read_fd, out_write):
            os.close(fd)
        return data

    assert asyncio.run(scenario()) == b"CAPA\r\nQUIT\r\n"


class _Pop3sClient:
    """A pop3s client over a MemoryBIO, so a record can be tampered with before it goes."""

    def __init__(self, port: int, ca: Path) -> None:
        self.raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        context = ssl.create_default_context(cafile=str(ca))
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.raw.sendall(self.outgoing.read())
                self.incoming.write(self.raw.recv(65536))
        self.raw.sendall(self.outgoing.read())

    def answer(self, end: bytes = b"\r\n") -> bytes:
        text = b""
        while not text.endswith(end):
            try:
                text += self.tls.read(4096)
            except ssl.SSLWantReadError:
                self.incoming.write(self.raw.recv(65536))
        return text

    def send_tampered(self, line: bytes) -> bytes:
        """``line`` in a record that fails its integrity check; what came back until EOF."""
        self.tls.write(line)
        record = bytearray(self.outgoing.read())
        record[-1] ^= 1
        self.raw.sendall(bytes(record))
        self.raw.settimeout(5)
        rest = b""
        while chunk := self.raw.recv(65536):
            rest += chunk
        self.raw.close()
        return rest


def _ended_by_the_layer(server: Server, rest: bytes) -> None:
    deadline = time.monotonic() + 5
    while "security layer" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log_text()
    assert "ended: security layer: TLS:" in log, log
    assert "Traceback" not in log
    assert b"User name accepted" not in rest  # nothing in the record was run


def test_a_bad_record_ends_a_real_session_with_a_log_line(tmp_path: Path) -> None:
    lab = Lab(tmp_path).create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, {"pop3s": "-s"})
    try:
        client = _Pop3sClient(server.ports["pop3s"], lab.tls.ca)
        _ended_by_the_layer(server, client.send_tampered(b"USER alice\r\n"))
    finally:
        assert server.stop() == 0


def test_a_bad_record_while_the_session_waits_ends_it_with_a_log_line(tmp_path: Path) -> None:
    """The same, once a command has been answered: the session is then waiting for its
    next one and the record reaches it through the channel's inline path
    (server/channel.py), which must hand the layer's refusal to the session's task."""
    lab = Lab(tmp_path).create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, {"pop3s": "-s"})
    try:
        client = _Pop3sClient(server.ports["pop3s"], lab.tls.ca)
        assert client.answer().startswith(b"+OK")  # the greeting
        client.tls.write(b"CAPA\r\n")
        client.raw.sendall(client.outgoing.read())
        # answered: the session waits for the next command
        assert client.answer(b"\r\n.\r\n").startswith(b"+OK")
        _ended_by_the_layer(server, client.send_tampered(b"USER alice\r\n"))
    finally:
        assert server.stop() == 0
