"""What the session heard and said, secrets replaced, for the telemetry log.

The telemetry log (Cyrus's ``<configdirectory>/log/<user>/``) records a session as the
session sees it. Before login that conversation carries secrets, and only the session can
tell them apart: whether a line is a command or the answer to a SASL challenge depends on
the state it is read in, not on its bytes (a base64 AUTH answer looks like any word). So
the session, when asked to (:meth:`Session.record`), writes into a :class:`Transcript`
each line it consumes and each block it sends, in that order, already redacted; the driver
takes the pieces, stamps them with the time and writes them. Nothing here touches a file or
a clock.

What is hidden (``****``), in every state:

* ``PASS`` and its argument's whole text, the digest of ``APOP``, every argument of ``AUTH``
  after the mechanism name (the initial response);
* every line read during an AUTH exchange (``*``, the cancel, stays visible), and every
  ``+ `` challenge the server sends (GSSAPI and KPOP tokens, SCRAM salts and signatures, a
  CRAM-MD5 or DIGEST-MD5 challenge);
* a line whose first word is not a POP3 command this server knows (a password typed at the
  wrong prompt is one), and a line over the length limit (its text was never kept);
* before login, the argument of every command but USER's where USER is valid (the user
  name): a password typed at the wrong prompt may begin with a command's name ("List my
  Secret-2024", "top secret"), and no command there but USER takes an argument, so an
  argument there is either a secret or a mistake. After login the arguments are message
  numbers and line counts, shown whole.

Lines are recorded with a CRLF ending, whatever ending the client used.
"""

from __future__ import annotations

from typing import Final

from pop3d.protocol.commands import WHITESPACE, split_keyword
from pop3d.protocol.states import State
from pop3d.protocol.wire import OVERLONG, OVERLONG_REST
from pop3d.sasl import registry

REDACTED: Final = b"****"
OVERLONG_SHOWN: Final = b"**** (line over the length limit, not kept)"
CHALLENGE_SHOWN: Final = b"+ ****\r\n"

# Commands whose arguments are no secret. PASS, APOP and AUTH are handled one by one.
_OPEN_COMMANDS: Final = frozenset(
    b"CAPA QUIT STLS USER STAT LIST UIDL RETR TOP DELE RSET NOOP".split()
)


def shown_command(line: bytes | object, state: State) -> bytes:
    """A command line, read in ``state``, as the telemetry log shows it (without its line
    end)."""
    if line is OVERLONG:
        return OVERLONG_SHOWN
    assert isinstance(line, bytes)
    keyword, space, argument = split_keyword(line)  # as the session reads it
    argument = argument.lstrip(WHITESPACE)
    word = keyword.upper()
    if state.unauthenticated and word in _OPEN_COMMANDS:
        if word == b"USER" and state is State.AUTHORIZATION:
            return line
        # Found probing: "List my Secret-2024", a password sent at the PASS prompt, was
        # written whole; the name alone says which command it was taken for.
        return keyword + b" " + REDACTED if argument else keyword
    if word in _OPEN_COMMANDS:
        return line
    if word == b"PASS":
        return keyword + b" " + REDACTED if space else keyword
    if state is State.AUTHORIZATION_USER and word in (b"APOP", b"AUTH"):
        # Refused after USER ("Must give PASS command"): the words after it are no name.
        return keyword + b" " + REDACTED if argument else keyword
    if word == b"APOP":
        # "APOP name digest": the name stays; anything after it is hidden.
        name, _, rest = argument.partition(b" ")
        return keyword + (b" " + name if name else b"") + (b" " + REDACTED if rest else b"")
    if word == b"AUTH":
        # The same split as sasl_auth.auth: "AUTH mechanism [initial-response]". The first
        # word is shown only when it names a mechanism this server has: a client that left
        # the name out sent its initial response there ("AUTH AGFsaWNl...").
        mechanism, _, initial = argument.partition(b" ")
        if mechanism and not registry.is_mechanism(mechanism):
            return keyword + b" " + REDACTED
        shown = keyword + (b" " + mechanism if space else b"")
        return shown + b" " + REDACTED if initial else shown
    return REDACTED


def shown_response(line: bytes | object) -> bytes:
    """A line read during an AUTH exchange: only the cancel is shown."""
    if line is OVERLONG or line is OVERLONG_REST:
        return OVERLONG_SHOWN
    return b"*" if line == b"*" else REDACTED


class Transcript:
    """The pieces recorded since the driver last took them: (from the client?, bytes)."""

    __slots__ = ("_pieces",)

    def __init__(self) -> None:
        self._pieces: list[tuple[bool, bytes]] = []

    def heard(self, shown_line: bytes) -> None:
        self._pieces.append((True, shown_line + b"\r\n"))

    def said(self, data: bytes) -> None:
        self._pieces.append((False, data))

    def take(self) -> list[tuple[bool, bytes]]:
        pieces = self._pieces
        if pieces:
            self._pieces = []
        return pieces


def hide_spans(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    """``data`` with each (start, end) span (a whole challenge line) replaced by
    :data:`CHALLENGE_SHOWN`; spans are in order and do not overlap."""
    parts = []
    position = 0
    for start, end in spans:
        if end > len(data):
            break
        parts.append(data[position:start])
        parts.append(CHALLENGE_SHOWN)
        position = end
    parts.append(data[position:])
    return b"".join(parts)
