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

Cost per call matters here (every command and answer of a TLS session passes twice), so
the record path after the handshake calls OpenSSL through pyOpenSSL's own cffi binding
(``SSL_read``, ``SSL_write``, ``BIO_read``, ``BIO_write``, as ``transport/tls.py`` does
for two other calls) rather than through ``Connection.recv``/``send``/``bio_*``: those
wrap each call in argument checks and an error dispatch, and say "nothing more" by raising
``WantReadError``; a session's records paid more for the wrappers than for the
cryptography (bench/RESULTS.md, section 25). Only success is handled here; any other
outcome goes to pyOpenSSL's own error dispatch, so errors read as they always did. The
handshake stays on ``do_handshake``: it runs our callbacks (ALPN), whose failures
pyOpenSSL reports there, and renegotiation, which would run them again later, is off
(``OP_NO_RENEGOTIATION``, transport/tls.py). The layer also asks the memory BIOs how much
they hold (``BIO_get_mem_data``) and reads exactly that: one call per direction.
"""

from __future__ import annotations

import contextlib
from typing import Any, NoReturn

from OpenSSL import SSL

# pyOpenSSL's cffi binding: how many octets a memory BIO holds has no public method
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from pop3d.transport.layer import LayerError
from pop3d.transport.tls import openssl_reason, verify_problem

# One TLS record's plaintext is at most 16 KiB; read a few at a time.
_READ_SIZE = 64 * 1024


# Buffers OpenSSL fills are not zeroed first (as pyOpenSSL's own reads do): only the
# octets it wrote are ever read back.
_new_buffer = _ffi.new_allocator(should_clear_after_alloc=False)


def _held(bio: Any) -> int:
    """Octets waiting in a memory BIO."""
    return int(_lib.BIO_get_mem_data(bio, _ffi.NULL))


class TLSHandshakeError(Exception):
    """The handshake failed (the peer's alert, or what we refused); the message says why."""


class TLSLayer:
    name = "TLS"

    __slots__ = ("_incoming", "_outgoing", "_peer_closed", "_ssl", "connection", "handshake_done")

    def __init__(self, context: SSL.Context) -> None:
        self.connection = SSL.Connection(context, None)  # None: memory BIOs
        self.connection.set_accept_state()
        self.handshake_done = False
        self._peer_closed = False
        # The OpenSSL objects the record path calls directly (pyOpenSSL owns and frees them).
        self._ssl = self.connection._ssl
        self._incoming = self.connection._into_ssl
        self._outgoing = self.connection._from_ssl

    def __repr__(self) -> str:
        return f"<TLSLayer done={self.handshake_done}>"

    def handshake(self, data: bytes) -> bool:
        """Feed handshake bytes; True once the handshake is complete. Raises
        :class:`TLSHandshakeError` on a failed handshake. Replies wait in :meth:`outgoing`."""
        if data:
            self._feed(data)
        try:
            self.connection.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            reason = openssl_reason(exc)
            if (problem := verify_problem(self.connection)) is not None:
                reason += f" (client certificate: {problem})"
            raise TLSHandshakeError(reason) from None
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
            self._feed(data)
        ssl, incoming = self._ssl, self._incoming
        chunks = []
        while not self._peer_closed:
            buffer = _new_buffer("char[]", _READ_SIZE)
            got = _lib.SSL_read(ssl, buffer, _READ_SIZE)
            if got <= 0:
                self._read_failed(got)
                break
            chunks.append(_ffi.buffer(buffer, got)[:])
            # Every record read and nothing decrypted left over: a further read could
            # only say "want more". (A partial record left in the BIO goes round once
            # more and ends there.)
            if not _held(incoming) and not _lib.SSL_pending(ssl):
                break
        if not chunks:
            return b""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _read_failed(self, result: int) -> None:
        """SSL_read gave nothing: input wanted (return), the peer's close_notify, or an
        error, which pyOpenSSL's dispatch names."""
        if _lib.SSL_get_error(self._ssl, result) == _lib.SSL_ERROR_WANT_READ:
            return
        try:
            self.connection._raise_ssl_error(self._ssl, result)
        except SSL.WantReadError:
            return
        except SSL.ZeroReturnError:  # close_notify: an orderly end of input
            pass
        except SSL.Error as exc:
            raise LayerError(f"TLS: {openssl_reason(exc)}") from None
        self._peer_closed = True  # nothing read and no error: the input has ended

    def wrap(self, data: bytes) -> bytes:
        if data:
            ssl = self._ssl
            with _ffi.from_buffer(data) as buffer:
                offset, left = 0, len(buffer)
                while left:
                    written = _lib.SSL_write(ssl, buffer + offset, left)
                    if written <= 0:
                        self._write_failed(written)
                    offset += written
                    left -= written
        return self.outgoing()

    def _write_failed(self, result: int) -> NoReturn:
        try:
            self.connection._raise_ssl_error(self._ssl, result)
        except SSL.Error as exc:
            raise LayerError(f"TLS: {openssl_reason(exc)}") from None
        raise LayerError("TLS: nothing written")

    def outgoing(self) -> bytes:
        """Everything OpenSSL has written to the outgoing BIO (b"" when nothing)."""
        waiting = _held(self._outgoing)
        if not waiting:
            return b""
        buffer = _new_buffer("char[]", waiting)
        got = _lib.BIO_read(self._outgoing, buffer, waiting)
        return _ffi.buffer(buffer, got)[:] if got > 0 else b""

    def _feed(self, data: bytes) -> None:
        """Received bytes into OpenSSL's input BIO (a memory BIO takes all of them)."""
        with _ffi.from_buffer(data) as buffer:
            if _lib.BIO_write(self._incoming, buffer, len(buffer)) != len(buffer):
                raise LayerError("TLS: the input buffer refused the data")

    def close(self) -> bytes:
        # Queues our close_notify; we do not wait for the peer's.
        with contextlib.suppress(SSL.Error):
            self.connection.shutdown()
        return self.outgoing()
