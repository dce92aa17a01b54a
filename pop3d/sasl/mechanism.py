"""The types every mechanism shares (modelled on Dovecot's src/lib-sasl: one mechanism per
file, flags, credential callbacks)."""

from __future__ import annotations

import base64
import enum
import secrets
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from pop3d.requests import Request
from pop3d.transport.layer import SecurityLayer


class Flag(enum.Flag):
    NONE = 0
    PLAINTEXT = enum.auto()  # the password itself crosses the wire: needs a protected link
    DICTIONARY = enum.auto()  # an eavesdropper can run an offline dictionary attack
    MUTUAL = enum.auto()  # the server proves it knows the secret too
    CHANNEL_BINDING = enum.auto()  # bound to the TLS channel (-PLUS): needs a binding
    LEGACY = enum.auto()  # offered only when sasl_mech_list names it
    TRANSPORT_IDENTITY = enum.auto()  # EXTERNAL: needs an identity from the transport
    TOKEN = enum.auto()  # OAuth bearer tokens: needs token validation configured
    SECURITY_LAYER = enum.auto()  # can negotiate an integrity/confidentiality layer (GSSAPI)
    KERBEROS = enum.auto()  # needs an acceptor keytab: enabled by default only with one


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes
    # A challenge sent once the client's credentials are proven but before the exchange's
    # Success (GSSAPI's mutual-authentication token and layer offer): the user they proved
    # and the principal, so a client that ends the exchange here is recorded as that
    # user's refused login, as one cancelling at SCRAM's v= is.
    proven: str = ""
    principal: str = ""


@dataclass(frozen=True, slots=True)
class Success:
    authcid: str  # authentication identity, canonical
    authzid: str = ""  # requested authorization identity; "" means the same
    final: bytes | None = None  # additional data with success (RFC 4422 §3.6)
    # A negotiated security layer (GSSAPI integrity/confidentiality): after the +OK every
    # byte both ways goes through it, and its SSF joins the connection's security value.
    layer: SecurityLayer | None = None
    # The Kerberos principal that authenticated, for the audit trail: several principals
    # may map to one user (krb5.conf's auth_to_local rules).
    principal: str = ""


@dataclass(frozen=True, slots=True)
class Failure:
    reason: str  # for the audit log only; the client always gets the same text
    authcid: str = ""  # who tried, when known (for the log)
    # No verdict: the server could not check the credentials (its keytab is unusable). The
    # session answers -ERR [SYS/TEMP], and the log does not blame the client.
    temporary: bool = False
    # The credentials were proven and what followed was refused (a security layer the
    # server will not run): logged as refused, not as a failed password fail2ban counts.
    authenticated: bool = False


Step: TypeAlias = Challenge | Request
Run: TypeAlias = Generator[Step, Any, Success | Failure]


class MalformedResponse(Exception):
    """A client message that does not parse: the exchange ends with a failure."""


@dataclass(frozen=True, slots=True)
class Context:
    """What a mechanism may know about the connection and the server."""

    servername: str
    service: str = "pop"  # the GSSAPI/DIGEST-MD5 service name (RFC 5034 §9 registers "pop")
    # Other names of this server (servername_aliases) and the address the client
    # connected to: DIGEST-MD5's digest-uri may name any of them (clients put there the
    # host they dialled, 127.0.0.1 included).
    server_aliases: tuple[str, ...] = ()
    local_address: str | None = None
    channel_bindings: Mapping[str, bytes] = field(default_factory=dict)
    client_identity: str | None = None  # verified TLS client certificate (EXTERNAL)
    plus_offered: bool = False  # the server advertised a -PLUS mechanism (SCRAM downgrade check)
    oauth_scope: str = ""  # the scope bearer tokens must carry, named in error replies
    # Security layers (RFC 4422 §3.7): ``ssf`` is what the connection has without one
    # (TLS or -p); [min_ssf, max_ssf] is what a layer's own SSF must lie within, already
    # net of the transport (security/policy.py ``layer_range``: libsasl's "min_ssf minus
    # external"). "No layer" is allowed only when min_ssf is 0.
    ssf: int = 0
    min_ssf: int = 0
    max_ssf: int = 256
    max_buffer: int = 65536  # the largest wrapped frame we accept (sent in our offer)
    # Kerberos: the acceptor keytab (None: KRB5_KTNAME or the default keytab) and the
    # realms whose principals map to local users besides the default realm (loginrealms).
    keytab: str | None = None
    login_realms: tuple[str, ...] = ()
    # GSSAPI/GSS-SPNEGO over TLS: refuse a client whose context is not bound to the TLS
    # channel (RFC 5929 tls-server-end-point), instead of only refusing a wrong binding.
    require_channel_binding: bool = False
    nonce: Callable[[], bytes] = lambda: base64.b64encode(secrets.token_bytes(18))


class Mechanism:
    """Subclasses set ``name`` and ``flags`` (on the class, or per instance for families
    such as SCRAM-*) and implement :meth:`run`. ``credentials`` names the stored schemes
    the mechanism needs, which tells ``pop3d-admin passwd`` what to write."""

    name: str
    flags: Flag = Flag.NONE
    credentials: tuple[str, ...] = ()

    def run(self, context: Context, initial: bytes | None) -> Run:
        """The exchange. ``initial`` is the initial response: None if the client sent
        none, b"" if it sent "=" (an empty one)."""
        raise NotImplementedError


def split_nul(message: bytes, parts: int) -> list[bytes]:
    """``message`` split at NUL into exactly ``parts`` fields, or MalformedResponse."""
    fields = message.split(b"\0")
    if len(fields) != parts:
        raise MalformedResponse(f"expected {parts} NUL-separated fields, got {len(fields)}")
    return fields


def utf8(data: bytes, what: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedResponse(f"{what} is not UTF-8") from None
    if "\0" in text:
        raise MalformedResponse(f"{what} contains NUL")
    return text
