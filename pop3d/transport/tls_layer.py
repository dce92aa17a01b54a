"""TLS as a security layer: OpenSSL through ``ssl.MemoryBIO``, no socket involved.

Why not asyncio's ``loop.start_tls``: its ``SSLProtocol`` keeps a 256 KiB read buffer for
the life of every connection (272 KiB per idle TLS connection against 6 KiB plain), and a
handshake that fails leaves those objects in reference cycles until the cycle collector
runs; 1,500 half ClientHellos grew a worker by 350 MB that was never given back. Here a
connection holds an ``SSLObject`` and two memory BIOs, OpenSSL releases its record buffers
while idle (CPython sets ``SSL_MODE_RELEASE_BUFFERS``), and a failed handshake is freed the
moment the connection's objects are dropped. The same object works over any byte stream,
so ``pop3d -X -s`` works on pipes too.
"""

from __future__ import annotations

import contextlib
import ssl

from pop3d.transport.layer import LayerError

# One TLS record's plaintext is at most 16 KiB; read a few at a time.
_READ_SIZE = 64 * 1024


class TLSLayer:
    name = "TLS"

    __slots__ = ("_incoming", "_outgoing", "_peer_closed", "handshake_done", "ssl_object")

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.handshake_done = False
        self._peer_closed = False

    def __repr__(self) -> str:
        return f"<TLSLayer done={self.handshake_done}>"

    def handshake(self, data: bytes) -> bool:
        """Feed handshake bytes; True once the handshake is complete. Raises ``ssl.SSLError``
        on a failed handshake. Replies wait in :meth:`outgoing`."""
        if data:
            self._incoming.write(data)
        try:
            self.ssl_object.do_handshake()
        except ssl.SSLWantReadError:
            return False
        self.handshake_done = True
        return True

    @property
    def ssf(self) -> int:
        cipher = self.ssl_object.cipher()
        return cipher[2] if cipher else 0

    @property
    def peer_closed(self) -> bool:
        return self._peer_closed

    def unwrap(self, data: bytes) -> bytes:
        if data:
            self._incoming.write(data)
        chunks = []
        while not self._peer_closed:
            try:
                chunk = self.ssl_object.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: an orderly end of input
                self._peer_closed = True
                break
            except ssl.SSLError as exc:
                raise LayerError(f"TLS: {exc.reason or exc}") from None
            if not chunk:
                self._peer_closed = True
                break
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def wrap(self, data: bytes) -> bytes:
        view = memoryview(data)
        while view:
            written = self.ssl_object.write(view)
            view = view[written:]
        return self._outgoing.read()

    def outgoing(self) -> bytes:
        return self._outgoing.read() if self._outgoing.pending else b""

    def close(self) -> bytes:
        # unwrap() queues our close_notify, then fails waiting for the peer's: no matter.
        with contextlib.suppress(ssl.SSLError):
            self.ssl_object.unwrap()
        return self.outgoing()
