"""What RETR and TOP send for a stored message, incrementally, without holding it whole.

The *canonical form* of a stored message is its bytes with every line ending made CRLF (bare
LF becomes CRLF, CRLF stays, a lone CR stays) and, if it does not end with a line ending, a
final CRLF appended. LIST/STAT sizes are the length of the canonical form: exactly the
octets RETR sends before dot-stuffing. Storage uses :func:`canonical_size` at delivery and
when a file carries no size hint; the driver streams through :class:`MessageEncoder`. Both
go through :class:`_Normalizer`, so the size and the bytes cannot disagree.

Everything here works on chunks of any size and any boundary (a CR at the end of one chunk
and its LF at the start of the next, a dot at the start of a chunk that starts a line): the
chunk-edge bugs of Twisted's POP3 are what this shape avoids. Every pass over a chunk is
C: for a message stored with bare LFs, two ``memchr`` tests (any CR? any dot?) and one
``bytes.replace`` (LF to CRLF); the two-octet searches (CRLF, a dot at a line start), only
where those tests find the octet, go to the regex engine, which is faster at them than
``bytes`` (bench/RESULTS.md 17: 50 MB in 33 ms instead of 119).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

TERMINATOR = b".\r\n"
_CRLF = re.compile(rb"\r\n")
_LINE_START_DOT = re.compile(rb"\n\.")


class _Normalizer:
    """Stored bytes in, canonical (CRLF) bytes out. A trailing CR is held back until the
    next chunk shows whether an LF follows it."""

    __slots__ = ("_held_cr", "_last", "emitted")

    def __init__(self) -> None:
        self._held_cr = False
        self._last = 0  # last byte emitted, 0 before any
        self.emitted = 0

    def feed(self, chunk: bytes) -> bytes:
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if chunk.endswith(b"\r"):
            self._held_cr = True
            chunk = chunk[:-1]
        if not chunk:
            return b""
        if b"\n" in chunk:
            # Maildirs are mostly stored with bare LFs: a one-octet test (memchr) skips the
            # CRLF pass for them, and where there are CRs the regex engine finds the
            # two-octet CRLF twice as fast as bytes.replace does (bench/RESULTS.md 17).
            if b"\r" in chunk:
                chunk = _CRLF.sub(b"\n", chunk)
            chunk = chunk.replace(b"\n", b"\r\n")
        self._last = chunk[-1]
        self.emitted += len(chunk)
        return chunk

    def finish(self) -> bytes:
        tail = b"\r" if self._held_cr else b""
        self._held_cr = False
        if tail or (self.emitted and self._last != 0x0A):
            tail += b"\r\n"
        self.emitted += len(tail)
        if tail:
            self._last = 0x0A
        return tail


class _Truncator:
    """Passes the header section, its blank separator line and the first ``body_lines``
    lines of the body (TOP). Input is canonical, so every line ends in CRLF."""

    __slots__ = ("_body_left", "_in_headers", "_line_len", "done")

    def __init__(self, body_lines: int) -> None:
        self._body_left = body_lines
        self._in_headers = True
        self._line_len = 0
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        pos = 0
        size = len(data)
        while pos < size:
            newline = data.find(b"\n", pos)
            if newline < 0:
                self._line_len += size - pos
                return data
            line_len = self._line_len + newline + 1 - pos
            self._line_len = 0
            pos = newline + 1
            if self._in_headers:
                if line_len == 2:  # the empty line that ends the header section
                    self._in_headers = False
                    if self._body_left == 0:
                        self.done = True
                        return data[:pos]
            else:
                self._body_left -= 1
                if self._body_left == 0:
                    self.done = True
                    return data[:pos]
        return data


class _DotStuffer:
    """RFC 1939 §3: a line that starts with "." gets one more "." in front."""

    __slots__ = ("_at_line_start",)

    def __init__(self) -> None:
        self._at_line_start = True

    def feed(self, data: bytes) -> bytes:
        if not data:
            return data
        # Base64 (most of a big message) has no dot, which memchr finds out at once; a
        # text with dots goes to the regex engine, four times faster here than
        # bytes.replace's two-octet search, and returning ``data`` itself if no line
        # starts with a dot (bench/RESULTS.md 17).
        if b"." in data:
            data = _LINE_START_DOT.sub(b"\n..", data)
        if self._at_line_start and data[0] == 0x2E:
            data = b"." + data
        self._at_line_start = data[-1] == 0x0A
        return data


class MessageEncoder:
    """Stored message bytes in, RETR/TOP wire bytes out (without the ``+OK`` line).

    ``body_lines=None`` sends the whole message; a number sends the headers and that many
    body lines (TOP). After :meth:`finish` the output is complete, terminator included.
    :attr:`done` turns true once TOP has everything it needs, so the caller can stop reading.
    """

    __slots__ = ("_normalizer", "_stuffer", "_truncator")
    TERMINATOR = TERMINATOR  # what finish() ends with

    def __init__(self, body_lines: int | None = None) -> None:
        self._normalizer = _Normalizer()
        self._truncator = _Truncator(body_lines) if body_lines is not None else None
        self._stuffer = _DotStuffer()

    @property
    def done(self) -> bool:
        return self._truncator is not None and self._truncator.done

    @property
    def octets(self) -> int:
        """Octets of the canonical form made so far (before TOP's cut and dot-stuffing).
        After :meth:`finish` a whole message's equals its LIST size."""
        return self._normalizer.emitted

    def feed(self, chunk: bytes) -> bytes:
        data = self._normalizer.feed(chunk)
        if self._truncator is not None:
            data = self._truncator.feed(data)
        return self._stuffer.feed(data)

    def finish(self) -> bytes:
        if self.done:
            return TERMINATOR
        data = self._normalizer.finish()
        if self._truncator is not None:
            data = self._truncator.feed(data)
        return self._stuffer.feed(data) + TERMINATOR


def canonical_size(chunks: Iterable[bytes]) -> int:
    """Length of the canonical form of the message made of ``chunks``."""
    normalizer = _Normalizer()
    for chunk in chunks:
        normalizer.feed(chunk)
    normalizer.finish()
    return normalizer.emitted


class SizeCounter:
    """:func:`canonical_size` for callers that already loop over the chunks (delivery)."""

    __slots__ = ("_normalizer",)

    def __init__(self) -> None:
        self._normalizer = _Normalizer()

    def feed(self, chunk: bytes) -> None:
        self._normalizer.feed(chunk)

    def finish(self) -> int:
        self._normalizer.finish()
        return self._normalizer.emitted
