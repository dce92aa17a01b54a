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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import gssapi
import gssapi.raw as gr

from pop3d.kerberos import mit
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


class KerberosError(Exception):
    """The exchange cannot go on; the text is for the audit log only."""


class AcceptorUnavailable(KerberosError):
    """Our own credentials cannot be had (the keytab went missing, unreadable, corrupt, or
    without our key since the start-up check): the server's fault, whatever the client
    sent, so no verdict on the client."""


def _gss_text(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]


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
        before the client's token is looked at."""
        if self._creds is None:
            try:
                self._creds = self._acquire()
            except (gr.GSSError, ValueError, TypeError) as exc:
                raise AcceptorUnavailable(f"acceptor credentials: {_gss_text(exc)}") from None
        try:
            result = gr.accept_sec_context(
                token,
                acceptor_creds=self._creds,
                context=self._context,
                channel_bindings=self._bindings,
            )
        except (gr.GSSError, ValueError, TypeError, OverflowError) as exc:
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
