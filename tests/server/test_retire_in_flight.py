"""A worker that stops accepting (a reload's RETIRE_SIGNAL, -U, -T, its master gone) still
serves every connection asyncio had accepted: found probing, a reload under load reset a
few connections in ten thousand, greeting unsent, as the worker's loop ended before they
reached it."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from pop3d.config.imapd import load
from pop3d.server.context import RuntimeOptions, ServiceContext
from pop3d.server.worker import Worker
from tests.support.lab import Lab

CLIENTS = 8


class RetiringListener(socket.socket):
    """The worker's listening socket, retiring the worker as asyncio accepts from it: the
    retirement (a reload's signal, the master gone) lands in the same turn of the loop as
    a batch of accepts, whose connections reach the worker a turn or two later."""

    worker: Worker | None = None

    def accept(self) -> tuple[socket.socket, object]:
        if self.worker is not None:
            self.worker.retire("the test's reload")
        return super().accept()


def test_connections_accepted_as_the_worker_retires_are_served(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab").create()
    context = ServiceContext(load(lab.config), RuntimeOptions())
    plain = socket.create_server(("127.0.0.1", 0))
    listener = RetiringListener(plain.family, plain.type, fileno=plain.detach())
    port = listener.getsockname()[1]
    # Queued in the listener's backlog before the worker serves: one accept wake-up.
    clients = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(CLIENTS)]

    async def main() -> None:
        worker = Worker(context)
        listener.worker = worker
        serving = asyncio.create_task(worker.serve([listener], signals=False))
        loop = asyncio.get_running_loop()
        greetings = await asyncio.gather(
            *(loop.run_in_executor(None, _greeting_then_quit, client) for client in clients)
        )
        assert all(g.startswith(b"+OK") for g in greetings), greetings
        await asyncio.wait_for(serving, 20)
        assert worker.served == CLIENTS

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        for client in clients:
            client.close()
        listener.close()
        context.close()


def _greeting_then_quit(client: socket.socket) -> bytes:
    reader = client.makefile("rb")
    try:
        greeting = reader.readline()
        if greeting:
            client.sendall(b"QUIT\r\n")
            reader.readline()
        return greeting
    except OSError as exc:
        return repr(exc).encode()
    finally:
        reader.close()
