from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pop3d.protocol.wire import OVERLONG, OVERLONG_REST, LineReader


def lines_of(reader: LineReader) -> list[object]:
    out: list[object] = []
    while (line := reader.next_line()) is not None:
        out.append(line)
    return out


def test_crlf_and_bare_lf_end_a_line() -> None:
    reader = LineReader(100)
    reader.feed(b"STAT\r\nNOOP\nQUIT\r")
    assert lines_of(reader) == [b"STAT", b"NOOP"]
    reader.feed(b"\n")
    assert lines_of(reader) == [b"QUIT"]


def test_only_the_cr_before_lf_is_stripped() -> None:
    reader = LineReader(100)
    reader.feed(b"STAT\r\r\nA\rB\n")
    assert lines_of(reader) == [b"STAT\r", b"A\rB"]


def test_overlong_line_is_reported_per_limit_and_never_executed_in_pieces() -> None:
    """Once for each ``limit`` octets before its end (Cyrus runs each 8,191 octets as a
    command): a client streaming octets without a line end meets the bad-command limit.
    Only the first is answered (OVERLONG); the others (OVERLONG_REST) are only counted."""
    reader = LineReader(16)
    reader.feed(b"X" * 40)
    assert lines_of(reader) == [OVERLONG, OVERLONG_REST]
    reader.feed(b"NOOP" * 10)  # still the same line: discarded, never run as NOOP
    assert lines_of(reader) == [OVERLONG_REST] * 3
    reader.feed(b"\r\nQUIT\r\n")
    assert lines_of(reader) == [b"QUIT"]
    assert reader.buffered == 0
    reader.feed(b"Y" * 47 + b"\r\nNOOP\r\n")  # whole at once: counted the same (48 // 16)
    assert lines_of(reader) == [OVERLONG] + [OVERLONG_REST] * 2 + [b"NOOP"]
    reader.feed(b"Z" * 20)  # the next overlong line is answered again
    assert lines_of(reader) == [OVERLONG]


def test_limit_counts_the_line_ending() -> None:
    reader = LineReader(8)
    reader.feed(b"123456\r\n1234567\r\n")
    assert lines_of(reader) == [b"123456", OVERLONG]


def test_take_buffered_hands_over_unread_input() -> None:
    reader = LineReader(100)
    reader.feed(b"CAPA\r\nNOOP\r\npart")
    assert reader.next_line() == b"CAPA"
    assert reader.take_buffered() == b"NOOP\r\npart"
    reader.feed(b"QUIT\r\n")
    assert lines_of(reader) == [b"QUIT"]


@given(
    st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=10),
    st.lists(st.integers(1, 50), max_size=10),
)
def test_any_split_gives_the_same_lines(lines: list[bytes], cuts: list[int]) -> None:
    """Memory stays bounded and the result does not depend on how the bytes arrive."""
    data = b"".join(line + b"\r\n" for line in lines)
    whole = LineReader(20)
    whole.feed(data)
    expected = lines_of(whole)
    pieces = LineReader(20)
    position = 0
    got: list[object] = []
    for cut in [*cuts, len(data)]:
        pieces.feed(data[position : position + cut])
        position += cut
        got += lines_of(pieces)
        assert pieces.buffered <= 20 + 50
    pieces.feed(data[position:])
    got += lines_of(pieces)
    assert got == expected
    for line, result in zip(lines, expected, strict=False):
        if len(line) + 2 <= 20:
            assert result == line
        else:
            assert result is OVERLONG


def test_a_line_is_counted_under_the_limit_it_began_under() -> None:
    """The session lowers the limit after the first OVERLONG of an AUTH answer; the rest of
    that line is counted as it began, whether it came with the first part or after (found
    probing: 1 against 8 answers for one 128 KiB line)."""
    line = b"A" * 130 + b"\r\n"
    whole = LineReader(64)
    whole.feed(line)
    assert whole.next_line() is OVERLONG
    whole.limit = 16  # what the session does once the exchange ends
    split = LineReader(64)
    split.feed(line[:64])
    assert split.next_line() is OVERLONG
    split.limit = 16
    split.feed(line[64:])
    assert lines_of(whole) == lines_of(split) == [OVERLONG_REST]  # 131 // 64 = 2 in all
