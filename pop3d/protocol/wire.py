"""Framing of client input into command lines, with a hard limit on line length.

A line longer than the limit is reported once as :data:`OVERLONG` and the rest of it, up to
and including its LF, is discarded. It is never executed in pieces (Cyrus splits such a line
at 8191 bytes and runs the remainder as a second command: see
reference/cyrus/long_line_before_auth.txt). Each further ``limit`` octets of it is
:data:`OVERLONG_REST`: a bad command to count, with no answer of its own.
"""

from __future__ import annotations

from typing import Final


class _Overlong:
    __slots__ = ()

    def __repr__(self) -> str:
        return "OVERLONG"


class _OverlongRest:
    __slots__ = ()

    def __repr__(self) -> str:
        return "OVERLONG_REST"


OVERLONG: Final = _Overlong()
# One line is one command, answered once (RFC 1939's pairing: a client counting answers
# took the second "Line too long" of one 200 KB line for its next command's, found
# probing); the rest of an overlong line only counts toward the bad-command limit.
OVERLONG_REST: Final = _OverlongRest()


class LineReader:
    """Accumulates bytes; :meth:`next_line` returns one line without its CRLF or LF, the
    :data:`OVERLONG` or :data:`OVERLONG_REST` marker, or ``None`` when no complete line is
    buffered.

    ``limit`` counts the line with its line ending. A line over it is never run in pieces:
    nothing of it is kept, and it counts as one bad command for each ``limit`` octets
    before its end (OVERLONG for the first, OVERLONG_REST for each after it), as Cyrus runs
    each 8,191 octets of a long line as a command of its own.
    So a client that streams octets and never a line end meets the bad-command limit (one
    that did was read for as long as it liked, found probing). The count depends only on
    the line, not on how it arrives. Memory stays bounded by the limit plus the largest
    chunk fed, because the driver only reads more when the session asks for it.
    """

    __slots__ = ("_buffer", "_due", "_limit", "_line_limit", "_reported", "_scan_from", "_seen")

    def __init__(self, limit: int) -> None:
        if limit < 3:
            raise ValueError("line limit must allow at least one character and CRLF")
        self._limit = limit
        self._buffer = bytearray()
        self._scan_from = 0
        # Of the overlong line being dropped: its octets so far (-1: none is), and how many
        # times it was reported; OVERLONGs owed once its end was found.
        self._seen = -1
        self._line_limit = limit
        self._reported = 0
        self._due = 0

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, limit: int) -> None:
        """The session's limit changes with its state (an AUTH exchange reads longer lines).
        A line being dropped is counted to its end under the limit it began under: counted
        under the new one from where it was, its count depended on how it arrived (found
        probing)."""
        self._limit = limit

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def take_buffered(self) -> bytes:
        """Everything received and not yet returned as a line (the trailing data when the
        layer below changes); the reader starts empty afterwards."""
        taken = bytes(self._buffer)
        self._buffer.clear()
        self._scan_from = 0
        self._seen = -1
        self._due = 0
        return taken

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def next_line(self) -> bytes | _Overlong | _OverlongRest | None:
        if self._due:
            self._due -= 1
            return OVERLONG_REST
        buffer = self._buffer
        newline = buffer.find(b"\n", self._scan_from)
        if self._seen >= 0:  # dropping an overlong line
            if newline < 0:
                self._seen += len(buffer)
                buffer.clear()
                return self._report_due()
            self._seen += newline
            del buffer[: newline + 1]
            self._due = self._seen // self._line_limit - self._reported
            self._seen = -1
            return self.next_line()
        if newline < 0:
            if len(buffer) >= self.limit:
                # Keep nothing of an overlong line: report it now, drop the rest as it comes.
                self._seen, self._reported, self._line_limit = len(buffer), 0, self._limit
                buffer.clear()
                self._scan_from = 0
                return self._report_due()
            self._scan_from = len(buffer)
            return None
        self._scan_from = 0
        if newline + 1 > self.limit:
            del buffer[: newline + 1]
            self._due = newline // self.limit - 1
            return OVERLONG
        end = newline - 1 if newline > 0 and buffer[newline - 1] == 0x0D else newline
        line = bytes(buffer[:end])
        del buffer[: newline + 1]
        return line

    def _report_due(self) -> _Overlong | _OverlongRest | None:
        """Once for each ``limit`` octets of the line being dropped, without its end yet."""
        if self._seen // self._line_limit > self._reported:
            self._reported += 1
            return OVERLONG if self._reported == 1 else OVERLONG_REST
        return None
