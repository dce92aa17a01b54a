"""Framing of client input into command lines, with a hard limit on line length.

A line longer than the limit is reported once as :data:`OVERLONG` and the rest of it, up to
and including its LF, is discarded. It is never executed in pieces (Cyrus splits such a line
at 8191 bytes and runs the remainder as a second command: see
reference/cyrus/long_line_before_auth.txt).
"""

from __future__ import annotations

from typing import Final


class _Overlong:
    __slots__ = ()

    def __repr__(self) -> str:
        return "OVERLONG"


OVERLONG: Final = _Overlong()


class LineReader:
    """Accumulates bytes; :meth:`next_line` returns one line without its CRLF or LF, the
    :data:`OVERLONG` marker, or ``None`` when no complete line is buffered.

    ``limit`` counts the line with its line ending. Memory stays bounded by the limit plus the
    largest chunk fed, because the driver only reads more when the session asks for it.
    """

    __slots__ = ("_buffer", "_discarding", "_scan_from", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 3:
            raise ValueError("line limit must allow at least one character and CRLF")
        self.limit = limit
        self._buffer = bytearray()
        self._discarding = False
        self._scan_from = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def take_buffered(self) -> bytes:
        """Everything received and not yet returned as a line (the trailing data when the
        layer below changes); the reader starts empty afterwards."""
        taken = bytes(self._buffer)
        self._buffer.clear()
        self._scan_from = 0
        self._discarding = False
        return taken

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def next_line(self) -> bytes | _Overlong | None:
        buffer = self._buffer
        newline = buffer.find(b"\n", self._scan_from)
        if self._discarding:
            if newline < 0:
                buffer.clear()
                self._scan_from = 0
                return None
            del buffer[: newline + 1]
            self._discarding = False
            self._scan_from = 0
            return self.next_line()
        if newline < 0:
            if len(buffer) >= self.limit:
                # Keep nothing of an overlong line: report it now, drop the rest as it comes.
                buffer.clear()
                self._scan_from = 0
                self._discarding = True
                return OVERLONG
            self._scan_from = len(buffer)
            return None
        self._scan_from = 0
        if newline + 1 > self.limit:
            del buffer[: newline + 1]
            return OVERLONG
        end = newline - 1 if newline > 0 and buffer[newline - 1] == 0x0D else newline
        line = bytes(buffer[:end])
        del buffer[: newline + 1]
        return line
