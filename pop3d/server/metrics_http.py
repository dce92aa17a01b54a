"""The master's ``/metrics`` endpoint: ``prometheus_client``'s WSGI app, served as its
``start_http_server`` serves it (a thread per connection, one request each, no request
logged), except that a connection has :data:`SCRAPE_TIMEOUT` seconds in all, from accept
to the last octet of the answer, and is then closed.

``start_http_server`` sets no timeout: 100 loopback connections that each sent half a
request held 100 of the master's threads for as long as they liked (found probing). The
time is counted for the whole connection, not for each read, so a client sending an octet
now and then is closed too. A connection closed for its time, or by its client, is not
logged: a client must not be able to write the master's log (the standard server prints
a traceback for each).

Imported by the master only when ``prometheus_enabled`` is on: workers never serve it.
"""

from __future__ import annotations

import io
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

# Prometheus's own default scrape_timeout: a scrape that takes longer is given up anyway.
SCRAPE_TIMEOUT = 10.0


class _WithinDeadline(io.RawIOBase):
    """The connection's socket, each read and write given what is left of its time."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def _time_left(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"connection open longer than {SCRAPE_TIMEOUT:g} s")
        self._sock.settimeout(left)

    def readinto(self, buffer: Any) -> int:
        self._time_left()
        return self._sock.recv_into(buffer)

    def write(self, data: Any) -> int:
        self._time_left()
        self._sock.sendall(data)  # the timeout bounds the whole of sendall, not each send
        return memoryview(data).nbytes


class _Handler(WSGIRequestHandler):
    def setup(self) -> None:
        super().setup()
        raw = _WithinDeadline(self.connection, time.monotonic() + SCRAPE_TIMEOUT)
        self.rfile = io.BufferedReader(raw)
        self.wfile = io.BufferedWriter(raw)  # wsgiref flushes after each of its writes

    def log_message(self, format: str, *args: Any) -> None:
        pass  # as prometheus_client's handler: a scrape is not worth a line


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    # Not joined at shutdown (as prometheus_client's server): a scrape in progress must not
    # hold up the master's exit, and no list of finished threads grows.
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # timed out or reset by the client: the client's doing, not ours
        super().handle_error(request, client_address)


def serve(host: str, port: int, app: Callable[..., Any]) -> WSGIServer:
    """Serve ``app`` on ``host``:``port`` from a daemon thread (``serve_forever``; stop it
    with ``shutdown`` and ``server_close``)."""

    class Server(_Server):
        pass  # a class of its own: the address family is a class attribute

    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    Server.address_family = family
    server = make_server(str(address[0]), port, app, Server, handler_class=_Handler)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server
