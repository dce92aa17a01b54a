"""Commands served inline (server/connection.py ``_serve_inline``): while a session waits
for its next command, what arrives is given to it from the event loop's callback, and the
answers it knows by itself go out from there, without waking the session's task. Checked
on a real worker in this process (a real socket, real TLS), counting how often a session
starts a new wait: one per command without the inline path, one per hand-off with it."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from pop3d.config.imapd import load
from pop3d.protocol.session import Session
from pop3d.server import channel as channel_module
from pop3d.server.context import RuntimeOptions, ServiceContext
from pop3d.server.worker import Worker
from tests.support.lab import Lab

Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Waits:
    """How many times a server channel started waiting for input (Channel.readable made
    a future): the session's task suspended for its next command."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = channel_module.Channel.readable

        def counted(channel: channel_module.Channel) -> asyncio.Future[None] | None:
            waiter = real(channel)
            self.count += waiter is not None
            return waiter

        monkeypatch.setattr(channel_module.Channel, "readable", counted)


@asynccontextmanager
async def worker(lab: Lab) -> AsyncIterator[int]:
    """A worker serving the lab's config on a loopback port, in this event loop."""
    context = ServiceContext(load(lab.config), RuntimeOptions())
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    serving = Worker(context)
    task = asyncio.create_task(serving.serve([listener], signals=False))
    try:
        yield port
    finally:
        serving.stop()
        await asyncio.wait_for(task, 20)
        listener.close()
        context.close()


async def ask(client: Client, line: bytes) -> bytes:
    reader, writer = client
    writer.write(line + b"\r\n")
    return await asyncio.wait_for(reader.readline(), 10)


async def logged_in(port: int, tls: ssl.SSLContext | None = None) -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = (reader, writer)
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"+OK")
    if tls is not None:
        assert (await ask(client, b"STLS")).startswith(b"+OK")
        await writer.start_tls(tls, server_hostname="localhost")
    assert (await ask(client, b"USER alice")).startswith(b"+OK")
    assert (await ask(client, b"PASS wonderland")).startswith(b"+OK")
    return client


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "stls"])
def test_noop_and_stat_are_answered_without_waking_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secure: bool
) -> None:
    lab = Lab(tmp_path / "lab").create(with_tls=secure)
    tls = ssl.create_default_context(cafile=str(lab.tls.ca)) if lab.tls else None
    waits = Waits(monkeypatch)

    async def test() -> None:
        async with worker(lab) as port:
            client = await logged_in(port, tls)
            # the first STAT has the task measure the messages (MeasureMessages); from
            # then on the session knows the sizes and answers by itself
            assert (await ask(client, b"STAT")).startswith(b"+OK 7 ")
            before = waits.count
            for _ in range(10):  # each sent after the previous answer: ten arrivals
                assert await ask(client, b"NOOP") == b"+OK\r\n"
                assert (await ask(client, b"STAT")).startswith(b"+OK 7 ")
            # the wait that began after the first STAT is still the one it is in
            assert waits.count == before
            # a command the task carries out (RETR reads a file) wakes it, once
            reader, writer = client
            writer.write(b"RETR 1\r\n")
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"+OK")
            while (await asyncio.wait_for(reader.readline(), 10)) != b".\r\n":
                pass
            assert waits.count == before + 1
            writer.close()

    run(test)


def test_a_pipeline_mixing_inline_answers_and_requests_keeps_its_order(lab: Lab) -> None:
    """NOOP answered inline, RETR handed to the task with the rest of the pipeline still
    in the session, the rest answered in order after it; QUIT's UPDATE deletes what DELE
    marked."""

    async def test() -> None:
        async with worker(lab) as port:
            reader, writer = await logged_in(port)
            writer.write(b"NOOP\r\nRETR 2\r\nNOOP\r\nDELE 1\r\nLIST 1\r\nQUIT\r\n")
            answer = await asyncio.wait_for(reader.read(), 10)
            lines = answer.split(b"\r\n")
            assert lines[0] == b"+OK"
            assert lines[1].startswith(b"+OK Message follows")
            end = lines.index(b".")
            assert lines[end + 1] == b"+OK"
            assert lines[end + 2].startswith(b"+OK") and b"deleted" in lines[end + 2].lower()
            assert lines[end + 3].startswith(b"-ERR")  # message 1 is marked deleted
            assert lines[end + 4].startswith(b"+OK")
            writer.close()
        assert len(lab.messages("alice")) == 6

    run(test)


def test_a_client_that_does_not_read_is_held_by_flow_control(lab: Lab) -> None:
    """Inline answers go out only while the transport takes them without waiting: a
    client pipelining commands it never reads the answers of fills its own socket, not
    the server's memory (the session's task waits for the drain)."""

    async def test() -> None:
        async with worker(lab) as port:
            _, writer = await logged_in(port)
            batch = b"LIST\r\n" * 20_000
            for _ in range(300):  # at most 36 MB of commands, 250 MB of answers unread
                writer.write(batch)
                try:
                    await asyncio.wait_for(writer.drain(), 1.0)
                except TimeoutError:
                    break  # the server stopped reading: what is wanted
            else:
                pytest.fail("the server read 6,000,000 commands whose answers were not read")
            writer.transport.abort()

    run(test)


def test_a_failure_inside_the_inline_path_is_an_internal_error_not_a_hang(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug met while serving inline is reported by the task as one of its own: the
    client is told and the log says internal error (the callback must not swallow it)."""
    real = Session.receive_data

    def faulty(session: Session, data: bytes) -> None:
        if data.startswith(b"BOOM"):
            raise RuntimeError("injected fault")
        real(session, data)

    monkeypatch.setattr(Session, "receive_data", faulty)

    async def test() -> None:
        async with worker(lab) as port:
            client = await logged_in(port)
            assert await ask(client, b"BOOM") == (
                b"-ERR [SYS/TEMP] Internal server error, closing the connection\r\n"
            )
            assert await asyncio.wait_for(client[0].read(), 10) == b""
            client[1].close()

    run(test)
