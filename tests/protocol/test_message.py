"""The wire form of a message: CRLF normalisation, dot-stuffing, TOP, sizes. Checked against
a deliberately naive reference implementation over arbitrary data and arbitrary chunking."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from pop3d.message import MessageEncoder, SizeCounter, canonical_size

# Bytes that matter to the transform, plus one ordinary letter.
ALPHABET = st.sampled_from([b"a", b".", b"\r", b"\n", b" "])
MESSAGES = st.lists(ALPHABET, max_size=200).map(b"".join)


def reference_canonical(data: bytes) -> bytes:
    text = re.sub(rb"\r?\n", b"\r\n", data)
    if text and not text.endswith(b"\n"):
        text += b"\r\n"
    return text


def reference_lines(data: bytes) -> list[bytes]:
    canonical = reference_canonical(data)
    return canonical.split(b"\r\n")[:-1] if canonical else []


def reference_wire(data: bytes, body_lines: int | None = None) -> bytes:
    lines = reference_lines(data)
    if body_lines is not None and b"" in lines:
        end = lines.index(b"") + 1 + body_lines
        lines = lines[:end]
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


def encode(pieces: list[bytes], body_lines: int | None = None) -> bytes:
    encoder = MessageEncoder(body_lines)
    return b"".join(encoder.feed(p) for p in pieces) + encoder.finish()


@settings(max_examples=500)
@given(MESSAGES, st.lists(st.integers(0, 400), max_size=8))
def test_retr_matches_the_reference_for_any_chunking(data: bytes, cuts: list[int]) -> None:
    assert encode(chunked(data, cuts)) == reference_wire(data)


@settings(max_examples=500)
@given(MESSAGES, st.lists(st.integers(0, 400), max_size=8), st.integers(0, 6))
def test_top_matches_the_reference_for_any_chunking(
    data: bytes, cuts: list[int], lines: int
) -> None:
    assert encode(chunked(data, cuts), lines) == reference_wire(data, lines)


@settings(max_examples=500)
@given(MESSAGES, st.lists(st.integers(0, 400), max_size=8))
def test_size_is_exactly_what_retr_sends_before_stuffing(data: bytes, cuts: list[int]) -> None:
    pieces = chunked(data, cuts)
    expected = len(reference_canonical(data))
    assert canonical_size(pieces) == expected
    counter = SizeCounter()
    for piece in pieces:
        counter.feed(piece)
    assert counter.finish() == expected
    # and the bytes sent, unstuffed and without the terminator, have that length
    wire = encode(pieces)[: -len(b".\r\n")]
    unstuffed = re.sub(rb"(^|\r\n)\.\.", rb"\1.", wire)
    assert len(unstuffed) == expected


def test_known_cases() -> None:
    assert encode([b""]) == b".\r\n"
    assert encode([b"a"]) == b"a\r\n.\r\n"
    assert encode([b".\n"]) == b"..\r\n.\r\n"
    assert encode([b"a\r", b"\n.b"]) == b"a\r\n..b\r\n.\r\n"
    assert encode([b"a\n", b".", b"\n"]) == b"a\r\n..\r\n.\r\n"
    assert encode([b"a\rb\n"]) == b"a\rb\r\n.\r\n"  # a lone CR is content
    assert encode([b"H: v\n\nl1\nl2\n"], 1) == b"H: v\r\n\r\nl1\r\n.\r\n"
    assert encode([b"H: v\n\nl1\nl2\n"], 0) == b"H: v\r\n\r\n.\r\n"
    assert encode([b"H: v\nno body separator\n"], 0) == b"H: v\r\nno body separator\r\n.\r\n"
    assert canonical_size([b"a\nb"]) == 6


def test_top_stops_reading_when_done() -> None:
    encoder = MessageEncoder(1)
    encoder.feed(b"H: v\n\nfirst\nsecond\n")
    assert encoder.done
    assert encoder.feed(b"more\n") == b""


def test_large_message_streams_in_chunks_with_bounded_output() -> None:
    line = b"x" * 99 + b"\n"
    encoder = MessageEncoder()
    total = 0
    for _ in range(1000):  # 100 MB would be the same loop; 10 MB keeps the test quick
        out = encoder.feed(line * 100)
        assert len(out) == 100 * 101
        total += len(out)
    assert total == 1000 * 100 * 101
