"""Parsing of one command line into a keyword and its arguments, strictly.

RFC 1939 §3: a keyword of three or four printable ASCII characters, case-insensitive,
followed by arguments separated by single spaces. We accept runs of spaces before and
between arguments (Cyrus and Dovecot both do, and clients exist that send two), but nothing
else: no tabs, no control characters, no trailing junk after a number. PASS is the exception
the RFC allows: its one argument is everything after the first space, spaces included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_MESSAGE_NUMBER = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Command:
    keyword: str  # upper case
    argument: bytes  # raw, after the spaces that follow the keyword (PASS: the first only)

    def __repr__(self) -> str:
        # A repr reaches tracebacks, debuggers and log lines: PASS's password, APOP's
        # digest and AUTH's initial response were shown there (found probing), as was a
        # password sent at the wrong prompt ("LIST my Secret-2024"). Only what cannot be
        # a secret is shown, as pop3d.security.secret.Secret shows nothing.
        argument, keyword = self.argument, self.keyword
        numbers = argument.translate(None, WHITESPACE).isdigit()  # a PIN is digits too
        if not argument or keyword == "USER" or (numbers and keyword not in _SECRET_BEARING):
            return f"Command(keyword={keyword!r}, argument={argument!r})"
        return f"Command(keyword={keyword!r}, argument=<redacted>)"


_SECRET_BEARING = frozenset({"PASS", "APOP", "AUTH"})


class SyntaxProblem(Exception):
    """The line cannot be a command at all (control characters, an empty keyword)."""


# Cyrus's Uisspace less the line end, already taken off: a keyword ends at the first of
# these and its argument starts after it (pop3d.c:765), so "USER<TAB>alice" is alice there
# (RFC 1939 says one space; clients that send a tab worked with Cyrus; found probing).
WHITESPACE = b" \t\v\f"
_FIRST_WHITESPACE = re.compile(rb"[ \t\v\f]")


def split_keyword(line: bytes) -> tuple[bytes, bytes, bytes]:
    """(keyword, separator, argument), as line.partition(b" ") with Cyrus's whitespace."""
    keyword, space, argument = line.partition(b" ")
    if keyword.isalpha():  # no tab in it: the common case, without the search
        return keyword, space, argument
    found = _FIRST_WHITESPACE.search(line)
    if found is None:
        return line, b"", b""
    at = found.start()
    return line[:at], line[at : at + 1], line[at + 1 :]


def parse_line(line: bytes) -> Command:
    keyword, _, argument = split_keyword(line)
    if not keyword or not keyword.isalpha() or not keyword.isascii() or len(keyword) > 16:
        raise SyntaxProblem("Unrecognized command")
    word = keyword.decode("ascii").upper()
    # Cyrus skips the whitespace after the first for every command but PASS (pop3d.c:768):
    # "USER  alice" is alice, "AUTH  PLAIN" is PLAIN; a password may begin with a space.
    return Command(word, argument if word == "PASS" else argument.lstrip(WHITESPACE))


class ArgumentError(Exception):
    """An argument is missing, malformed or superfluous; the text goes to the client."""


def split_arguments(argument: bytes) -> list[bytes]:
    """Space-separated arguments. Control characters anywhere are a syntax error."""
    if any(byte < 0x20 or byte == 0x7F for byte in argument):
        raise ArgumentError("Syntax error: control character in argument")
    return argument.split()


def no_arguments(argument: bytes) -> None:
    if split_arguments(argument):
        raise ArgumentError("Unexpected extra argument")


def parse_number(token: bytes, what: str = "message number") -> int:
    """A message number or line count: 1*DIGIT, at most 2**32-1."""
    if not token.isdigit() or not token.isascii():
        raise ArgumentError(f"Invalid {what}")
    # Leading zeros do not count towards the length cap ("00000000001" is 1); the cap
    # keeps int() away from a kilobyte of digits.
    digits = token.lstrip(b"0") or b"0"
    value = int(digits) if len(digits) <= 10 else MAX_MESSAGE_NUMBER + 1
    if value > MAX_MESSAGE_NUMBER:
        raise ArgumentError(f"Invalid {what}: out of range")
    return value


def optional_message_number(argument: bytes) -> int | None:
    tokens = split_arguments(argument)
    if not tokens:
        return None
    if len(tokens) > 1:
        raise ArgumentError("Unexpected extra argument")
    return parse_number(tokens[0])


def message_number(argument: bytes) -> int:
    number = optional_message_number(argument)
    if number is None:
        raise ArgumentError("Missing argument: message number")
    return number


def top_arguments(argument: bytes) -> tuple[int, int]:
    tokens = split_arguments(argument)
    if len(tokens) < 2:
        raise ArgumentError("Missing argument: TOP needs a message number and a line count")
    if len(tokens) > 2:
        raise ArgumentError("Unexpected extra argument")
    return parse_number(tokens[0]), _line_count(tokens[1])


def _line_count(token: bytes) -> int:
    """TOP's line count: any 1*DIGIT. RFC 1939: "If the number of lines requested by the
    POP3 client is greater than than the number of lines in the body, then the POP3 server
    sends the entire message" (found probing: a count past 2**32-1 was refused, as Cyrus
    refuses it). A count no body can reach stands for all of them, so int() never sees a
    kilobyte of digits."""
    if not token.isdigit() or not token.isascii():
        raise ArgumentError("Invalid number of lines")
    digits = token.lstrip(b"0") or b"0"
    return int(digits) if len(digits) <= 18 else ALL_LINES


# More lines than any message has (a message of 2**60 octets could not reach it)
ALL_LINES = 10**18
