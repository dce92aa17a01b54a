"""A worker process: one asyncio loop serving every connection accepted on its listening
sockets (thousands per process, where Cyrus forks one process per connection).

Shutdown (SIGTERM/SIGINT): stop accepting, close sessions that are waiting for a command
(nothing is lost: a session without QUIT deletes nothing), let sessions in the middle of a
command finish it, and give up on stragglers after ``grace`` seconds. SIGHUP re-reads the
TLS certificate and key.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from pop3d.server.channel import Channel, FdChannel
from pop3d.server.connection import Connection
from pop3d.server.context import ServiceContext

log = logging.getLogger("pop3d")

SHUTDOWN_GRACE = 8.0


class Worker:
    def __init__(self, context: ServiceContext, maxchild: int = -1) -> None:
        self.context = context
        self.maxchild = maxchild
        self.connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self.served = 0

    def _accepted(self, channel: Channel) -> None:
        if 0 <= self.maxchild <= len(self.connections) or self._stopping.is_set():
            channel.abort()
            log.warning(
                "connection from %s refused: %d sessions (maxchild)",
                channel.peer,
                len(self.connections),
            )
            return
        connection = Connection(channel, self.context)
        self.connections.add(connection)
        self.served += 1
        task = asyncio.get_running_loop().create_task(connection.run())
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(t, connection))

    def _finished(self, task: asyncio.Task[None], connection: Connection) -> None:
        self._tasks.discard(task)
        self.connections.discard(connection)

    def stop(self) -> None:
        self._stopping.set()

    async def serve(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.context.reload_tls)
        servers = [
            await loop.create_server(lambda: Channel(self._accepted), sock=sock, backlog=1024)
            for sock in sockets
        ]
        await self._stopping.wait()
        for server in servers:
            server.close()
        await self._drain()

    async def _drain(self) -> None:
        for connection in list(self.connections):
            if connection.idle:
                connection.end_reason = "server shutting down"
                connection.channel.close()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)


async def serve_stdio(context: ServiceContext) -> None:
    """One session on stdin/stdout (``-X``; inetd, xinetd, systemd ``Accept=yes``). If
    stdin is a socket the full TCP channel is used, TLS included."""
    loop = asyncio.get_running_loop()
    duplicate = os.dup(0)
    try:
        sock = socket.socket(fileno=duplicate)
    except OSError:  # not a socket: a pipe, a file or a terminal
        os.close(duplicate)
        connection = Connection(FdChannel(0, 1), context)
        await connection.run()
        return
    done: asyncio.Future[Connection] = loop.create_future()

    def accepted(channel: Channel) -> None:
        done.set_result(Connection(channel, context))

    await loop.connect_accepted_socket(lambda: Channel(accepted), sock)
    connection = await done
    await connection.run()
