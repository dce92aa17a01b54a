"""Fuzz target: the RETR/TOP encoder and the size counter (pop3d/message.py).

Invariant: over any stored bytes in any chunking, ``MessageEncoder`` output equals a
one-shot reference written line by line from RFC 1939 (line ends made CRLF, a final CRLF
appended, TOP's header section and n body lines, dot-stuffing, ".\\r\\n"), and
``canonical_size`` and ``SizeCounter`` equal the length of the reference's canonical form
(the size LIST announces is what RETR sends before dot-stuffing). ``done`` never turns
true for RETR, and once true for TOP further input adds nothing.

Input: byte 0 picks RETR or TOP n, byte 1 the chunking, the rest is the stored message.

    python fuzz/message_encoder.py [libFuzzer flags] [corpus dir ...]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, not fuzz/

import atheris

with atheris.instrument_imports(include=["pop3d"]):
    from fuzz.support import check, chunks
    from pop3d import message

_LINE_END = re.compile(rb"\r?\n")


def canonical(stored: bytes) -> bytes:
    """Every LF or CRLF becomes CRLF (a lone CR stays); a final CRLF if none ends it."""
    text = _LINE_END.sub(b"\r\n", stored)
    if text and not text.endswith(b"\r\n"):
        text += b"\r\n"
    return text


def reference(stored: bytes, body_lines: int | None) -> bytes:
    lines = canonical(stored).split(b"\r\n")[:-1]  # canonical text ends with CRLF
    if body_lines is not None and b"" in lines:  # b"": the line that ends the headers
        blank = lines.index(b"")
        lines = lines[: blank + 1 + body_lines]
    out = bytearray()
    for line in lines:
        out += (b"." + line if line.startswith(b".") else line) + b"\r\n"
    return bytes(out) + b".\r\n"


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    body_lines = None if data[0] >= 0x80 else data[0] % 8
    stored = data[2:]
    pieces = list(chunks(stored, data[1]))
    encoder = message.MessageEncoder(body_lines)
    counter = message.SizeCounter()
    out = bytearray()
    finished = False
    for piece in pieces:
        wire = encoder.feed(piece)
        counter.feed(piece)
        if finished:
            check(not wire, "output after TOP was done")
        out += wire
        if encoder.done:
            check(body_lines is not None, "done is true for RETR")
            finished = True
    out += encoder.finish()
    expected = reference(stored, body_lines)
    check(out == expected, f"encoder {bytes(out)[:200]!r} != reference {expected[:200]!r}")
    size = len(canonical(stored))
    check(message.canonical_size(pieces) == size, "canonical_size differs from the reference")
    check(counter.finish() == size, "SizeCounter differs from the reference")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
