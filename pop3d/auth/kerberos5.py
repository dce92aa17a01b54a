"""Passwords checked against the KDC (``sasl_pwcheck_method: kerberos5``), for sites whose
passwords live only in Kerberos. USER/PASS, PLAIN and LOGIN reach it through the
authenticator's ``password_checker``, as they reach saslauthd.

A check is two steps, the ones MIT's ``krb5_verify_init_creds`` makes (and Cyrus
saslauthd's ``-a kerberos5`` with it):

1. **An initial ticket** for ``user@REALM`` with the password (an AS exchange). The KDC
   answers "wrong password", "unknown principal", "password expired" and so on; those are
   refusals.
2. **Verification with our own keytab.** A TGT proves nothing by itself: whoever answers
   on the KDC's address can hand out a TGT sealed with a key derived from any password it
   likes, the one the client just sent included. So the new TGT is used to get a service
   ticket for ``pop/<servername>`` (a GSS context is initiated to ``pop@<servername>``) and
   that ticket is accepted with the keytab. Only the real KDC knows our service key; a
   spoofed one cannot make a ticket that decrypts, and the login fails. A keytab we
   cannot use (gone, unreadable, corrupt, without our key) judges nothing: "unavailable".

Why pykrb5 (``krb5.get_init_creds_password``) for step 1 rather than gssapi's
``acquire_cred_with_password``: it answers with the Kerberos error code itself (so a wrong
password, an expired one and an unreachable KDC are told apart by number, not by the text
of a GSS minor status), it takes an explicit ``krb5_context`` made for the one call (no
library state shared between the threads that run checks), and its output goes to a
private ``MEMORY:`` cache we destroy afterwards: no environment cache is ever read or
written. Step 2 goes through GSSAPI, the same acceptor path as the GSSAPI mechanism
(:mod:`pop3d.sasl.kerberos`), over that memory cache.

**Unknown users.** The KDC refuses a principal it does not know in one round trip, at
once; a known one with a wrong password costs a string-to-key of the password (PBKDF2 for
the AES enctypes: most of the time of a check) and, in a realm that asks for
pre-authentication, a second round trip. So for an unknown principal the checker does that
work itself (:meth:`Kerberos5Checker._decoy`): the same string-to-key, through libkrb5, of
the password as sent, salted as the name would be, with the enctype and parameters the KDC
gives our own service principal (asking it is the second round trip); the answer's time
then does not say whether the user exists. Whether a realm asks for pre-authentication is
learnt from its known principals' wrong passwords (the KDC's error says), so a realm that
does not ask is sent no second request once that is seen.

**Time.** libkrb5 has no overall deadline for its KDC exchanges (MIT 1.20 keeps retrying for
about half a minute against a silent KDC), so each check runs in a daemon thread of its own
and the caller waits ``timeout`` seconds at most: past it the answer is "unavailable" (the
session answers ``-ERR [SYS/TEMP]``) and the thread finishes, or gives up, on its own. The
number of checks in flight is bounded (``max_pending``): once that many wait on a dead KDC,
further logins are answered "unavailable" at once instead of piling up threads. The driver
starts a check on its event loop (:meth:`Kerberos5Checker.start`), so the time and the
place among the pending checks count from the login's hand-over, and waits for it in a
thread of its pool, so other sessions are served meanwhile.

Every failure comes back as a :class:`Kerberos5Result`, never as an exception; the password
is never part of a result or of anything logged.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import gssapi.raw as gr
import krb5

from pop3d.sasl.kerberos import KRB5, lacks_ticket_key
from pop3d.security.secret import Secret

log = logging.getLogger("pop3d")

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_PENDING = 16
TICKET_LIFETIME = 300  # seconds: the TGT and service ticket are thrown away at once

_PRINCIPAL_UNKNOWN = -1765328378  # KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN
# A known principal's wrong password, by whether the KDC asked for pre-authentication first
# (an exchange of two requests) or sent a reply the password's key could not open (one).
_PREAUTH_ASKED = {-1765328360: True, -1765328353: False}
# What a decoy is shaped like when the KDC could not be asked: MIT's first default enctype,
# aes256-cts-hmac-sha1-96, with RFC 3962's default parameters (4096 iterations).
_DEFAULT_SHAPE: tuple[int, bytes | None] = (18, None)

# Kerberos error codes (krb5/krb5_err.h) that are the user's answer, not the KDC's trouble.
_REFUSALS = {
    _PRINCIPAL_UNKNOWN: "unknown principal",
    -1765328360: "wrong password",  # KRB5KDC_ERR_PREAUTH_FAILED
    -1765328353: "wrong password",  # KRB5KRB_AP_ERR_BAD_INTEGRITY (no preauth required)
    -1765328174: "wrong password",  # KRB5_PREAUTH_FAILED (the client side gave up)
    -1765328361: "password expired",  # KRB5KDC_ERR_KEY_EXP
    -1765328383: "principal expired",  # KRB5KDC_ERR_NAME_EXP
    -1765328363: "principal not yet valid",  # KRB5KDC_ERR_CLIENT_NOTYET
    -1765328366: "principal locked or disabled",  # KRB5KDC_ERR_CLIENT_REVOKED
    -1765328372: "refused by KDC policy",  # KRB5KDC_ERR_POLICY
}


@dataclass(frozen=True, slots=True)
class Kerberos5Result:
    """``ok``: the KDC accepted the password and its ticket verified with our keytab.
    ``unavailable``: there was no verdict (KDC unreachable or too slow, local trouble), as
    opposed to a refusal. ``reason`` is for the log and never holds the password."""

    ok: bool
    reason: str
    unavailable: bool = False


def _unavailable(why: str) -> Kerberos5Result:
    return Kerberos5Result(False, f"kerberos5 unavailable: {why}", unavailable=True)


def _refused(why: str) -> Kerberos5Result:
    return Kerberos5Result(False, why)


def _text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]


class _Unverified(Exception):
    """Step 2 failed: the ticket did not verify with our keytab."""


class _KdcGone(Exception):
    """Step 2 could not reach the KDC for the service ticket."""


class _NoVerdict(Exception):
    """Step 2 could not judge the ticket for a reason of our own (our keytab or our
    memory cache): the password may well be right."""


_KDC_UNREACH = -1765328228  # KRB5_KDC_UNREACH


def _unreachable(exc: gr.GSSError) -> bool:
    """The minor status is the krb5 error code (python-gssapi gives it unsigned)."""
    return getattr(exc, "min_code", 0) in (_KDC_UNREACH, _KDC_UNREACH & 0xFFFFFFFF)


class Kerberos5Checker:
    """A ``PasswordChecker`` asking the KDC. Thread-safe: every check makes its own
    ``krb5_context`` and memory cache.

    ``servername`` and ``service`` name the keytab principal tickets are verified with
    (``pop/<servername>``, the one :func:`pop3d.sasl.keytab.acceptor_keytab` checked at
    start-up). ``login_realms`` are ``loginrealms`` as configured (their spelling is the
    realm's: a client's ``alice@example.org`` is checked as ``alice@EXAMPLE.ORG`` when the
    list says ``EXAMPLE.ORG``)."""

    def __init__(
        self,
        servername: str,
        keytab: str,
        *,
        service: str = "pop",
        login_realms: tuple[str, ...] = (),
        timeout: float = DEFAULT_TIMEOUT,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self.servername = servername
        self.keytab = keytab
        self.service = service
        self.login_realms = {realm.lower(): realm for realm in login_realms}
        self.timeout = timeout
        self._slots = threading.BoundedSemaphore(max_pending)
        self._closed = False
        # Per realm, for the decoys: (enctype, s2kparams) of our service principal as the
        # KDC last gave them, and whether a known principal's wrong password last cost the
        # pre-authentication round trip (assumed until the KDC shows otherwise).
        self._shapes: dict[bytes, tuple[int, bytes | None]] = {}
        self._preauth: dict[bytes, bool] = {}

    def __repr__(self) -> str:
        return f"Kerberos5Checker({self.service}/{self.servername}, keytab={self.keytab!r})"

    def __call__(self, user: str, password: Secret, realm: str = "") -> Kerberos5Result:
        """``user``: the canonical user name; ``realm``: the realm the client named, when
        the identity rules dropped it as one of ``loginrealms`` ("" otherwise)."""
        started = self.start(user, password, realm)
        return started if isinstance(started, Kerberos5Result) else started()

    def start(
        self, user: str, password: Secret, realm: str = ""
    ) -> Kerberos5Result | Callable[[], Kerberos5Result]:
        """The check begun now, without blocking: its answer when that is known at once (a
        refusal before the KDC, or "unavailable" with ``max_pending`` checks waiting), else
        the blocking call that waits for it, until ``timeout`` from now at most. The time
        and the slot count from here, not from the wait: a caller whose pool queues the
        wait behind others' (the worker's checking threads) first waited there, then its
        whole timeout, and the slots never filled up, so the bound on pending checks never
        answered at once (found probing: 20 logins against a silent KDC, 6 s for some with
        a 3 s timeout, none answered at once)."""
        if not user or "@" in user:
            # A realm still in the name is one loginrealms does not list.
            return _refused("realm not in loginrealms" if user else "empty login")
        if not password:
            return _refused("empty password")
        if b"\0" in password.reveal():
            # libkrb5 takes the password as a C string: "wonderland\0anything" would be
            # checked as "wonderland". Refused before the KDC and before anything about the
            # user is known, so the answer cannot tell a real user from an unknown one.
            return _refused("password contains a NUL octet")
        if realm and realm.lower() not in self.login_realms:
            return _refused("realm not in loginrealms")
        if self._closed:
            return _unavailable("checker closed")
        if not self._slots.acquire(blocking=False):
            return _unavailable("too many checks waiting for the KDC")
        answer: list[Kerberos5Result] = []
        done = threading.Event()

        def run() -> None:
            try:
                answer.append(self._check(user, password, self.login_realms.get(realm.lower())))
            finally:
                self._slots.release()
                done.set()

        # A daemon thread, not a pool's: one stuck on a silent KDC must not hold up the
        # worker's exit (pools are joined at interpreter exit). max_pending bounds them.
        deadline = time.monotonic() + self.timeout
        try:
            threading.Thread(target=run, name="pop3d-kdc", daemon=True).start()
        except RuntimeError as exc:  # no thread to be had
            self._slots.release()
            return _unavailable(_text(exc))

        def wait() -> Kerberos5Result:
            if not done.wait(max(0.0, deadline - time.monotonic())) or not answer:
                return _unavailable(f"no answer within {self.timeout:g} s")
            return answer[0]

        return wait

    def close(self) -> None:
        """Further checks answer "unavailable"; checks under way finish on their own."""
        self._closed = True

    # --- in a thread of the checker's own --------------------------------------------

    def _check(self, user: str, password: Secret, realm: str | None) -> Kerberos5Result:
        try:
            return self._check_inner(user, password, realm)
        except Exception as exc:  # never a traceback from a login; the log says what
            log.exception("kerberos5: unexpected failure checking %s", user)
            return _unavailable(_text(exc))

    def _check_inner(self, user: str, password: Secret, realm: str | None) -> Kerberos5Result:
        try:
            context = krb5.init_context()
            realm_bytes = realm.encode("utf-8") if realm else krb5.get_default_realm(context)
            name = user.encode("utf-8")
            client = krb5.build_principal(context, realm_bytes, [name])
            principal = f"{user}@{realm_bytes.decode('utf-8', 'replace')}"
            cache = krb5.cc_new_unique(context, b"MEMORY")
        except (krb5.Krb5Error, UnicodeError) as exc:
            return _unavailable(f"Kerberos library: {_text(exc)}")
        try:
            try:
                options = krb5.get_init_creds_opt_alloc(context)
                krb5.get_init_creds_opt_set_tkt_life(options, TICKET_LIFETIME)
                krb5.get_init_creds_opt_set_forwardable(options, False)
                krb5.get_init_creds_opt_set_proxiable(options, False)
                krb5.get_init_creds_opt_set_out_ccache(context, options, cache)
                krb5.get_init_creds_password(context, client, options, password.reveal())
            except krb5.Krb5Error as exc:
                if exc.err_code == _PRINCIPAL_UNKNOWN:
                    self._decoy(context, realm_bytes, name, password)
                elif exc.err_code in _PREAUTH_ASKED:
                    self._preauth[realm_bytes] = _PREAUTH_ASKED[exc.err_code]
                refusal = _REFUSALS.get(exc.err_code)
                if refusal is not None:
                    return _refused(f"{principal}: {refusal}")
                return _unavailable(f"{principal}: {_text(exc)}")
            cache_name = b"MEMORY:" + krb5.cc_get_name(context, cache)
            try:
                self._verify(cache_name, principal)
            except _KdcGone as exc:
                return _unavailable(f"{principal}: service ticket: {exc}")
            except _NoVerdict as exc:
                return _unavailable(f"{principal}: {exc}")
            except _Unverified as exc:
                log.error(
                    "kerberos5: the KDC's ticket for %s did not verify with the keytab "
                    "(a spoofed KDC, or a keytab not from this realm's KDC): %s",
                    principal,
                    exc,
                )
                return _refused(f"{principal}: ticket not verified with the keytab: {exc}")
            return Kerberos5Result(True, f"{principal}: verified")
        finally:
            with contextlib.suppress(krb5.Krb5Error):
                krb5.cc_destroy(context, cache)

    def _decoy(self, context: krb5.Context, realm: bytes, name: bytes, password: Secret) -> None:
        """The work a wrong password of a known principal costs, for an unknown one: a
        string-to-key (the one libkrb5 runs in the exchange, salted the usual way, realm
        then name) and, where the realm asks for pre-authentication, a second request to
        the KDC: the one that learns the key shape from our service principal, a name we
        know it has. A shape learnt before serves where no second request is due, and
        the default one when the KDC cannot tell (that principal not in this realm)."""
        shape = self._shapes.get(realm)
        if shape is None or self._preauth.get(realm, True):
            reference = krb5.build_principal(
                context, realm, [self.service.encode("utf-8"), self.servername.encode("utf-8")]
            )
            try:
                info = krb5.get_etype_info(context, reference)
            except krb5.Krb5Error:
                pass
            else:
                if info.salt is not None:  # None: the KDC sent no etype-info
                    shape = self._shapes[realm] = (info.etype, info.s2kparams)
        enctype, params = shape or _DEFAULT_SHAPE
        krb5.c_string_to_key(context, enctype, password.reveal(), realm + name, params)

    def _verify(self, cache_name: bytes, principal: str) -> None:
        """Step 2: a service ticket for our keytab principal, got with the new TGT and
        accepted with the keytab. Raises ``_Unverified`` (a refusal), ``_KdcGone`` or
        ``_NoVerdict``."""
        target = gr.import_name(
            f"{self.service}@{self.servername}".encode(), gr.NameType.hostbased_service
        )
        try:
            acceptor = gr.acquire_cred_from(
                {b"keytab": self.keytab.encode()}, target, mechs=[KRB5], usage="accept"
            ).creds
        except gr.GSSError as exc:
            # Gone, unreadable, corrupt, or without pop/<servername> since the start-up
            # check: no ticket could verify, so no verdict on the password, as GSSAPI
            # answers for the same keytab (found probing: every user's right password was
            # a SASL(-13) that fail2ban counted). Unlike KPOP's, whose tickets may name any
            # host, our principal is fixed: no key for it is never the client's doing.
            raise _NoVerdict(f"keytab: {_text(exc)}") from None
        try:
            initiator = gr.acquire_cred_from(
                {b"ccache": cache_name},
                gr.import_name(principal.encode("utf-8"), gr.NameType.kerberos_principal),
                mechs=[KRB5],
                usage="initiate",
            ).creds
        except gr.GSSError as exc:  # the memory cache we wrote a moment ago
            raise _NoVerdict(f"credentials cache: {_text(exc)}") from None
        try:
            started = gr.init_sec_context(target, creds=initiator, mech=KRB5, flags=[])
        except gr.GSSError as exc:
            if _unreachable(exc):
                raise _KdcGone(_text(exc)) from None
            raise _Unverified(f"service ticket: {_text(exc)}") from None
        if not started.token:
            raise _Unverified("service ticket: no token")
        try:
            accepted = gr.accept_sec_context(started.token, acceptor_creds=acceptor)
        except gr.GSSError as exc:
            if lacks_ticket_key(exc):
                # A key changed at the KDC and not in the keytab: the KDC took the password,
                # and the keytab cannot say whether that was the real KDC (found probing: a
                # key rotation refused every right password). A spoofed KDC can choose the
                # kvno, but could as well not answer: no verdict either way.
                raise _NoVerdict(f"keytab lacks the ticket's key: {_text(exc)}") from None
            raise _Unverified(f"accept: {_text(exc)}") from None
        except (ValueError, TypeError) as exc:
            raise _Unverified(f"accept: {_text(exc)}") from None
        if accepted.more_steps:
            raise _Unverified("accept: more steps asked for")
        proven = gr.display_name(accepted.initiator_name).name.decode("utf-8", "replace")
        if proven != principal:
            raise _Unverified(f"accept: ticket is for {proven}")
