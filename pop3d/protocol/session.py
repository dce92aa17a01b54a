"""The POP3 session: bytes in, bytes and events out (RFC 1939, RFC 2449, RFC 3206).

Usage by a driver (compare h11's ``Connection``)::

    session = Session(settings, connection_info)
    while True:
        event = session.next_event()
        if event is NEED_DATA:   session.receive_data(await read())   # b"" never needed
        elif Send:               await write(event.data)
        elif Request:            session.resolve(await carry_out(event))
        elif Close:              break

Handlers that need the outside world are generators: they ``yield`` a :class:`Request` and
receive its result, so a PASS reads top to bottom (verify, pause on failure, open the
maildrop, answer) although the password check runs in a thread and the pause on a timer.
Only one request is outstanding at a time, and no input is parsed while it is, which is
what makes pipelining safe: answers always come back in command order.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections import deque
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeAlias

from pop3d.auth.identity import IdentityRules, canonical_user
from pop3d.protocol import commands
from pop3d.protocol.commands import ArgumentError, SyntaxProblem
from pop3d.protocol.events import (
    NEED_DATA,
    Close,
    CommitResult,
    CommitUpdate,
    Event,
    Failure,
    FailureKind,
    LoginFailed,
    LoginSucceeded,
    MaildropOpened,
    MeasureMessages,
    OpenMaildrop,
    Pause,
    ReleaseMaildrop,
    RetrieveMessage,
    Send,
    StartTLS,
    TLSStarted,
)
from pop3d.protocol.settings import ConnectionInfo, SessionSettings
from pop3d.protocol.states import KNOWN_COMMANDS, TABLE, Outcome, Rule, State
from pop3d.protocol.wire import OVERLONG, LineReader
from pop3d.requests import Request
from pop3d.sasl import registry
from pop3d.sasl.mechanism import Challenge, Context, MalformedResponse, Mechanism, Success
from pop3d.sasl.mechanism import Failure as SaslFailure
from pop3d.sasl.requests import (
    AuthResult,
    FetchSecrets,
    ResolveUser,
    VerifyApop,
    VerifyPassword,
)
from pop3d.security.policy import Action, Protection
from pop3d.security.secret import Secret

Task: TypeAlias = Generator[Request, Any, Outcome]
HandlerResult: TypeAlias = Outcome | Task

_FLUSH_AT = 64 * 1024
_HEX = frozenset(b"0123456789abcdefABCDEF")


class _ReadLine(Request):
    """Internal: the next client line, for a SASL exchange. Never reaches the driver."""

    __slots__ = ()


class NoSuchMessage(Exception):
    """A refusal about one message; not a protocol error, so not a bad command."""


class _Maildrop:
    """The session's view of the maildrop snapshot taken at login. Messages delivered later
    are not in it, so they are neither shown nor deleted (RFC 1939 §8)."""

    __slots__ = ("deleted", "sizes", "uids")

    def __init__(self, opened: MaildropOpened) -> None:
        self.uids = opened.uids
        self.sizes: list[int | None] = list(opened.sizes)
        self.deleted = bytearray(len(opened.uids))

    def live(self) -> list[int]:
        return [index for index, gone in enumerate(self.deleted) if not gone]

    def index_of(self, number: int) -> int:
        """Message number (1-based, on the wire) -> index into the listing (0-based)."""
        if number < 1 or number > len(self.uids):
            raise NoSuchMessage("No such message")
        index = number - 1
        if self.deleted[index]:
            raise NoSuchMessage(f"Message {number} is deleted")
        return index


class Session:
    def __init__(self, settings: SessionSettings, connection: ConnectionInfo) -> None:
        self.settings = settings
        self.connection = connection
        self.state = State.AUTHORIZATION
        self.protection = Protection(external_ssf=connection.external_ssf)
        if connection.tls is not None:
            self._apply_tls(connection.tls)
        self.user: str | None = None  # USER argument, then the authenticated identity
        self._reader = LineReader(settings.line_limit)
        self._out = bytearray()
        self._notices: deque[LoginSucceeded | LoginFailed] = deque()
        self._task: Task | None = None
        self._task_rule: Rule | None = None
        self._request: Request | None = None
        self._request_sent = False
        self._bad_commands = 0
        self._close_reason = ""
        self._task_mark = 0
        self._state_before = self.state
        self._maildrop: _Maildrop | None = None
        self._login_time = 0.0
        self._last_login: float | None = None
        self.challenge = self._make_challenge()
        self._greet()

    # --- driver interface -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self._reader.feed(data)

    def next_event(self) -> Event:
        while True:
            if self._notices:
                return self._notices.popleft()
            if isinstance(self._request, _ReadLine):
                # The SASL exchange waits for the client's next response line; it is read
                # here, from our own buffer, like a command line.
                line = self._reader.next_line()
                if line is None:
                    return self._flush() if self._out else NEED_DATA
                self._request = None
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
                return Close(self._close_reason)
            if len(self._out) >= _FLUSH_AT:
                return self._flush()
            line = self._reader.next_line()
            if line is None:
                return self._flush() if self._out else NEED_DATA
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

    # --- dispatch -----------------------------------------------------------------------

    def _dispatch(self, line: bytes | object) -> None:
        mark = len(self._out)
        if line is OVERLONG:
            self._err(f"Line too long (limit {self._reader.limit} octets)")
            self._bad(mark)
            return
        assert isinstance(line, bytes)
        try:
            command = commands.parse_line(line)
        except SyntaxProblem as problem:
            self._err(str(problem))
            self._bad(mark)
            return
        rule = TABLE.get((self.state, command.keyword))
        if rule is None:
            if command.keyword in KNOWN_COMMANDS:
                self._err(f"{command.keyword} is not valid in the {self.state.rfc_name} state")
            else:
                self._err("Unrecognized command")
            self._bad(mark)
            return
        self._state_before = self.state
        if rule.during is not None:
            self.state = rule.during
        handler: Callable[[bytes], HandlerResult] = getattr(self, "_cmd_" + rule.handler)
        try:
            result = handler(command.argument)
        except (ArgumentError, NoSuchMessage) as refusal:
            self._refuse(refusal)
            outcome = Outcome.BAD if isinstance(refusal, ArgumentError) else Outcome.FAIL
            self._finish(rule, outcome, mark)
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
            request = task.send(value)
        except StopIteration as stop:
            self._task = self._task_rule = None
            self._finish(rule, stop.value, self._task_mark)
            return
        except (ArgumentError, NoSuchMessage) as refusal:
            self._task = self._task_rule = None
            self._refuse(refusal)
            outcome = Outcome.BAD if isinstance(refusal, ArgumentError) else Outcome.FAIL
            self._finish(rule, outcome, self._task_mark)
            return
        self._request = request
        self._request_sent = False

    def _finish(self, rule: Rule, outcome: Outcome, mark: int) -> None:
        if self.state is State.CLOSED:
            return
        if outcome is Outcome.BAD:
            # A malformed command changes nothing, not even the state (QUIT x stays in
            # TRANSACTION instead of entering UPDATE).
            self.state = self._state_before
            self._bad(mark)
        elif outcome is Outcome.OK and rule.on_ok is not None:
            self.state = rule.on_ok
        elif outcome is Outcome.FAIL and rule.on_fail is not None:
            self.state = rule.on_fail

    def _bad(self, mark: int) -> None:
        self._bad_commands += 1
        if self._bad_commands > self.settings.bad_command_limit:
            del self._out[mark:]
            self._err("Too many bad commands, closing connection")
            self._close("too many bad commands")

    def _refuse(self, refusal: Exception) -> None:
        self._err(str(refusal))

    # --- output -------------------------------------------------------------------------

    def _flush(self) -> Send:
        data = bytes(self._out)
        self._out.clear()
        return Send(data)

    def _ok(self, text: str = "") -> None:
        self._out += b"+OK " + text.encode() + b"\r\n" if text else b"+OK\r\n"

    def _err(self, text: str) -> None:
        self._out += b"-ERR " + text.encode() + b"\r\n"

    def _lines(self, lines: Iterable[str]) -> None:
        """A multi-line body; callers guarantee no line starts with "."."""
        out = self._out
        for line in lines:
            out += line.encode() + b"\r\n"
        out += b".\r\n"

    def _close(self, reason: str) -> None:
        self.state = State.CLOSED
        self._close_reason = reason

    # --- greeting and capabilities --------------------------------------------------------

    def _make_challenge(self) -> str | None:
        if not self.settings.allow_apop:
            return None
        if not self.settings.policy.permits(Action.APOP, self.protection).allowed:
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
        self._ok(" ".join(parts))

    def capabilities(self) -> list[str]:
        """RFC 2449 §6, in Cyrus's order, filtered by state and by the transport policy."""
        settings = self.settings
        policy = settings.policy
        unauthenticated = self.state in (State.AUTHORIZATION, State.AUTHORIZATION_USER)
        lines: list[str] = []
        mechanisms = self.sasl_offered() if unauthenticated else []
        if mechanisms:
            lines.append("SASL " + " ".join(mechanisms))
        if unauthenticated and policy.permits(Action.OFFER_STLS, self.protection).allowed:
            lines.append("STLS")
        expire = settings.expire_seconds
        lines.append("EXPIRE NEVER" if expire < 0 else f"EXPIRE {expire // 86400}")
        if settings.min_poll_seconds > 0:
            lines.append(f"LOGIN-DELAY {settings.min_poll_seconds}")
        lines += ["TOP", "UIDL", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE"]
        if unauthenticated and policy.permits(Action.PLAINTEXT_LOGIN, self.protection).allowed:
            lines.append("USER")
        if settings.serverinfo == "on" or not unauthenticated:
            lines.append(f"IMPLEMENTATION {settings.implementation}")
        return lines

    def sasl_offered(self) -> list[str]:
        return registry.offered(
            self.settings.sasl_mechanisms, self.settings.policy, self.protection
        )

    # --- AUTHORIZATION ------------------------------------------------------------------

    def _cmd_capa(self, argument: bytes) -> Outcome:
        commands.no_arguments(argument)
        self._ok("Capability list follows")
        self._lines(self.capabilities())
        return Outcome.OK

    def _cmd_quit_unauthenticated(self, argument: bytes) -> Outcome:
        commands.no_arguments(argument)
        self._ok("Bye")
        self._close("QUIT")
        return Outcome.OK

    def _cmd_stls(self, argument: bytes) -> HandlerResult:
        commands.no_arguments(argument)
        decision = self.settings.policy.permits(Action.OFFER_STLS, self.protection)
        if not decision.allowed:
            if self.protection.tls_active:
                self._err("TLS is already active")
            else:
                self._err(decision.reason)
            return Outcome.BAD
        return self._stls_task()

    def _stls_task(self) -> Task:
        self._ok("Begin TLS negotiation now")
        # CVE-2011-0411 class: anything pipelined after STLS was sent in clear and must not
        # be executed as if it had come through TLS.
        self._reader.discard_buffered()
        self.user = None
        started = yield StartTLS()
        assert isinstance(started, TLSStarted)
        self._apply_tls(started)
        return Outcome.OK

    def _apply_tls(self, started: TLSStarted) -> None:
        self.protection.tls_active = True
        self.protection.tls_ssf = started.ssf
        self.protection.tls_version = started.version
        self.protection.tls_cipher = started.cipher
        self.protection.client_identity = started.client_identity
        self.protection.channel_bindings = dict(started.channel_bindings)

    def _login_permitted(self, action: Action) -> bool:
        decision = self.settings.policy.permits(action, self.protection)
        if not decision.allowed:
            self._err(f"[AUTH] {decision.reason}")
        return decision.allowed

    def _cmd_user(self, argument: bytes) -> Outcome:
        if not argument:
            raise ArgumentError("Missing argument: user name")
        if not self._login_permitted(Action.PLAINTEXT_LOGIN):
            return Outcome.FAIL
        user = canonical_user(argument, self.settings.identity)
        if user is None:
            self._err("[AUTH] Invalid user name")
            return Outcome.FAIL
        self.user = user
        self._ok("User name accepted, password please")
        return Outcome.OK

    def _cmd_user_again(self, argument: bytes) -> Outcome:
        self._err("[AUTH] Must give PASS command")
        return Outcome.BAD

    def _cmd_pass_without_user(self, argument: bytes) -> Outcome:
        self._err("[AUTH] Must give USER command first")
        return Outcome.BAD

    def _cmd_pass_(self, argument: bytes) -> HandlerResult:
        if not argument:
            raise ArgumentError("Missing argument: password")
        user = self.user
        assert user is not None
        self.user = None
        return self._password_login(user, Secret(argument))

    def _password_login(self, user: str, password: Secret) -> Task:
        result = yield VerifyPassword(user, password)
        assert isinstance(result, AuthResult)
        if result.identity is None:
            yield from self._login_failed(user, "USER", result.reason)
            return Outcome.FAIL
        if self.settings.plaintext_login_pause > 0 and not self.protection.tls_active:
            yield Pause(self.settings.plaintext_login_pause)
        return (yield from self._open_maildrop(result.identity, "USER"))

    def _cmd_apop(self, argument: bytes) -> HandlerResult:
        if not self._login_permitted(Action.APOP):
            return Outcome.FAIL
        if self.challenge is None:
            self._err("APOP is not enabled on this server")
            return Outcome.BAD
        tokens = commands.split_arguments(argument)
        if len(tokens) != 2 or len(tokens[1]) != 32 or not _HEX.issuperset(tokens[1]):
            raise ArgumentError("Syntax: APOP name digest (32 hexadecimal digits)")
        user = canonical_user(tokens[0], self.settings.identity)
        return self._apop_login(user, tokens[0], tokens[1].decode("ascii").lower())

    def _apop_login(self, user: str | None, raw_user: bytes, digest: str) -> Task:
        if user is None:
            yield from self._login_failed(raw_user.decode("utf-8", "replace"), "APOP", "bad name")
            return Outcome.FAIL
        assert self.challenge is not None
        result = yield VerifyApop(user, self.challenge, digest)
        assert isinstance(result, AuthResult)
        if result.identity is None:
            yield from self._login_failed(user, "APOP", result.reason)
            return Outcome.FAIL
        return (yield from self._open_maildrop(result.identity, "APOP"))

    def _cmd_auth(self, argument: bytes) -> HandlerResult:
        offered = self.sasl_offered()
        if not argument.strip(b" "):
            # draft-myers discovery, as Cyrus answers it (also "AUTH " from Outlook)
            if not self._login_permitted(Action.SASL):
                return Outcome.FAIL
            self._ok("List of supported mechanisms follows")
            self._lines(offered)
            return Outcome.STAY
        if not self._login_permitted(Action.SASL):
            return Outcome.FAIL
        name_raw, _, initial_raw = argument.partition(b" ")
        name = name_raw.decode("ascii", "replace").upper()
        mechanism = registry.get(name)
        if mechanism is None or name not in offered:
            self._err(f"[AUTH] {name} is not an available mechanism; see CAPA")
            return Outcome.BAD
        initial: bytes | None = None
        if initial_raw:
            decoded = _base64(initial_raw)
            if decoded is None:
                self._err("[AUTH] Invalid base64 in the initial response")
                return Outcome.BAD
            initial = decoded
        return self._sasl_exchange(mechanism, initial)

    def _sasl_context(self) -> Context:
        offered = self.sasl_offered()
        return Context(
            servername=self.settings.servername,
            channel_bindings=dict(self.protection.channel_bindings),
            client_identity=self.protection.client_identity,
            plus_offered=any(name.endswith("-PLUS") for name in offered),
            oauth_scope=self.settings.oauth_scope,
        )

    def _sasl_exchange(self, mechanism: Mechanism, initial: bytes | None) -> Task:
        """RFC 5034 §4: challenges as "+ base64", a line starting with "*" cancels,
        additional data with success is one more challenge answered by an empty line."""
        method = f"AUTH {mechanism.name}"
        run = mechanism.run(self._sasl_context(), initial)
        reply: object = None
        normal_limit = self._reader.limit
        self._reader.limit = self.settings.sasl_line_limit
        try:
            while True:
                try:
                    step = run.send(reply)
                except StopIteration as stop:
                    result = stop.value
                    break
                except MalformedResponse as problem:
                    result = SaslFailure(f"malformed: {problem}")
                    break
                if not isinstance(step, Challenge):
                    # A credential request, for the driver. Names are canonicalised here,
                    # once for every mechanism, before they reach the credential store.
                    request = _canonical_request(step, self.settings.identity)
                    if request is None:
                        run.close()
                        result = SaslFailure("bad identity")
                        break
                    reply = yield request
                    continue
                response = yield from self._sasl_response(step.data)
                if response is None:
                    run.close()
                    return Outcome.FAIL
                reply = response
            if isinstance(result, Success) and result.final is not None:
                answer = yield from self._sasl_response(result.final)
                if answer is None:
                    return Outcome.FAIL
                if answer:  # RFC 5034 §4: additional data is answered by an empty line
                    result = SaslFailure("non-empty answer to additional data", result.authcid)
        finally:
            self._reader.limit = normal_limit
        if isinstance(result, SaslFailure):
            yield from self._login_failed(result.authcid or "-", method, result.reason)
            return Outcome.FAIL
        assert isinstance(result, Success)
        return (yield from self._sasl_authorize(result, method))

    def _sasl_response(self, challenge: bytes) -> Generator[Request, Any, bytes | None]:
        """Send one challenge and read the answer: the decoded bytes, or None when the
        exchange ended here (cancelled, too long, not base64), the -ERR already queued."""
        self._out += b"+ " + base64.b64encode(challenge) + b"\r\n"
        line = yield _ReadLine()
        if line is OVERLONG:
            self._err("[AUTH] Response too long")
            return None
        assert isinstance(line, bytes)
        if line.startswith(b"*"):
            self._err("[AUTH] Authentication cancelled")
            return None
        decoded = _base64(line) if line else b""
        if decoded is None:
            self._err("[AUTH] Invalid base64 in the response")
            return None
        return decoded

    def _sasl_authorize(self, result: Success, method: str) -> Task:
        authcid = canonical_user(result.authcid, self.settings.identity)
        authzid = canonical_user(result.authzid, self.settings.identity) if result.authzid else ""
        if authcid is None or authzid is None:
            yield from self._login_failed(result.authcid, method, "bad identity")
            return Outcome.FAIL
        target = authzid or authcid
        if target != authcid and authcid not in self.settings.proxy_authorizers:
            yield from self._login_failed(authcid, method, f"may not act as {target}")
            return Outcome.FAIL
        known = yield ResolveUser(target)
        assert isinstance(known, AuthResult)
        if known.identity is None:
            yield from self._login_failed(target, method, known.reason)
            return Outcome.FAIL
        return (yield from self._open_maildrop(known.identity, method))

    def _login_failed(self, user: str, method: str, reason: str) -> Task:
        self._notices.append(LoginFailed(user, method, reason))
        if self.settings.failed_login_pause > 0:
            yield Pause(self.settings.failed_login_pause)
        # One text for unknown user and wrong password, so the answer tells nothing.
        self._err("[AUTH] Invalid login")
        return Outcome.FAIL

    def _open_maildrop(self, identity: str, method: str) -> Task:
        opened = yield OpenMaildrop(identity)
        if isinstance(opened, Failure):
            self._notices.append(LoginFailed(identity, method, f"maildrop: {opened.detail}"))
            if opened.kind is FailureKind.IN_USE:
                self._err("[IN-USE] Maildrop is locked by another session")
            else:
                self._err(f"[{opened.kind.value}] Unable to open maildrop")
            return Outcome.FAIL
        assert isinstance(opened, MaildropOpened)
        min_poll = self.settings.min_poll_seconds
        last = opened.last_login
        if min_poll > 0 and last is not None and last + min_poll > opened.now:
            yield ReleaseMaildrop()
            self._notices.append(LoginFailed(identity, method, "login delay"))
            self._err(f"[LOGIN-DELAY] Logins must be at least {_duration(min_poll)} apart")
            return Outcome.FAIL
        self._maildrop = _Maildrop(opened)
        self._login_time = opened.now
        self._last_login = opened.last_login
        self.user = identity
        self._notices.append(LoginSucceeded(identity, method))
        self._ok(f"Mailbox locked and ready SESSIONID=<{self.connection.session_id}>")
        return Outcome.OK

    # --- TRANSACTION --------------------------------------------------------------------

    @property
    def _drop(self) -> _Maildrop:
        assert self._maildrop is not None
        return self._maildrop

    def _sizes(self, indexes: list[int]) -> Generator[Request, Any, list[int] | None]:
        """Sizes of ``indexes``, measuring those that had no hint. None if that failed."""
        sizes = self._drop.sizes
        missing = tuple(index for index in indexes if sizes[index] is None)
        if missing:
            measured = yield MeasureMessages(missing)
            if isinstance(measured, Failure):
                self._err("[SYS/TEMP] Unable to read the maildrop")
                return None
            for index, size in zip(missing, measured, strict=True):
                sizes[index] = size
        return [size for size in (sizes[index] for index in indexes) if size is not None]

    def _cmd_stat(self, argument: bytes) -> Task:
        commands.no_arguments(argument)
        sizes = yield from self._sizes(self._drop.live())
        if sizes is None:
            return Outcome.FAIL
        self._ok(f"{len(sizes)} {sum(sizes)}")
        return Outcome.OK

    def _cmd_list_(self, argument: bytes) -> Task:
        number = commands.optional_message_number(argument)
        if number is not None:
            index = self._drop.index_of(number)
            sizes = yield from self._sizes([index])
            if sizes is None:
                return Outcome.FAIL
            self._ok(f"{number} {sizes[0]}")
            return Outcome.OK
        live = self._drop.live()
        sizes = yield from self._sizes(live)
        if sizes is None:
            return Outcome.FAIL
        self._ok(f"{_count(len(live), 'message')} ({sum(sizes)} octets)")
        self._lines(f"{index + 1} {size}" for index, size in zip(live, sizes, strict=True))
        return Outcome.OK

    def _cmd_uidl(self, argument: bytes) -> Outcome:
        number = commands.optional_message_number(argument)
        uids = self._drop.uids
        if number is not None:
            self._ok(f"{number} {uids[self._drop.index_of(number)]}")
            return Outcome.OK
        self._ok("Unique-id listing follows")
        self._lines(f"{index + 1} {uids[index]}" for index in self._drop.live())
        return Outcome.OK

    def _cmd_retr(self, argument: bytes) -> Task:
        number = commands.message_number(argument)
        return self._retrieve(number, self._drop.index_of(number), None)

    def _cmd_top(self, argument: bytes) -> Task:
        number, lines = commands.top_arguments(argument)
        return self._retrieve(number, self._drop.index_of(number), lines)

    def _retrieve(self, number: int, index: int, body_lines: int | None) -> Task:
        what = "Message" if body_lines is None else "Top of message"
        result = yield RetrieveMessage(
            index, body_lines, f"+OK {what} follows\r\n".encode(), self._drop.sizes[index]
        )
        if isinstance(result, Failure):
            if result.kind is FailureKind.PERMANENT:
                self._err(f"Message {number} is no longer in the maildrop")
            else:
                self._err(f"[SYS/TEMP] Unable to read message {number}")
            return Outcome.FAIL
        return Outcome.OK

    def _cmd_dele(self, argument: bytes) -> Outcome:
        number = commands.message_number(argument)
        if self.settings.readonly:
            self._err("[SYS/PERM] This maildrop is read-only here")
            return Outcome.FAIL
        index = self._drop.index_of(number)
        self._drop.deleted[index] = 1
        self._ok(f"Message {number} deleted")
        return Outcome.OK

    def _cmd_rset(self, argument: bytes) -> Outcome:
        commands.no_arguments(argument)
        self._drop.deleted[:] = bytes(len(self._drop.deleted))
        self._ok()
        return Outcome.OK

    def _cmd_noop(self, argument: bytes) -> Outcome:
        commands.no_arguments(argument)
        self._ok()
        return Outcome.OK

    def _cmd_quit_update(self, argument: bytes) -> HandlerResult:
        commands.no_arguments(argument)
        return self._update()

    def _update(self) -> Task:
        deleted = tuple(index for index, gone in enumerate(self._drop.deleted) if gone)
        result = yield CommitUpdate(deleted, self._next_login_record())
        assert isinstance(result, CommitResult)
        if result.failed:
            self._err(
                f"[SYS/TEMP] {result.failed} of {len(deleted)} deleted messages "
                "could not be removed"
            )
            self._close("QUIT (update failed)")
            return Outcome.FAIL
        removed = _count(result.removed, "message")
        self._ok(f"Logging out, {removed} deleted" if deleted else "Logging out")
        self._close("QUIT")
        return Outcome.OK

    def _next_login_record(self) -> float | None:
        """Cyrus's pop3_last_login bookkeeping for LOGIN-DELAY, with ``poppollpadding``: a
        padding above 1 lets clients that poll rarely bank up to that many early logins."""
        min_poll = self.settings.min_poll_seconds
        if min_poll <= 0:
            return None
        padding = self.settings.poll_padding
        if padding <= 1:
            return self._login_time
        earliest = self._login_time - min_poll * padding
        if self._last_login is None or self._last_login < earliest:
            return earliest + min_poll
        return self._last_login + min_poll


def _canonical_request(request: Request, rules: IdentityRules) -> Request | None:
    """``request`` with its user name canonical; None if the name is not a valid one."""
    if isinstance(request, VerifyPassword | FetchSecrets | ResolveUser):
        user = canonical_user(request.user, rules)
        return None if user is None else dataclasses.replace(request, user=user)
    return request


def _base64(data: bytes) -> bytes | None:
    """Strict base64 ("=" alone is an empty initial response, RFC 5034 §4)."""
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _duration(seconds: int) -> str:
    if seconds % 60 == 0:
        return _count(seconds // 60, "minute")
    return _count(seconds, "second")
