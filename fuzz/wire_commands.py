"""Fuzz target: the command line reader and the command parser (pop3d/protocol/wire.py,
pop3d/protocol/commands.py).

Invariant: over any bytes in any chunking, ``LineReader`` yields exactly what a one-shot
reference framing yields (lines without their CRLF or LF, for a line over the limit, which
is never run in pieces, OVERLONG then OVERLONG_REST for each further limit's worth of its
octets), never holds more
than the limit while it waits for a line end, and ``discard_buffered`` leaves nothing
behind; every line either parses into a keyword of 1-16 ASCII letters or raises
SyntaxProblem, and every argument parser raises only ArgumentError and returns numbers
within 0..2**32-1 equal to the decimal value of the token.

Input: byte 0 picks the line limit, byte 1 the chunking, the rest is the client stream.

    python fuzz/wire_commands.py [libFuzzer flags] [corpus dir ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, not fuzz/

import atheris

with atheris.instrument_imports(include=["pop3d"]):
    from fuzz.support import check, chunks
    from pop3d.protocol import commands
    from pop3d.protocol.wire import OVERLONG, OVERLONG_REST, LineReader

LIMITS = (3, 4, 5, 8, 16, 64, 255, 8192)
Framed = list[bytes | object]


def reference(stream: bytes, limit: int) -> Framed:
    """The framing of the whole stream at once: split at LF; a line whose length with its
    LF exceeds the limit counts once for each ``limit`` octets before its LF (OVERLONG,
    then OVERLONG_REST); an unterminated tail at or over the limit too."""
    out: Framed = []
    *lines, tail = stream.split(b"\n")
    for line in lines:
        if len(line) + 1 > limit:
            out += _overlong(len(line) // limit)
        else:
            out.append(line[:-1] if line.endswith(b"\r") else line)
    out += _overlong(len(tail) // limit)
    return out


def _overlong(count: int) -> Framed:
    """The first answered, the rest only counted."""
    return [OVERLONG, *[OVERLONG_REST] * (count - 1)] if count else []


def parse(line: bytes) -> None:
    try:
        command = commands.parse_line(line)
    except commands.SyntaxProblem:
        return
    keyword = command.keyword
    check(1 <= len(keyword) <= 16, f"keyword {keyword!r}")
    check(keyword.isascii() and keyword.isalpha() and keyword.isupper(), f"keyword {keyword!r}")
    argument = command.argument
    check(line[: len(keyword)].upper() == keyword.encode(), "keyword not from the line")
    for parser in (
        commands.split_arguments,
        commands.no_arguments,
        commands.optional_message_number,
        commands.message_number,
        commands.top_arguments,
    ):
        try:
            result = parser(argument)
        except commands.ArgumentError:
            continue
        numbers = result if isinstance(result, tuple) else (result,)
        for number in numbers:
            if isinstance(number, int):
                check(0 <= number <= commands.MAX_MESSAGE_NUMBER, f"number {number}")
    tokens = argument.split(b" ")
    for token in tokens:
        try:
            value = commands.parse_number(token)
        except commands.ArgumentError:
            check(
                not (token.isascii() and token.isdigit() and int(token) <= 2**32 - 1),
                f"valid number {token!r} refused",
            )
            continue
        check(token.isascii() and token.isdigit() and value == int(token), f"{token!r} -> {value}")


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    limit = LIMITS[data[0] % len(LIMITS)]
    stream = data[2:]
    reader = LineReader(limit)
    got: Framed = []
    for chunk in chunks(stream, data[1]):
        reader.feed(chunk)
        while (framed := reader.next_line()) is not None:
            got.append(framed)
        check(reader.buffered < limit, f"{reader.buffered} octets held, limit {limit}")
    expected = reference(stream, limit)
    check(got == expected, f"framing differs: {got[:5]!r} != {expected[:5]!r}")
    for line in got:
        if isinstance(line, bytes):
            check(b"\n" not in line, "LF in a line")
            parse(line)
    before = reader.buffered
    taken = reader.take_buffered()
    check(len(taken) == before, f"took {len(taken)} of {before} buffered octets")
    check(reader.buffered == 0 and reader.next_line() is None, "take_buffered left something")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
