"""AUTHORIZATION state handlers: CAPA, QUIT, STLS, USER/PASS, APOP, and the login steps
every method shares (a failed login, opening the maildrop, LOGIN-DELAY). AUTH is in
:mod:`.sasl_auth`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pop3d.auth.identity import canonical_user, login_realm, split_folder
from pop3d.protocol import capabilities, commands, login_delay
from pop3d.protocol.commands import ArgumentError
from pop3d.protocol.events import (
    ClaimLogin,
    FailureKind,
    LoginFailed,
    LoginLimited,
    LoginSucceeded,
    MaildropOpened,
    OpenMaildrop,
    Pause,
    ReleaseMaildrop,
    StartTLS,
    StorageFailure,
)
from pop3d.protocol.states import HandlerResult, Outcome, Task
from pop3d.sasl.requests import AuthResult, ResolveUser, VerifyApop, VerifyPassword
from pop3d.security.policy import Action
from pop3d.security.secret import Secret
from pop3d.security.value import TLSInfo

if TYPE_CHECKING:
    from collections.abc import Callable

    from pop3d.protocol.session import Session

_HEX = frozenset(b"0123456789abcdefABCDEF")


def capa(session: Session, argument: bytes) -> Outcome:
    commands.no_arguments(argument)
    session.ok("Capability list follows")
    session.lines(capabilities.lines(session))
    return Outcome.OK


def quit_unauthenticated(session: Session, argument: bytes) -> Outcome:
    commands.no_arguments(argument)
    session.ok("Bye")
    session.close("QUIT", client_asked=True)
    return Outcome.OK


def stls(session: Session, argument: bytes) -> HandlerResult:
    commands.no_arguments(argument)
    decision = session.settings.policy.permits(Action.OFFER_STLS, session.security)
    if not decision.allowed:
        session.err(decision.reason)
        return Outcome.BAD
    return _start_tls(session)


def _start_tls(session: Session) -> Task:
    session.ok("Begin TLS negotiation now")
    # CVE-2011-0411 class: anything pipelined after STLS was sent in clear and must not
    # be executed as if it had come through TLS: the trailing data is dropped.
    session.take_trailing_data()
    session.user = session.folder = None
    started = yield StartTLS()
    assert isinstance(started, TLSInfo)
    session.security = session.security.with_tls(started)
    return Outcome.OK


def login_permitted(
    session: Session, action: Action, attempt: Callable[[], tuple[str, str]] | None = None
) -> bool:
    """The policy's word on ``action`` here, its reason the -ERR. ``attempt``: the (user,
    method) of a login the refusal ends, recorded without a verdict (found probing: USER,
    AUTH and APOP refused on a clear connection left no record, though the client's
    credentials may have crossed it already, pipelined behind); asked only on a refusal,
    so a permitted USER does not canonicalise its name twice."""
    decision = session.settings.policy.permits(action, session.security)
    if not decision.allowed:
        if attempt is not None:
            name, method = attempt()
            session.notice(LoginFailed(name, method, decision.reason, abandoned=True))
        session.err(f"[AUTH] {decision.reason}")
    return decision.allowed


def _named(session: Session, raw: bytes, method: str = "USER") -> tuple[str, str]:
    """(the user a refused attempt is recorded under, ``method``): the canonical name when
    ``raw`` is one, the client's text otherwise (escaped by the audit trail), as USER's
    own failures are logged."""
    rules = session.settings.identity
    split = split_folder(raw, rules)
    name = None if split is None else canonical_user(split[0], rules)
    return (name or raw.decode("utf-8", "replace") or "-", method)


def _apop_named(session: Session, argument: bytes) -> tuple[str, str]:
    try:  # the name a refusal is recorded under; the syntax is checked after the policy
        first = (commands.split_arguments(argument) or [b""])[0]
    except ArgumentError:
        first = b""
    return _named(session, first, "APOP")


def user(session: Session, argument: bytes) -> Outcome:
    if not argument:
        raise ArgumentError("Missing argument: user name")
    if not login_permitted(
        session, Action.PLAINTEXT_LOGIN, attempt=lambda: _named(session, argument)
    ):
        return Outcome.BAD  # recorded: counted, as an abandoned AUTH is
    rules = session.settings.identity
    split = split_folder(argument, rules)
    name = None if split is None else canonical_user(split[0], rules)
    if split is None or name is None:
        # Cyrus: badlogin: <host> plaintext (<name>) invalid user. The name is the
        # client's bytes as sent; the audit trail escapes it.
        session.notice(LoginFailed(argument.decode("utf-8", "replace"), "USER", "invalid user"))
        session.err("[AUTH] Invalid user name")
        return Outcome.FAIL
    session.user = name
    session.folder = split[1]
    session.user_realm = login_realm(split[0], rules)
    session.ok("User name accepted, password please")
    return Outcome.OK


def user_again(session: Session, argument: bytes) -> Outcome:
    session.err("[AUTH] Must give PASS command")
    return Outcome.BAD


def pass_without_user(session: Session, argument: bytes) -> Outcome:
    session.err("[AUTH] Must give USER command first")
    return Outcome.BAD


def pass_(session: Session, argument: bytes) -> HandlerResult:
    if not argument:
        raise ArgumentError("Missing argument: password")
    name, folder = session.user, session.folder
    assert name is not None
    session.user = session.folder = None
    return _password_login(session, name, Secret(argument), session.user_realm, folder)


def _password_login(
    session: Session, name: str, password: Secret, realm: str, folder: str | None
) -> Task:
    result = yield VerifyPassword(name, password, realm)
    assert isinstance(result, AuthResult)
    if result.temporary:
        return (yield from login_unavailable(session, name, "USER", result.reason))
    if result.identity is None:
        yield from login_failed(session, name, "USER", result.reason)
        return Outcome.FAIL
    settings = session.settings
    if settings.plaintext_login_pause > 0 and settings.policy.password_exposed(session.security):
        yield Pause(settings.plaintext_login_pause)
    return (yield from open_maildrop(session, result.identity, "USER", folder))


# --- KPOP (pop3d -k): the user was proven by the Kerberos handshake before the greeting ---


def kpop_user(session: Session, argument: bytes) -> Outcome:
    """USER on a KPOP connection: the ticket's user, and no one else (Cyrus: ``USER`` must
    be the ticket's name; Heimdal's popper: ``krb5_kuserok``).

    Compared exactly, as Cyrus's ``strcmp(USER, pname)``: the ticket's user must already be
    the canonical maildrop name. Kerberos names are case-sensitive, so ``ALICE@REALM`` is
    another principal than ``alice@REALM``, and ``username_tolower`` must not hand it
    alice's mail; such a principal cannot log in over KPOP at all."""
    if not argument:
        raise ArgumentError("Missing argument: user name")
    rules = session.settings.identity
    split = split_folder(argument, rules)
    name = None if split is None else canonical_user(split[0], rules)
    proven = session.connection.kpop_user
    if name is None or proven is None or name != proven:
        shown = name or argument.decode("utf-8", "replace")
        reason = f"ticket is for {session.connection.kpop_principal}"
        canonical = None if proven is None else canonical_user(proven, rules)
        if proven is not None and canonical != proven:
            reason += f", whose user {proven} is not the canonical name {canonical or '(none)'}"
        if proven is None:
            session.notice(LoginFailed(shown, "KPOP", reason))
        else:
            # The ticket proved who the client is; the name asked for is another's: filed
            # under the ticket's user, as an admin's may-not-act-as, and a refusal, not a
            # failed password fail2ban counts under the other user's name (found probing).
            reason = f"may not act as {shown}: {reason}"
            session.notice(LoginFailed(proven, "KPOP", reason, authenticated=True))
        session.err("[AUTH] The Kerberos ticket is not for this user")
        return Outcome.FAIL
    session.user = name
    session.folder = split[1] if split is not None else None
    session.ok("User name accepted, any password will do")
    return Outcome.OK


def kpop_pass(session: Session, argument: bytes) -> Task:
    """PASS after a KPOP USER: no password check (fetchmail sends ``PASS krb_ticket``); the
    user must still exist, as for every login proven by something other than a password."""
    name, folder = session.user, session.folder
    assert name is not None
    session.user = session.folder = None
    result = yield ResolveUser(name)
    assert isinstance(result, AuthResult)
    if result.identity is None:
        # The ticket proved this user: one without a maildrop here is refused, not a
        # failed login fail2ban counts (the client's answer is every failure's)
        return (yield from login_failed(session, name, "KPOP", result.reason, authenticated=True))
    return (yield from open_maildrop(session, result.identity, "KPOP", folder))


def apop(session: Session, argument: bytes) -> HandlerResult:
    if not login_permitted(session, Action.APOP, attempt=lambda: _apop_named(session, argument)):
        return Outcome.BAD  # recorded: counted, as an abandoned AUTH is
    if session.challenge is None:
        session.err("APOP is not enabled on this server")
        return Outcome.BAD
    tokens = commands.split_arguments(argument)
    if len(tokens) != 2 or len(tokens[1]) != 32 or not _HEX.issuperset(tokens[1]):
        raise ArgumentError("Syntax: APOP name digest (32 hexadecimal digits)")
    rules = session.settings.identity
    split = split_folder(tokens[0], rules)
    name = None if split is None else canonical_user(split[0], rules)
    folder = None if split is None else split[1]
    return _apop_login(session, name, tokens[0], tokens[1].decode("ascii").lower(), folder)


def _apop_login(
    session: Session, name: str | None, raw_name: bytes, digest: str, folder: str | None
) -> Task:
    if name is None:
        yield from login_failed(session, raw_name.decode("utf-8", "replace"), "APOP", "bad name")
        return Outcome.FAIL
    assert session.challenge is not None
    result = yield VerifyApop(name, session.challenge, digest)
    assert isinstance(result, AuthResult)
    if result.identity is None:
        yield from login_failed(session, name, "APOP", result.reason)
        return Outcome.FAIL
    return (yield from open_maildrop(session, result.identity, "APOP", folder))


def login_failed(
    session: Session,
    name: str,
    method: str,
    reason: str,
    *,
    authenticated: bool = False,
    authenticated_as: str = "",
) -> Task:
    """``authenticated``: the credentials proved who the client is, and what it asked for
    after them was refused (an authorization identity): not a guessed password."""
    session.notice(
        LoginFailed(
            name, method, reason, authenticated=authenticated, authenticated_as=authenticated_as
        )
    )
    if session.settings.failed_login_pause > 0:
        yield Pause(session.settings.failed_login_pause)
    # One text for unknown user and wrong password, so the answer tells nothing.
    session.err("[AUTH] Invalid login")
    return Outcome.FAIL


def login_unavailable(
    session: Session,
    name: str,
    method: str,
    reason: str,
    checked: str = "the password",
    *,
    pause: bool = False,
) -> Task:
    """The credentials could not be checked at all (the password checker's backend is down
    or too slow, the Kerberos keytab is unusable): no verdict on them, so no [AUTH], and no
    wrong-password line for fail2ban to blame the client with. No failed-login pause either,
    unless ``pause``: an answer a client can have at will must cost what a refusal costs."""
    session.notice(LoginFailed(name, method, reason, unavailable=True))
    if pause and session.settings.failed_login_pause > 0:
        yield Pause(session.settings.failed_login_pause)
    session.err(f"[SYS/TEMP] Unable to check {checked} now, try again later")
    return Outcome.FAIL


def open_maildrop(
    session: Session,
    identity: str,
    method: str,
    folder: str | None = None,
    authenticated_as: str = "",
) -> Task:
    """The login steps after the credentials: limits, the maildrop (``folder``: the
    popsubfolders folder of it), LOGIN-DELAY. Login limits count ``identity``, whatever the
    folder; each folder is a maildrop of its own, with its own lock."""
    limited = session.settings.limit_logins
    if limited:
        host = session.connection.peer_host or "-"
        refused = yield ClaimLogin(identity, host)
        if isinstance(refused, LoginLimited):
            session.notice(
                LoginFailed(
                    identity,
                    method,
                    f"maxlogins_per_{refused.what}: {refused.count} of {refused.limit}",
                    # good credentials over a limit: refused, never a failed password that
                    # fail2ban bans (a whole office behind one address; found probing)
                    authenticated=True,
                )
            )
            if refused.what == "user":
                # RFC 2449 IN-USE: the credentials were good, the user's sessions are in use
                session.err(
                    f"[IN-USE] Too many open sessions for {identity} "
                    f"({refused.count} of {refused.limit}), try again later"
                )
            else:
                # RFC 3206 SYS/TEMP: a limit of the server's, not about this user
                session.err(
                    f"[SYS/TEMP] Too many open sessions from {host} "
                    f"({refused.count} of {refused.limit}), try again later"
                )
            return Outcome.FAIL
    opened = yield OpenMaildrop(identity, folder)
    if isinstance(opened, StorageFailure):
        if limited:
            yield ReleaseMaildrop()  # gives back the claim
        session.notice(
            LoginFailed(identity, method, f"maildrop: {opened.detail}", authenticated=True)
        )
        if opened.no_such_folder:
            # Cyrus's text for a mailbox that does not exist (openinbox), code and all
            session.err("[SYS/TEMP] Unable to open maildrop: Mailbox does not exist")
        elif opened.kind is FailureKind.IN_USE:
            session.err("[IN-USE] Maildrop is locked by another session")
        else:
            session.err(f"[{opened.kind.value}] Unable to open maildrop")
        return Outcome.FAIL
    assert isinstance(opened, MaildropOpened)
    min_poll = session.settings.min_poll_seconds
    if login_delay.too_soon(min_poll, opened.last_login, opened.now):
        yield ReleaseMaildrop()
        session.notice(LoginFailed(identity, method, "login delay", authenticated=True))
        session.err(f"[LOGIN-DELAY] Logins must be at least {login_delay.describe(min_poll)} apart")
        return Outcome.FAIL
    session.enter_transaction(identity, opened)
    session.notice(LoginSucceeded(identity, method, folder, authenticated_as))
    session.ok(f"Mailbox locked and ready SESSIONID=<{session.connection.session_id}>")
    return Outcome.OK
