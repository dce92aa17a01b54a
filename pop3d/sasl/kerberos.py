"""What GSSAPI, GS2-KRB5 and GSS-SPNEGO share: the acceptor, the principal -> user rule and
the channel bindings, over python-gssapi's *raw* API (MIT krb5 underneath).

Why the raw API: the high-level ``gssapi.SecurityContext.step`` swallows a failed accept
step when the library produced an error token (KRB-ERROR) and returns that token as if all
were well; the failure only surfaces on the next call. A server must see every failure at
the step that caused it, and ``gssapi.raw.accept_sec_context`` raises there.

Every call into the library here may block (keytab read, replay-cache write, config files):
the mechanisms run :meth:`Acceptor.step` through an ``Offload`` request, never inline. An
``Acceptor`` is used by one exchange at a time, so its calls never overlap.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import gssapi
import gssapi.raw as gr

from pop3d.kerberos import mit
from pop3d.kerberos.alarm import Alarm
from pop3d.kerberos.names import local_user
from pop3d.sasl.mechanism import Context

KRB5 = gssapi.MechType.kerberos  # 1.2.840.113554.1.2.2
SPNEGO = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")
# GSS_C_SEC_CONTEXT_SASL_SSF (MIT 1.15+): the SSF of the context's session key, the value
# Cyrus SASL reports for a confidentiality layer (256 for AES-256, 128 for AES-128).
_SASL_SSF = gssapi.OID.from_int_seq("1.2.840.113554.1.2.2.5.15")
K5_MIN_SSF = 56  # Cyrus's figure when the library cannot tell (single DES)

# The one TLS binding a plain GSSAPI exchange can carry (RFC 5929 §4 as RFC 5056 §2.1
# prefixes it: "tls-server-end-point:" + hash of our certificate). The acceptor takes a
# single binding and a failed attempt enters the replay cache, so we cannot try two:
# tls-server-end-point is what Active Directory and OpenLDAP send, and it is defined for
# TLS 1.3, where tls-unique is not.
GSSAPI_BINDING = "tls-server-end-point"

log = logging.getLogger("pop3d")
_KEYTAB_ALARM = Alarm(log)


class KerberosError(Exception):
    """The exchange cannot go on; the text is for the audit log only."""


class AcceptorUnavailable(KerberosError):
    """Our own credentials cannot be had (the keytab went missing, unreadable, corrupt, or
    without our key since the start-up check), or lack the key the client's ticket is
    sealed with: the server's fault, so no verdict on the client."""


def _gss_text(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]


def lacks_ticket_key(exc: gr.GSSError) -> bool:
    """The keytab holds the ticket's server but not the key it is sealed with (its kvno or
    enctype): MIT's KRB5KRB_AP_ERR_BADKEYVER. The krb5 mechanism's minor status is that
    code (python-gssapi gives it unsigned); through SPNEGO MIT's mechglue gives a number of
    its own instead, and the KRB-ERROR of the failure token is what tells it."""
    badkeyver = mit.KRB5KRB_AP_ERR_BADKEYVER
    if getattr(exc, "min_code", 0) in (badkeyver, badkeyver & 0xFFFFFFFF):
        return True
    token = getattr(exc, "token", None)
    relative = badkeyver - mit.ERROR_TABLE_BASE_KRB5
    return isinstance(token, bytes) and krb_error_code(token) == relative


def krb_error_code(token: bytes) -> int | None:
    """The error-code of the KRB-ERROR in an acceptor's failure token: the krb5
    mechanism's error token (RFC 4121 §4.1, TOK_ID 03 00), alone or as the responseToken
    of SPNEGO's negTokenResp (RFC 4178 §4.2.2). None when it holds none."""
    try:
        tag, body, _ = _der(token)
        if tag == 0xA1:  # negTokenResp
            _, response, _ = _der(body)
            inner = _tagged(response).get(2)
            if inner is None:
                return None
            _, token, _ = _der(inner)  # OCTET STRING
            tag, body, _ = _der(token)
        if tag != 0x60:  # [APPLICATION 0]: the mechanism's OID, then its token
            return None
        _, _mech, at = _der(body)
        if body[at : at + 2] != b"\x03\x00":
            return None
        tag, error, _ = _der(body, at + 2)
        if tag != 0x7E:  # KRB-ERROR, [APPLICATION 30]
            return None
        _, fields, _ = _der(error)
        code = _tagged(fields).get(6)
        if code is None:
            return None
        tag, value, _ = _der(code)
        return int.from_bytes(value, "big", signed=True) if tag == 0x02 and value else None
    except (IndexError, ValueError):
        return None


def _der(data: bytes, at: int = 0) -> tuple[int, bytes, int]:
    """(tag, contents, end) of the DER element at ``at``; IndexError or ValueError when
    there is none (single-octet tags: all the ones read here are)."""
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        size = length & 0x7F
        if not 1 <= size <= 3:
            raise ValueError("DER length")
        length = int.from_bytes(data[at : at + size], "big")
        at += size
    if at + length > len(data):
        raise ValueError("DER element past its end")
    return tag, data[at : at + length], at + length


def _tagged(sequence: bytes) -> dict[int, bytes]:
    """A SEQUENCE's context-tagged fields: [n] -> the element inside it."""
    fields: dict[int, bytes] = {}
    at = 0
    while at < len(sequence):
        tag, contents, at = _der(sequence, at)
        if tag & 0xE0 == 0xA0:
            fields[tag & 0x1F] = contents
    return fields


@dataclass(frozen=True, slots=True)
class Accepted:
    """One accept step's result."""

    token: bytes  # to send to the client (may be b"")
    complete: bool
    principal: str = ""  # the client's principal, once complete
    user: str | None = None  # the local user it maps to (pop3d.kerberos.names), if any
    flags: int = 0
    mech: gssapi.OID | None = None


class Acceptor:
    """One security context being accepted for ``<service>@<servername>``."""

    __slots__ = ("_bindings", "_context", "_creds", "_login_realms", "_mechs", "_name", "_store")

    def __init__(
        self,
        context: Context,
        bindings: gr.ChannelBindings | None = None,
        mechs: tuple[gssapi.OID, ...] = (KRB5,),
    ) -> None:
        self._name = f"{context.service}@{context.servername}"
        self._login_realms = context.login_realms
        self._store = {"keytab": context.keytab} if context.keytab else None
        self._bindings = bindings
        self._mechs = mechs
        self._creds: gr.Creds | None = None
        self._context: gr.SecurityContext | None = None

    @property
    def context(self) -> gr.SecurityContext:
        assert self._context is not None
        return self._context

    def step(self, token: bytes) -> Accepted:
        """Blocking. Raises ``KerberosError`` for anything the client or the keytab did
        wrong (python-gssapi raises GSSError subclasses, and ValueError/TypeError for some
        malformed input); ``AcceptorUnavailable`` when our own credentials cannot be had,
        before the client's token is looked at, or the keytab lacks its ticket's key."""
        if self._creds is None:
            try:
                self._creds = self._acquire()
            except (gr.GSSError, ValueError, TypeError) as exc:
                raise self._unavailable(f"acceptor credentials: {_gss_text(exc)}") from None
        try:
            result = gr.accept_sec_context(
                token,
                acceptor_creds=self._creds,
                context=self._context,
                channel_bindings=self._bindings,
            )
        except (gr.GSSError, ValueError, TypeError, OverflowError) as exc:
            if isinstance(exc, gr.GSSError) and lacks_ticket_key(exc):
                # A key changed at the KDC and not in the keytab (or dropped from it while
                # tickets for it live): the KDC issued this ticket, so no verdict on the
                # client (found probing: a key rotation had fail2ban ban every Kerberos
                # user). The kvno is in clear, so anyone can have this answer: it gives
                # nothing (SECURITY.md).
                raise self._unavailable(
                    f"keytab lacks the ticket's key: {_gss_text(exc)}"
                ) from None
            raise KerberosError(f"accept: {_gss_text(exc)}") from None
        self._context = result.context
        out = result.token or b""
        if result.more_steps:
            return Accepted(out, False)
        try:
            principal = gr.display_name(result.initiator_name).name.decode("utf-8")
            # Here, off the event loop: MIT's mapping reads krb5.conf.
            user = local_user(
                principal, mit.default_realm(), self._login_realms, mit.aname_to_localname
            )
        except (gr.GSSError, UnicodeDecodeError, mit.KerberosUnavailable) as exc:
            raise KerberosError(f"client name: {_gss_text(exc)}") from None
        return Accepted(out, True, principal, user, int(result.flags), result.mech)

    def _unavailable(self, reason: str) -> AcceptorUnavailable:
        # The operator's to mend (the record says only "unavailable", at WARNING); a line a
        # minute at most, as a client can name a key that never was (kerberos/alarm.py)
        _KEYTAB_ALARM("%s: cannot check Kerberos tickets: %s", self._name, reason)
        return AcceptorUnavailable(reason)

    def _acquire(self) -> gr.Creds:
        name = gr.import_name(self._name.encode("utf-8"), gr.NameType.hostbased_service)
        mechs = list(self._mechs)
        if self._store is not None:
            store: dict[bytes | str, bytes | str] = {
                key.encode(): value.encode() for key, value in self._store.items()
            }
            creds = gr.acquire_cred_from(store, name, mechs=mechs, usage="accept").creds
        else:
            creds = gr.acquire_cred(name, mechs=mechs, usage="accept").creds
        if SPNEGO in self._mechs:
            # Kerberos only inside SPNEGO: never NTLM, whatever /etc/gss/mech installs.
            gr.set_neg_mechs(creds, [KRB5])
        return creds

    def confidentiality_ssf(self) -> int:
        """The SSF a confidentiality layer on this context gives (Cyrus's figure)."""
        try:
            values = gr.inquire_sec_context_by_oid(self.context, _SASL_SSF)
        except gr.GSSError:
            return K5_MIN_SSF
        if len(values) != 1 or len(values[0]) != 4:
            return K5_MIN_SSF
        return int.from_bytes(values[0], "big") or K5_MIN_SSF


def gssapi_bindings(bindings: Mapping[str, bytes]) -> gr.ChannelBindings | None:
    """The binding a plain GSSAPI acceptor checks (see GSSAPI_BINDING), or None without TLS.
    A client that sends none still passes (MIT's rule); one that sends another fails."""
    data = bindings.get(GSSAPI_BINDING)
    if data is None:
        return None
    return gr.ChannelBindings(application_data=GSSAPI_BINDING.encode() + b":" + data)


def channel_bound(flags: int) -> bool:
    return bool(flags & gr.RequirementFlag.channel_bound)


# python-gssapi's stubs type the per-message calls with the high-level SecurityContext,
# though they take the raw one they are given here; these wrappers keep one typed door.
_raw: Any = cast(Any, gr)


def wrap(context: gr.SecurityContext, message: bytes, confidential: bool) -> bytes:
    """GSS_Wrap. Raises GSSError."""
    return bytes(_raw.wrap(context, message, confidential).message)


def unwrap(context: gr.SecurityContext, token: bytes | bytearray) -> tuple[bytes, bool]:
    """GSS_Unwrap -> (message, was it encrypted). Raises GSSError (and ValueError).

    MIT unwraps a CFX token in place (it un-rotates the buffer) and python-gssapi hands it
    the ``bytes`` object's own memory: without this copy the caller's "immutable" token
    comes back rearranged (found when a recorded exchange no longer replayed)."""
    result = _raw.unwrap(context, bytes(bytearray(token)))
    return bytes(result.message), bool(result.encrypted)


def wrap_size_limit(context: gr.SecurityContext, output: int, confidential: bool) -> int:
    """The most plaintext whose wrap token fits in ``output`` octets. Raises GSSError."""
    return int(_raw.wrap_size_limit(context, output, confidential))
