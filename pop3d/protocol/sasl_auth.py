"""AUTH (RFC 5034): the POP3 framing of a SASL exchange.

The mechanism runs through :func:`pop3d.sasl.exchange.run`; this module adds only what is
POP3's: challenges as "+ base64" lines, a response line starting with "*" cancels, strict
base64, additional data with success sent as one more challenge answered by an empty line,
authorization (``admins``/``proxyservers`` may act as another user), and a negotiated
security layer installed right after the "+OK".
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from pop3d.auth.identity import IdentityRules, canonical_user, login_realm, split_folder
from pop3d.protocol.authorization import (
    login_failed,
    login_permitted,
    login_unavailable,
    open_maildrop,
)
from pop3d.protocol.events import InstallLayer, LoginFailed
from pop3d.protocol.states import AWAIT_RESPONSE, AwaitResponse, HandlerResult, Outcome, Task
from pop3d.protocol.wire import OVERLONG, OVERLONG_REST
from pop3d.requests import Request
from pop3d.sasl import exchange, registry
from pop3d.sasl.mechanism import Challenge, Context, Flag, Mechanism, Success
from pop3d.sasl.mechanism import Failure as SaslFailure
from pop3d.sasl.requests import AuthResult, FetchSecrets, ResolveUser, VerifyPassword
from pop3d.security.policy import Action
from pop3d.security.value import LayerInfo

if TYPE_CHECKING:
    from pop3d.protocol.session import Session


def offered(session: Session) -> list[str]:
    return registry.offered(
        session.settings.sasl_mechanisms, session.settings.policy, session.security
    )


def auth(session: Session, argument: bytes) -> HandlerResult:
    available = offered(session)
    if not argument.strip(b" "):
        # draft-myers discovery, as Cyrus answers it (also "AUTH " from Outlook)
        if not login_permitted(session, Action.SASL):
            return Outcome.FAIL
        session.ok("List of supported mechanisms follows")
        session.lines(available)
        return Outcome.STAY
    name_raw, _, initial_raw = argument.partition(b" ")
    name = name_raw.decode("ascii", "replace").upper()
    mechanism = registry.get(name)
    # recorded under the mechanism's name only: a word that names none may be an initial
    # response sent without its mechanism (a secret)
    method = f"AUTH {name}" if mechanism is not None else "AUTH"
    if not login_permitted(session, Action.SASL, attempt=lambda: ("-", method)):
        return Outcome.BAD  # recorded: counted as _exchange's abandoned attempts are
    if mechanism is None or name not in available:
        # Echo the name only when it is a mechanism's, never client bytes at large
        # (control characters, kilobytes: found by fuzz/), nor a name-shaped word that may
        # be an initial response sent without its mechanism: the answer goes to the
        # telemetry log too.
        shown = name if mechanism is not None else "That"
        session.err(f"[AUTH] {shown} is not an available mechanism; see CAPA")
        return Outcome.BAD
    initial: bytes | None = None
    if initial_raw:
        decoded = _base64(initial_raw)
        if decoded is None:
            session.err("[AUTH] Invalid base64 in the initial response")
            return Outcome.BAD
        initial = decoded
    return _exchange(session, mechanism, initial, available)


def context_for(session: Session, available: list[str]) -> Context:
    """What the mechanism may know, all of it read from the session's one security value
    and the policy's decisions on it."""
    security = session.security
    layers = session.settings.policy.layer_range(security)
    return Context(
        servername=session.settings.servername,
        server_aliases=session.settings.server_aliases,
        local_address=session.connection.local_address,
        channel_bindings=security.channel_bindings,
        client_identity=security.client_identity,
        plus_offered=any(name.endswith("-PLUS") for name in available),
        oauth_scope=session.settings.oauth_scope,
        ssf=security.ssf,
        min_ssf=layers.low,
        max_ssf=layers.high,
        max_buffer=session.settings.sasl_max_buffer,
        keytab=session.settings.keytab,
        login_realms=tuple(sorted(session.settings.identity.loginrealms)),
        require_channel_binding=session.settings.require_channel_binding,
    )


def _exchange(
    session: Session, mechanism: Mechanism, initial: bytes | None, available: list[str]
) -> Task:
    method = f"AUTH {mechanism.name}"
    rules = session.settings.identity
    # popsubfolders: mechanisms answer with the canonical user, so the folder a credential
    # request named ("alice+work" in PLAIN's authcid) is kept here
    folders: list[str] = []
    steps = exchange.run(
        mechanism,
        context_for(session, available),
        initial,
        canonical=lambda request: _canonical_request(request, rules, folders),
    )
    reply: object = None
    # What a password check (PLAIN, LOGIN) answered: a user the authenticator vouched for
    # (so no second look-up below), or no verdict at all (-ERR [SYS/TEMP]).
    password_checked: str | None = None
    unavailable = ""
    named = ""  # the user the exchange has asked about so far (SCRAM's n=, PLAIN's authcid)
    while True:
        try:
            step = steps.send(reply)
        except StopIteration as stop:
            result = stop.value
            break
        if isinstance(step, Challenge):
            response = yield from _response(session, step.data)
            if isinstance(response, _Ended) and step.proven:
                steps.close()
                # The realm proved the user before this challenge (GSSAPI's layer offer;
                # found probing: it was "GSSAPI (-) [cancelled] result=<abandoned>").
                user = _logged_name(step.proven, rules)
                return _ended_after_proof(session, user, method, response, step.principal)
            if isinstance(response, _Ended):
                steps.close()
                # No verdict, yet an attempt: a SCRAM client that had the salt and the
                # iterations of a name, then cancelled, left no record (found probing).
                name = _logged_name(named, rules)
                session.notice(LoginFailed(name, method, response.how, abandoned=True))
                # Counted as a bad command: without a pause or a count, '*' after AUTH made
                # a record every few octets, thousands a second (found probing), enough to
                # trip a syslog rate limit that then dropped the client's own badlogins
                return Outcome.BAD
            reply = response
        else:
            named = str(getattr(step, "user", "") or named)
            reply = yield step
            if isinstance(step, VerifyPassword) and isinstance(reply, AuthResult):
                password_checked = reply.identity
                unavailable = reply.reason if reply.temporary else ""
    if isinstance(result, SaslFailure) and unavailable:
        name = _logged_name(result.authcid, rules)
        return (yield from login_unavailable(session, name, method, unavailable))
    if isinstance(result, SaslFailure) and result.temporary:  # the server's keytab failed
        name = _logged_name(result.authcid, rules)
        # Paused like a refused ticket: a ticket's kvno is in clear, so any client can have
        # this answer (and its error line) at will, without the pause as fast as it sends.
        return (
            yield from login_unavailable(
                session, name, method, result.reason, "the credentials", pause=True
            )
        )
    if isinstance(result, SaslFailure):
        name = _logged_name(result.authcid, rules)
        return (
            yield from login_failed(
                session, name, method, result.reason, authenticated=result.authenticated
            )
        )
    assert isinstance(result, Success)
    before = session.security
    if result.layer is not None:
        # Recorded now so the audit line of this login names the layer; undone below if
        # the login fails after all (RFC 4422 §3.7: a layer only follows a success).
        session.security = before.with_layer(LayerInfo(mechanism.name, result.layer.ssf))
    outcome = yield from _authorize_then_finish(
        session,
        result,
        mechanism,
        method,
        password_checked,
        requested_folder=folders[-1] if folders else None,
    )
    if outcome is not Outcome.OK:
        session.security = before
    elif result.layer is not None:
        # The +OK is queued and goes out in clear before the request reaches the driver.
        yield InstallLayer(result.layer, session.take_trailing_data())
    return outcome


def _authorize_then_finish(
    session: Session,
    result: Success,
    mechanism: Mechanism,
    method: str,
    password_checked: str | None,
    *,
    requested_folder: str | None,
) -> Task:
    """Authorization is decided before the additional data with success (SCRAM's ``v=``,
    DIGEST-MD5's ``rspauth``, a final GSS token) goes out: that data tells the client its
    login worked (RFC 5802 §5), so a refused authorization identity must end the exchange
    without it, as libsasl does (found probing: alice asking for bob got v=, and -ERR only
    after answering it)."""
    granted = yield from _authorize(
        session, result, mechanism, method, password_checked, requested_folder=requested_folder
    )
    if isinstance(granted, Outcome):
        return granted
    if result.final is not None:
        answer = yield from _response(session, result.final)
        if isinstance(answer, _Ended):
            # Only wrong guesses were logged, so a client that cancelled here, holding
            # the proof its guess was right, left no trace of it (found probing).
            return _ended_after_proof(session, granted.user, method, answer, granted.acting)
        if answer:  # RFC 5034 §4: additional data is answered by an empty line
            # Refused, but the credentials were proven: not a failed password fail2ban
            # counts (found probing)
            reason = "non-empty answer to additional data"
            return (
                yield from login_failed(
                    session,
                    granted.user,
                    method,
                    reason,
                    authenticated=True,
                    authenticated_as=granted.acting,
                )
            )
    return (yield from open_maildrop(session, granted.user, method, granted.folder, granted.acting))


@dataclasses.dataclass(frozen=True, slots=True)
class _Ended:
    """The client ended the exchange at a challenge (its -ERR is queued)."""

    how: str  # for the audit trail


def _ended_after_proof(
    session: Session, user: str, method: str, ended: _Ended, acting: str
) -> Outcome:
    """The client ended the exchange once its credentials were proven (after SCRAM's v=,
    DIGEST-MD5's rspauth, GSSAPI's layer offer): a refusal under the user they proved, not
    an attempt by no one, nor a guessed password."""
    reason = f"{ended.how} after the credentials were proven"
    session.notice(LoginFailed(user, method, reason, authenticated=True, authenticated_as=acting))
    return Outcome.FAIL


def _response(session: Session, challenge: bytes) -> Generator[Any, Any, bytes | _Ended]:
    """Send one challenge and read the answer: the decoded bytes, or how the exchange
    ended here."""
    session.continuation(base64.b64encode(challenge))
    line = yield AWAIT_RESPONSE
    if line is OVERLONG or line is OVERLONG_REST:
        session.err("[AUTH] Response too long")
        return _Ended("response too long")
    assert isinstance(line, bytes)
    if line.startswith(b"*"):
        session.err("[AUTH] Authentication cancelled")
        return _Ended("cancelled")
    decoded = _base64(line) if line else b""
    if decoded is None:
        session.err("[AUTH] Invalid base64 in the response")
        return _Ended("response not base64")
    return decoded


def _logged_name(raw: str, rules: IdentityRules) -> str:
    """The name a failed exchange is logged under: the canonical one when the client's
    text names a user at all, as USER's failures are, so that "DEMO" and "demo" count as
    one user wherever failures are counted; the client's text otherwise."""
    if not raw:
        return "-"
    split = split_folder(raw, rules)
    return (None if split is None else canonical_user(split[0], rules)) or raw


@dataclasses.dataclass(frozen=True, slots=True)
class _Granted:
    """Whom proven credentials may log in as: the maildrop's user and folder, and who
    authenticated where ``user`` alone does not say it (for the audit trail)."""

    user: str
    folder: str | None
    acting: str


def _authorize(
    session: Session,
    result: Success,
    mechanism: Mechanism,
    method: str,
    password_checked: str | None = None,
    *,
    requested_folder: str | None = None,
) -> Generator[Request | AwaitResponse, Any, _Granted | Outcome]:
    """The grant, or the Outcome of a refusal already answered."""
    rules = session.settings.identity
    # popsubfolders: "user+folder" in either identity (the authzid's folder first), as
    # Cyrus's popd_canon_user strips and keeps it from both
    as_cid = split_folder(result.authcid, rules)
    if mechanism.flags & Flag.KERBEROS and as_cid is not None and as_cid != (result.authcid, None):
        # popsubfolders: a folder comes from the authzid, never from the name the realm
        # vouched for: principal alice+@REALM (or alice+work@REALM) is not alice.
        reason = "principal names a folder"
        return (yield from login_failed(session, result.authcid, method, reason))
    as_zid = split_folder(result.authzid, rules) if result.authzid else ("", None)
    authcid = None if as_cid is None else canonical_user(as_cid[0], rules)
    authzid = None if as_zid is None else canonical_user(as_zid[0], rules) if as_zid[0] else ""
    if as_cid is None or as_zid is None or authcid is None or authzid is None:
        # (Credentials the mechanism accepted: what fails is the name they are used
        # under, so the audit trail does not count a guessed password, as Cyrus logs
        # SASL(-14), an authorization failure, not SASL(-13).)
        return (
            yield from login_failed(
                session, result.authcid, method, "bad identity", authenticated=True
            )
        )
    folder = as_zid[1] or as_cid[1] or requested_folder
    target = authzid or authcid
    if target != authcid and authcid not in session.settings.proxy_authorizers:
        return (
            yield from login_failed(
                session, authcid, method, f"may not act as {target}", authenticated=True
            )
        )
    # The audit trail names who authenticated whenever the user alone does not say it.
    acting = result.principal or (authcid if target != authcid else "")
    if target == authcid and mechanism.flags & Flag.KERBEROS:
        # The realm vouched for this user (the principal mapped to a local name under the
        # site's rules): Kerberos users live in the KDC, not in our credential file.
        return _Granted(target, folder, acting)
    if target == authcid == password_checked:
        # The authenticator checked this user's password a moment ago (with an external
        # checker the user may live only in saslauthd's backend or the KDC): as for
        # USER/PASS, no second look-up in the credential file.
        return _Granted(target, folder, acting)
    known = yield ResolveUser(target)
    assert isinstance(known, AuthResult)
    if known.identity is None and target != authcid:
        # An admin's proven credentials asking for a user that does not exist: refused to
        # the admin, logged as a refusal, not as a guessed password under the name asked
        # for (found probing); the client's answer is every failure's.
        reason = f"may not act as {target}: {known.reason}"
        return (yield from login_failed(session, authcid, method, reason, authenticated=True))
    if known.identity is None:
        # A verified client certificate (EXTERNAL) proved who the client is, and the name
        # it carries has no user here: refused, not a guessed password fail2ban counts
        # (found probing); the client's answer is every failure's.
        proven = bool(mechanism.flags & Flag.TRANSPORT_IDENTITY)
        return (
            yield from login_failed(session, target, method, known.reason, authenticated=proven)
        )
    return _Granted(known.identity, folder, acting)


def _canonical_request(
    request: Request, rules: IdentityRules, folders: list[str] | None = None
) -> Request | None:
    """``request`` with its user name canonical; None if the name is not a valid one. A
    popsubfolders folder in the name is taken off and appended to ``folders``."""
    if not isinstance(request, VerifyPassword | FetchSecrets | ResolveUser):
        return request
    split = split_folder(request.user, rules)  # the credentials are the user's, any folder
    name = None if split is None else canonical_user(split[0], rules)
    if split is None or name is None:
        return None
    if split[1] is not None and folders is not None:
        folders.append(split[1])
    if isinstance(request, VerifyPassword):
        return dataclasses.replace(request, user=name, realm=login_realm(split[0], rules))
    return dataclasses.replace(request, user=name)


def _base64(data: bytes) -> bytes | None:
    """Strict base64: the alphabet, whole groups of four, no padding beyond the last group
    and no stray bits in it (the one canonical spelling, RFC 4648 §3.5, as Cyrus's
    sasl_decode64 demands). "=" alone is an empty response: RFC 5034 §4 defines it for the
    initial response; as an answer to a challenge it is taken the same way, since it can
    mean nothing else there."""
    if data == b"=":
        return b""
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if base64.b64encode(decoded) == data else None
