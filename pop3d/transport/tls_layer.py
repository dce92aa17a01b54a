"""TLS as a security layer: OpenSSL (through pyOpenSSL) over memory BIOs, no socket involved.

Why not asyncio's ``loop.start_tls``: its ``SSLProtocol`` keeps a 256 KiB read buffer for
the life of every connection (272 KiB per idle TLS connection against 6 KiB plain), and a
handshake that fails leaves those objects in reference cycles until the cycle collector
runs; 1,500 half ClientHellos grew a worker by 350 MB that was never given back. Here a
connection holds one ``OpenSSL.SSL.Connection`` with its two memory BIOs, OpenSSL releases
its record buffers while idle (``SSL_MODE_RELEASE_BUFFERS``, set on the context), and a
failed handshake is freed the moment the connection's objects are dropped. The same object
works over any byte stream, so ``pop3d -X -s`` works on pipes too.

Why pyOpenSSL rather than Python's ``ssl.SSLObject``: only pyOpenSSL exports keying
material (RFC 5705), which the ``tls-exporter`` channel binding needs (RFC 9266), and it
can set the session lifetime (``tls_session_timeout``).
"""

from __future__ import annotations

import contextlib

from OpenSSL import SSL

from pop3d.transport.layer import LayerError
from pop3d.transport.tls import openssl_reason

# One TLS record's plaintext is at most 16 KiB; read a few at a time.
_READ_SIZE = 64 * 1024
# What a record adds to its plaintext, with room to spare: header 5, type 1, AEAD tag 16
# (TLS 1.3); header 5, explicit nonce 8, tag 16 (TLS 1.2 GCM).
_RECORD = 16 * 1024
_RECORD_OVERHEAD = 64


class TLSHandshakeError(Exception):
    """The handshake failed (the peer's alert, or what we refused); the message says why."""


class TLSLayer:
    name = "TLS"

    __slots__ = ("_peer_closed", "connection", "handshake_done")

    def __init__(self, context: SSL.Context) -> None:
        self.connection = SSL.Connection(context, None)  # None: memory BIOs
        self.connection.set_accept_state()
        self.handshake_done = False
        self._peer_closed = False

    def __repr__(self) -> str:
        return f"<TLSLayer done={self.handshake_done}>"

    def handshake(self, data: bytes) -> bool:
        """Feed handshake bytes; True once the handshake is complete. Raises
        :class:`TLSHandshakeError` on a failed handshake. Replies wait in :meth:`outgoing`."""
        if data:
            self.connection.bio_write(data)
        try:
            self.connection.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            raise TLSHandshakeError(openssl_reason(exc)) from None
        self.handshake_done = True
        return True

    @property
    def ssf(self) -> int:
        return self.connection.get_cipher_bits() or 0

    @property
    def peer_closed(self) -> bool:
        return self._peer_closed

    def unwrap(self, data: bytes) -> bytes:
        if data:
            self.connection.bio_write(data)
        chunks = []
        while not self._peer_closed:
            try:
                chunk = self.connection.recv(_READ_SIZE)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:  # close_notify: an orderly end of input
                self._peer_closed = True
                break
            except SSL.Error as exc:
                raise LayerError(f"TLS: {openssl_reason(exc)}") from None
            if not chunk:
                self._peer_closed = True
                break
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def wrap(self, data: bytes) -> bytes:
        view = memoryview(data)
        while view:
            try:
                written = self.connection.send(view)
            except SSL.Error as exc:
                raise LayerError(f"TLS: {openssl_reason(exc)}") from None
            view = view[written:]
        records = -(-len(data) // _RECORD) or 1
        return self._drain(len(data) + records * _RECORD_OVERHEAD)

    def outgoing(self) -> bytes:
        return self._drain(_READ_SIZE)

    def _drain(self, size: int) -> bytes:
        """Everything OpenSSL has written to the outgoing BIO (b"" when nothing)."""
        chunks = []
        while True:
            try:
                chunks.append(self.connection.bio_read(size))
            except SSL.WantReadError:
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close(self) -> bytes:
        # Queues our close_notify; we do not wait for the peer's.
        with contextlib.suppress(SSL.Error):
            self.connection.shutdown()
        return self.outgoing()
