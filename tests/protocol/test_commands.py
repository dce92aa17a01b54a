from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pop3d.protocol import commands
from pop3d.protocol.commands import ArgumentError, SyntaxProblem


def test_keyword_is_case_insensitive_and_argument_raw() -> None:
    command = commands.parse_line(b"pass  two  spaces ")
    assert command.keyword == "PASS"
    assert command.argument == b" two  spaces "


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        (b"PASS hunter2-secret", "Command(keyword='PASS', argument=<redacted>)"),
        (b"PASS 123456", "Command(keyword='PASS', argument=<redacted>)"),
        (
            b"APOP alice c4c9334bac560ecc979e58001b3e22fb",
            "Command(keyword='APOP', argument=<redacted>)",
        ),
        (b"AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=", "Command(keyword='AUTH', argument=<redacted>)"),
        (b"AUTH AGFsaWNlAHdvbmRlcmxhbmQ=", "Command(keyword='AUTH', argument=<redacted>)"),
        # a password sent at the wrong prompt
        (b"List my Secret-2024", "Command(keyword='LIST', argument=<redacted>)"),
        (b"USER alice", "Command(keyword='USER', argument=b'alice')"),
        (b"TOP 1  10", "Command(keyword='TOP', argument=b'1  10')"),
        (b"STAT", "Command(keyword='STAT', argument=b'')"),
        (b"PASS", "Command(keyword='PASS', argument=b'')"),
    ],
)
def test_repr_shows_no_argument_that_can_be_a_secret(line: bytes, shown: str) -> None:
    """Found probing: the repr (a traceback's locals, a debugger) showed PASS's password
    and APOP's digest, which the APOP verification request keeps out of its own."""
    assert repr(commands.parse_line(line)) == shown


@pytest.mark.parametrize(
    ("line", "argument"),
    [
        (b"USER  alice", b"alice"),
        (b"AUTH   PLAIN", b"PLAIN"),
        (b"RETR  1", b"1"),
        (b"STAT ", b""),
        # any of Cyrus's whitespace ends the keyword (pop3d.c:765, Uisspace)
        (b"USER\talice", b"alice"),
        (b"list\t \x0b1", b"1"),
        (b"NOOP\x0c", b""),
    ],
)
def test_spaces_after_the_keyword_are_skipped_but_for_pass(line: bytes, argument: bytes) -> None:
    """Cyrus skips them for every command but PASS (pop3d.c:768): "USER  alice" is alice."""
    assert commands.parse_line(line).argument == argument


def test_a_password_keeps_its_whitespace_after_a_tab() -> None:
    command = commands.parse_line(b"PASS\t secret\t")
    assert (command.keyword, command.argument) == ("PASS", b" secret\t")


@pytest.mark.parametrize("line", [b"", b" STAT", b"ST4T", b"\xc3\xa9TAT", b"S" * 17])
def test_lines_that_cannot_be_commands(line: bytes) -> None:
    with pytest.raises(SyntaxProblem):
        commands.parse_line(line)


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        (b"1xyz 2", "Invalid message number"),
        (b"1 2 3", "Unexpected extra argument"),
        (b"1", "Missing argument"),
        (b"1 -1", "Invalid number of lines"),
        (b"4294967296 1", "out of range"),
        (b"1\t2", "control character"),
    ],
)
def test_top_arguments_are_strict(argument: bytes, message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        commands.top_arguments(argument)


def test_a_line_count_past_every_body_means_the_whole_message() -> None:
    # RFC 1939 TOP: more lines than the body has is the entire message, however many
    assert commands.top_arguments(b"1 4294967296") == (1, 4294967296)
    assert commands.top_arguments(b"1 " + b"9" * 5000) == (1, commands.ALL_LINES)
    assert commands.top_arguments(b"1 " + b"0" * 100 + b"7") == (1, 7)
    with pytest.raises(ArgumentError, match="Invalid number of lines"):
        commands.top_arguments(b"1 +5")


def test_message_numbers() -> None:
    assert commands.message_number(b"007") == 7
    assert commands.message_number(b"4294967295") == 4294967295
    assert commands.optional_message_number(b"") is None
    assert commands.optional_message_number(b"  2") == 2
    for bad in (b"+1", b"1.0", b"0x1", b"\xd9\xa1"):  # the last is an Arabic-Indic one
        with pytest.raises(ArgumentError):
            commands.message_number(bad)


def test_leading_zeros_do_not_count_towards_the_length_cap() -> None:
    # Found by fuzz/wire_commands.py: "00000518439131" (14 digits, value < 2**32) was
    # refused as out of range because the cap counted the zeros.
    assert commands.message_number(b"00000518439131") == 518439131
    assert commands.parse_number(b"0" * 100 + b"4294967295") == 4294967295
    assert commands.top_arguments(b"000000000001 00000000000") == (1, 0)
    with pytest.raises(ArgumentError, match="out of range"):
        commands.parse_number(b"0" * 100 + b"4294967296")
    with pytest.raises(ArgumentError, match="out of range"):
        commands.parse_number(b"9" * 5000)


@given(st.binary(max_size=40))
def test_parsers_never_raise_anything_unexpected(data: bytes) -> None:
    for parse in (commands.top_arguments, commands.optional_message_number, commands.no_arguments):
        try:
            parse(data)
        except ArgumentError:
            pass
    try:
        commands.parse_line(data)
    except SyntaxProblem:
        pass
