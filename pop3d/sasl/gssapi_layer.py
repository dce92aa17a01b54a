"""The GSSAPI security layer (RFC 4752 §3.3, RFC 4422 §3.7): after the ``+OK`` every byte
both ways travels as frames of a 4-octet big-endian length and one GSS wrap token.

* integrity: wrap without confidentiality; SSF 1 (Cyrus's figure);
* confidentiality: wrap with it; SSF the session key's strength as MIT reports it to Cyrus
  SASL (GSS_C_SEC_CONTEXT_SASL_SSF: 256 for aes256-cts, 128 for aes128-cts; 56, Cyrus's
  K5_MIN_SSF, when the library cannot tell).

Incoming: a frame longer than the buffer size we offered, an empty frame, a token that does
not unwrap (bad checksum, replayed or out-of-sequence token) or one whose protection is not
the negotiated one (an integrity-only frame on a confidentiality layer, or the reverse) is a
:class:`LayerError`. The length is checked as soon as its four octets arrive, so a peer can
make us buffer at most one frame of the size we offered.

Outgoing: data is cut into pieces whose wrap tokens fit the peer's maximum buffer (the size
from ``gss_wrap_size_limit``, as Cyrus's ``gssapi_wrap_sizes``), so a 50 MiB message
streams as a series of frames without ever being held whole.

Wrapping and unwrapping are CPU work on a context the layer owns (no file, no KDC), so they
run inline in the driver; only the exchange that built the context needed ``Offload``.
"""

from __future__ import annotations

import gssapi.raw as gr

from pop3d.sasl.kerberos import unwrap, wrap, wrap_size_limit
from pop3d.transport.layer import LayerError

INTEGRITY_SSF = 1
# The least plaintext a wrap token must be able to carry. Each token costs a wrap call and
# its header on the event loop, so a client's tiny buffer made a RETR a hundred times the
# work: a buffer of 61 octets (one octet a token) turned 6.3 MB into 409 MB and 18 s of a
# worker's CPU, every other session of the worker waiting up to a second (found probing).
# Cyrus's own pop3test offers 1,024 octets (964 of data a token), most clients 64 KiB.
SMALLEST_CHUNK = 256


class GSSAPILayer:
    name = "GSSAPI"

    __slots__ = ("_buffer", "_chunk", "_confidential", "_context", "_max_in", "_ssf")

    def __init__(
        self,
        context: gr.SecurityContext,
        *,
        confidential: bool,
        ssf: int,
        max_in: int,
        max_out: int,
    ) -> None:
        """``max_in``: the largest wrap token we accept (what our offer said); ``max_out``:
        the largest wrap token the peer accepts (what its choice said). ValueError when no
        plaintext at all fits in ``max_out``."""
        self._context = context
        self._confidential = confidential
        self._ssf = ssf
        self._max_in = max_in
        self._buffer = bytearray()
        try:
            chunk = wrap_size_limit(context, max_out, confidential)
        except gr.GSSError as exc:
            raise ValueError(f"wrap size limit: {exc}") from None
        if chunk < SMALLEST_CHUNK:
            raise ValueError(
                f"the peer's buffer of {max_out} octets holds {max(chunk, 0)} octets of data, "
                f"fewer than the {SMALLEST_CHUNK} a token must carry"
            )
        self._chunk = chunk

    def __repr__(self) -> str:
        kind = "confidentiality" if self._confidential else "integrity"
        return f"<GSSAPILayer {kind} ssf={self._ssf} chunk={self._chunk}>"

    @property
    def ssf(self) -> int:
        return self._ssf

    @property
    def confidential(self) -> bool:
        return self._confidential

    @property
    def max_plaintext(self) -> int:
        """The most plaintext one outgoing frame carries."""
        return self._chunk

    @property
    def peer_closed(self) -> bool:
        return False  # no close message exists in this layer: the socket's end is the end

    def unwrap(self, data: bytes) -> bytes:
        buffer = self._buffer
        buffer += data
        out = []
        start = 0
        while len(buffer) - start >= 4:
            size = int.from_bytes(buffer[start : start + 4], "big")
            if size == 0 or size > self._max_in:
                raise LayerError(f"GSSAPI: frame of {size} octets (at most {self._max_in})")
            end = start + 4 + size
            if len(buffer) < end:
                break
            token = buffer[start + 4 : end]
            start = end
            try:
                message, encrypted = unwrap(self._context, token)
            except (gr.GSSError, ValueError) as exc:
                raise LayerError(f"GSSAPI: frame does not unwrap: {_short(exc)}") from None
            if encrypted != self._confidential:
                raise LayerError("GSSAPI: frame protection differs from the negotiated layer")
            out.append(message)
        if start:
            del buffer[:start]
        return out[0] if len(out) == 1 else b"".join(out)

    def wrap(self, data: bytes) -> bytes:
        if not data:
            return b""
        view = memoryview(data)
        frames = []
        for offset in range(0, len(view), self._chunk):
            piece = bytes(view[offset : offset + self._chunk])
            try:
                token = wrap(self._context, piece, self._confidential)
            except gr.GSSError as exc:  # our own context failed: nothing sane to send
                raise LayerError(f"GSSAPI: wrap failed: {_short(exc)}") from None
            frames.append(len(token).to_bytes(4, "big"))
            frames.append(token)
        return b"".join(frames)

    def outgoing(self) -> bytes:
        return b""

    def close(self) -> bytes:
        return b""


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]
