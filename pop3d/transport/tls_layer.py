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

Cost per call matters here (every command and answer of a TLS session passes twice):
pyOpenSSL says "nothing more" by raising ``WantReadError``, so the layer asks the memory
BIOs how much they hold (``BIO_get_mem_data``, through pyOpenSSL's binding as
``transport/tls.py`` does for two other calls) and reads exactly that: one call and no
exception per direction, where draining until the exception took two or three.
"""

from __future__ import annotations

import contextlib
from typing import Any

from OpenSSL import SSL

# pyOpenSSL's cffi binding: how many octets a memory BIO holds has no public method
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from pop3d.transport.layer import LayerError
from pop3d.transport.tls import openssl_reason

# One TLS record's plaintext is at most 16 KiB; read a few at a time.
_READ_SIZE = 64 * 1024


def _held(bio: Any) -> int:
    """Octets waiting in a memory BIO."""
    return int(_lib.BIO_get_mem_data(bio, _ffi.NULL))


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
        connection = self.connection
        if data:
            connection.bio_write(data)
        incoming = connection._into_ssl
        chunks = []
        while not self._peer_closed:
            try:
                chunk = connection.recv(_READ_SIZE)
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
            # Every record read and nothing decrypted left over: a further recv could
            # only raise WantReadError. (A partial record left in the BIO goes round once
            # more and ends there.)
            if not _held(incoming) and not connection.pending():
                break
        if not chunks:
            return b""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def wrap(self, data: bytes) -> bytes:
        view = memoryview(data)
        while view:
            try:
                written = self.connection.send(view)
            except SSL.Error as exc:
                raise LayerError(f"TLS: {openssl_reason(exc)}") from None
            view = view[written:]
        return self.outgoing()

    def outgoing(self) -> bytes:
        """Everything OpenSSL has written to the outgoing BIO (b"" when nothing)."""
        waiting = _held(self.connection._from_ssl)
        return self.connection.bio_read(waiting) if waiting else b""

    def close(self) -> bytes:
        # Queues our close_notify; we do not wait for the peer's.
        with contextlib.suppress(SSL.Error):
            self.connection.shutdown()
        return self.outgoing()
