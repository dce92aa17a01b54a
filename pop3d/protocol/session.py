"""The POP3 session engine: bytes in, bytes and events out (RFC 1939, RFC 2449, RFC 3206).

Usage by a driver (compare h11's ``Connection``)::

    session = Session(settings, connection_info)
    while True:
        event = session.next_event()
        if event is NEED_DATA:   session.receive_data(await read())   # b"" never needed
        elif Send:               await write(event.data)
        elif Request:            session.resolve(await carry_out(event))
        elif Close:              break

This module is the engine only: framing, the state table, the request/resolve loop and the
output buffer. What each command does is in the handler modules (:mod:`.authorization`,
:mod:`.sasl_auth`, :mod:`.transaction`), found through :data:`.table.TABLE`.

Handlers that need the outside world are generators: they ``yield`` a :class:`Request` and
receive its result, so a PASS reads top to bottom (verify, pause on failure, open the
maildrop, answer) although the password check runs in a thread and the pause on a timer.
Only one request is outstanding at a time, and no input is parsed while it is, which is
what makes pipelining safe: answers always come back in command order. A handler running
in a state that reads responses (an AUTH exchange) yields :data:`AWAIT_RESPONSE` and
receives the client's next line.

When the protocol below the session changes (STLS, a SASL security layer), the bytes
received and not yet consumed are the session's *trailing data* (h11's word): the handler
discards them (STLS: they came in clear) or hands them to the driver with the new layer.
"""

from __future__ import annotations

from collections.abc import Iterable

from pop3d.protocol import commands
from pop3d.protocol.commands import ArgumentError, SyntaxProblem
from pop3d.protocol.events import (
    NEED_DATA,
    Close,
    Event,
    LoginFailed,
    LoginSucceeded,
    MaildropOpened,
    Send,
)
from pop3d.protocol.settings import ConnectionInfo, SessionSettings
from pop3d.protocol.states import READS_RESPONSES, AwaitResponse, Outcome, Rule, State, Task
from pop3d.protocol.table import KNOWN_COMMANDS, KPOP_TABLE, TABLE
from pop3d.protocol.transcript import Transcript, hide_spans, shown_command, shown_response
from pop3d.protocol.wire import OVERLONG, OVERLONG_REST, LineReader
from pop3d.requests import Request
from pop3d.security.policy import Action
from pop3d.security.value import Security

_FLUSH_AT = 64 * 1024
# Answers to pipelined commands go out together, but no more than this many commands' worth
# at once: the driver lets its other sessions in between two sends (input_waiting), and a
# send covering a whole read of pipelined commands (64 KiB of answers: 400 CAPAs) made
# that turn long (found probing).
_FLUSH_AFTER_COMMANDS = 32


class NoSuchMessage(Exception):
    """A refusal about one message; not a protocol error, so not a bad command."""


class Maildrop:
    """The session's view of the maildrop snapshot taken at login. Messages delivered later
    are not in it, so they are neither shown nor deleted (RFC 1939 §8)."""

    __slots__ = (
        "_deleted_totals",
        "_totals",
        "deleted",
        "last_login",
        "login_time",
        "retrieved",
        "sizes",
        "sizes_shown",
        "uids",
    )

    def __init__(self, opened: MaildropOpened) -> None:
        self.uids = opened.uids
        self.sizes: list[int | None] = list(opened.sizes)
        # STAT or LIST answered: the client holds sizes it may check RETR against, so they
        # stand for the rest of the session (one flag for all: STAT gives only the sum)
        self.sizes_shown = False
        self.deleted = bytearray(len(opened.uids))
        self.retrieved = bytearray(len(opened.uids))  # RETR went out whole
        self.login_time = opened.now
        self.last_login = opened.last_login
        # STAT's count and octets, kept once every live message's size is known: a STAT
        # went over the whole maildrop each time (0.9 ms at 10,000 messages), and 32 of
        # them pipelined held the worker's other sessions 30 ms (found probing).
        self._totals: tuple[int, int] | None = None
        # What DELE took out of them since the last RSET, which puts it back (None: a
        # message of unknown size among them). RSET then STAT pipelined went over the
        # whole maildrop at each STAT again (found re-probing).
        self._deleted_totals: tuple[int, int] | None = (0, 0)

    def live(self) -> list[int]:
        return [index for index, gone in enumerate(self.deleted) if not gone]

    @property
    def totals(self) -> tuple[int, int] | None:
        """(messages, octets) not deleted, if known without going over the maildrop."""
        return self._totals

    @totals.setter
    def totals(self, totals: tuple[int, int]) -> None:
        self._totals = totals

    def delete(self, index: int) -> None:
        self.deleted[index] = 1
        size = self.sizes[index]
        if self._totals is not None and size is not None:
            count, octets = self._totals
            self._totals = (count - 1, octets - size)
        if self._deleted_totals is not None:
            count, octets = self._deleted_totals
            self._deleted_totals = None if size is None else (count + 1, octets + size)

    def undelete_all(self) -> None:
        self.deleted[:] = bytes(len(self.deleted))
        if self._totals is not None and self._deleted_totals is not None:
            (count, octets), (back, back_octets) = self._totals, self._deleted_totals
            self._totals = (count + back, octets + back_octets)
        else:
            self._totals = None
        self._deleted_totals = (0, 0)

    def set_size(self, index: int, size: int) -> None:
        self.sizes[index] = size
        self._totals = None

    def index_of(self, number: int) -> int:
        """Message number (1-based, on the wire) -> index into the listing (0-based)."""
        if number < 1 or number > len(self.uids):
            raise NoSuchMessage("No such message")
        index = number - 1
        if self.deleted[index]:
            raise NoSuchMessage(f"Message {number} is deleted")
        return index


class Session:
    # Slots: an idle logged-in session is mostly these objects (bench/RESULTS.md, section 14).
    __slots__ = (
        "_awaiting_response",
        "_bad_commands",
        "_challenge_spans",
        "_client_asked",
        "_close_reason",
        "_maildrop",
        "_notices",
        "_out",
        "_reader",
        "_request",
        "_request_sent",
        "_state_before",
        "_table",
        "_task",
        "_task_mark",
        "_task_rule",
        "_unflushed",
        "challenge",
        "connection",
        "folder",
        "security",
        "settings",
        "state",
        "transcript",
        "user",
        "user_realm",
    )

    def __init__(self, settings: SessionSettings, connection: ConnectionInfo) -> None:
        self.settings = settings
        self.connection = connection
        self.state = State.AUTHORIZATION
        self.security = Security(
            tls=connection.tls,
            external_ssf=connection.external_ssf,
            kpop_principal=connection.kpop_principal,
        )
        self._table = KPOP_TABLE if connection.kpop_principal is not None else TABLE
        self.user: str | None = None  # USER argument, then the authenticated identity
        self.user_realm = ""  # the loginrealms realm USER named (identity.login_realm)
        self.folder: str | None = None  # the popsubfolders folder USER named
        self._reader = LineReader(settings.line_limit)
        self._out = bytearray()
        self._unflushed = 0  # commands and responses read since the last Send
        # A list, not a deque: an empty deque holds a 64-slot block (760 octets in every
        # idle session, bench/RESULTS.md section 11); there are rarely two notices.
        self._notices: list[LoginSucceeded | LoginFailed] = []
        self._task: Task | None = None
        self._task_rule: Rule | None = None
        self._task_mark = 0
        self._request: Request | None = None
        self._request_sent = False
        self._awaiting_response = False
        self._bad_commands = 0
        self._close_reason = ""
        self._client_asked = False
        self._state_before = self.state
        self._maildrop: Maildrop | None = None
        # The telemetry record (transcript.py): None unless the driver asked for one.
        self.transcript: Transcript | None = None
        self._challenge_spans: list[tuple[int, int]] = []  # in _out, to hide in the record
        self.challenge = self._make_challenge()
        self._greet()

    # --- driver interface -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self._reader.feed(data)

    @property
    def input_waiting(self) -> bool:
        """Received octets not yet read as a command (pipelined commands, or part of one)."""
        return self._reader.buffered > 0

    def abandon(self) -> None:
        """The connection is gone with a command in flight (an STLS whose handshake never
        finished, a client gone during a password check): close it. Left suspended, the
        STLS command's generator kept this session and what it refers to alive after the
        connection ended: unfinished STLS handshakes grew a worker by 1.3 KB each (found
        probing; tests/transport/test_tls.py)."""
        task, self._task, self._task_rule, self._request = self._task, None, None, None
        if task is not None:
            task.close()

    def record(self) -> Transcript:
        """From now on, note each line consumed and each block sent in a transcript, with
        secrets hidden (transcript.py); output not yet taken by the driver is included."""
        if self.transcript is None:
            self.transcript = Transcript()
        return self.transcript

    def stop_recording(self) -> None:
        self.transcript = None
        self._challenge_spans.clear()

    def next_event(self) -> Event:
        while True:
            if self._notices:
                return self._notices.pop(0)
            if self._awaiting_response:
                line = self._reader.next_line()
                if line is None:
                    return self._flush() if self._out else NEED_DATA
                self._awaiting_response = False
                self._unflushed += 1
                if self.transcript is not None:
                    self.transcript.heard(shown_response(line))
                self._advance(line)
                continue
            if self._request is not None:
                if self._request_sent:
                    raise RuntimeError(f"resolve {self._request!r} before asking for more")
                if self._out:
                    return self._flush()
                self._request_sent = True
                return self._request
            if self.state is State.CLOSED:
                if self._out:
                    return self._flush()
                return Close(self._close_reason, self._client_asked)
            if len(self._out) >= _FLUSH_AT or self._unflushed >= _FLUSH_AFTER_COMMANDS:
                return self._flush()
            line = self._reader.next_line()
            if line is None:
                return self._flush() if self._out else NEED_DATA
            self._unflushed += 1
            self._dispatch(line)

    def resolve(self, result: object) -> None:
        if self._request is None or not self._request_sent:
            raise RuntimeError("no request is waiting for a result")
        self._request = None
        self._request_sent = False
        self._advance(result)

    @property
    def maildrop_open(self) -> bool:
        return self._maildrop is not None

    # --- for handlers -------------------------------------------------------------------

    def ok(self, text: str = "") -> None:
        self._out += b"+OK " + text.encode() + b"\r\n" if text else b"+OK\r\n"

    def err(self, text: str) -> None:
        self._out += b"-ERR " + text.encode() + b"\r\n"

    def continuation(self, data: bytes) -> None:
        """An RFC 5034 "+ " line (a base64 challenge)."""
        start = len(self._out)
        self._out += b"+ " + data + b"\r\n"
        if self.transcript is not None:
            self._challenge_spans.append((start, len(self._out)))

    def lines(self, lines: Iterable[str]) -> None:
        """A multi-line body; callers guarantee no line starts with "."."""
        out = self._out
        for line in lines:
            out += line.encode() + b"\r\n"
        out += b".\r\n"

    def close(self, reason: str, *, client_asked: bool = False) -> None:
        self.state = State.CLOSED
        self._close_reason = reason
        self._client_asked = client_asked

    def notice(self, event: LoginSucceeded | LoginFailed) -> None:
        self._notices.append(event)

    def take_trailing_data(self) -> bytes:
        """Bytes received and not consumed, handed over when the layer below changes."""
        return self._reader.take_buffered()

    @property
    def maildrop(self) -> Maildrop:
        assert self._maildrop is not None
        return self._maildrop

    def enter_transaction(self, identity: str, opened: MaildropOpened) -> None:
        self._maildrop = Maildrop(opened)
        self.user = identity

    @property
    def line_limit(self) -> int:
        return self._reader.limit

    # --- dispatch -----------------------------------------------------------------------

    def _dispatch(self, line: bytes | object) -> None:
        if line is OVERLONG_REST:  # of a line already answered: counted, not answered
            self._bad(len(self._out))
            return
        if self.transcript is not None:
            self.transcript.heard(shown_command(line, self.state))
        mark = len(self._out)
        if line is OVERLONG:
            self.err(f"Line too long (limit {self._reader.limit} octets)")
            self._bad(mark)
            return
        assert isinstance(line, bytes)
        try:
            command = commands.parse_line(line)
        except SyntaxProblem as problem:
            self.err(str(problem))
            self._bad(mark)
            return
        rule = self._table.get((self.state, command.keyword))
        if rule is None:
            if command.keyword in KNOWN_COMMANDS:
                self.err(f"{command.keyword} is not valid in the {self.state.rfc_name} state")
            else:
                self.err("Unrecognized command")
            self._bad(mark)
            return
        self._state_before = self.state
        if rule.during is not None:
            self._enter(rule.during)
        try:
            result = rule.handler(self, command.argument)
        except (ArgumentError, NoSuchMessage) as refusal:
            self._refused(rule, refusal, mark)
            return
        if isinstance(result, Outcome):
            self._finish(rule, result, mark)
            return
        self._task = result
        self._task_rule = rule
        self._task_mark = mark
        self._advance(None)

    def _advance(self, value: object) -> None:
        task = self._task
        rule = self._task_rule
        assert task is not None and rule is not None
        try:
            step = task.send(value)
        except StopIteration as stop:
            self._task = self._task_rule = None
            self._finish(rule, stop.value, self._task_mark)
            return
        except (ArgumentError, NoSuchMessage) as refusal:
            self._task = self._task_rule = None
            self._refused(rule, refusal, self._task_mark)
            return
        if isinstance(step, AwaitResponse):
            assert self.state in READS_RESPONSES, f"{self.state} reads commands"
            self._awaiting_response = True
            return
        self._request = step
        self._request_sent = False

    def _refused(self, rule: Rule, refusal: Exception, mark: int) -> None:
        self.err(str(refusal))
        outcome = Outcome.BAD if isinstance(refusal, ArgumentError) else Outcome.FAIL
        self._finish(rule, outcome, mark)

    def _finish(self, rule: Rule, outcome: Outcome, mark: int) -> None:
        if self.state is State.CLOSED:
            return
        if outcome is Outcome.BAD:
            # A malformed command changes nothing, not even the state (QUIT x stays in
            # TRANSACTION instead of entering UPDATE).
            self._enter(self._state_before)
            self._bad(mark)
        elif outcome is Outcome.OK and rule.on_ok is not None:
            self._enter(rule.on_ok)
        elif outcome is Outcome.FAIL and rule.on_fail is not None:
            self._enter(rule.on_fail)
        elif rule.during is not None and self.state is rule.during:
            self._enter(self._state_before)  # no transition: leave the running state

    def _enter(self, state: State) -> None:
        self.state = state
        responses = state in READS_RESPONSES
        self._reader.limit = (
            self.settings.sasl_line_limit if responses else self.settings.line_limit
        )

    def _bad(self, mark: int) -> None:
        self._bad_commands += 1
        if self._bad_commands > self.settings.bad_command_limit:
            del self._out[mark:]
            self._challenge_spans = [span for span in self._challenge_spans if span[1] <= mark]
            self.err("Too many bad commands, closing connection")
            self.close("too many bad commands")

    # --- output -------------------------------------------------------------------------

    def _flush(self) -> Send:
        data = bytes(self._out)
        self._out.clear()
        self._unflushed = 0
        if self.transcript is not None:
            spans = self._challenge_spans
            self.transcript.said(hide_spans(data, spans) if spans else data)
            spans.clear()
        return Send(data)

    # --- greeting -----------------------------------------------------------------------

    def _make_challenge(self) -> str | None:
        if not self.settings.allow_apop:
            return None
        if not self.settings.policy.permits(Action.APOP, self.security).allowed:
            return None
        return f"<{self.connection.challenge_token}@{self.settings.servername}>"

    def _greet(self) -> None:
        settings = self.settings
        parts = ["server ready"]
        if settings.serverinfo == "on":
            parts.insert(0, f"{settings.servername} {settings.implementation}")
        elif settings.serverinfo == "min":
            parts.insert(0, settings.servername)
        if self.challenge:
            parts.append(self.challenge)
        self.ok(" ".join(parts))
