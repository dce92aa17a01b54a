"""The credential requests SASL mechanisms make, and their results.

A mechanism never reads the credential file or calls a verifier: it yields one of these
requests, the driver hands it to the :class:`pop3d.auth.authenticator.Authenticator` (or
the token validator) off the event loop, and the result comes back into the exchange.
They live here, below the POP3 layer, so that mechanisms and the credential code need
nothing from ``pop3d.protocol`` (Dovecot's rule: mechanisms talk to the auth request API,
never to the protocol above them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pop3d.requests import Request
from pop3d.security.secret import Secret


@dataclass(frozen=True, slots=True)
class VerifyPassword(Request):
    """-> :class:`AuthResult`"""

    user: str
    password: Secret
    # The realm the client named when the identity rules dropped it as one of loginrealms
    # ("alice@EXAMPLE.ORG" -> user "alice", realm "EXAMPLE.ORG"); "" otherwise. Only a
    # checker that asks a realm (sasl_pwcheck_method: kerberos5) needs it.
    realm: str = ""


@dataclass(frozen=True, slots=True)
class VerifyApop(Request):
    """-> :class:`AuthResult`"""

    user: str
    challenge: str
    # 32 lower-case hex digits. Kept out of repr (a traceback, a log of the request): with
    # the challenge beside it, it is enough to guess the password offline.
    digest: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class FetchSecrets(Request):
    """Stored secrets of ``user`` for the given schemes (SCRAM keys, plaintext
    equivalents). -> :class:`Secrets`. For an unknown user the authenticator answers with
    plausible fake SCRAM parameters, so the exchange cannot tell the two apart."""

    user: str
    schemes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VerifyBearer(Request):
    """Validate an OAuth 2.0 bearer token (RFC 7628). -> :class:`BearerResult`"""

    token: Secret
    user_hint: str  # the authorization identity the client named, "" if none


@dataclass(frozen=True, slots=True)
class ResolveUser(Request):
    """Is ``user`` a known user? (SASL logins that prove an identity without a password
    check of ours: EXTERNAL, tokens, authorization identities.) -> :class:`AuthResult`"""

    user: str


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthResult:
    identity: str | None  # canonical user on success
    reason: str = ""  # for the audit log only; never sent to the client
    # No verdict: the password checker could not be asked (saslauthd down, KDC silent).
    # The session answers -ERR [SYS/TEMP] instead of [AUTH].
    temporary: bool = False

    @property
    def ok(self) -> bool:
        return self.identity is not None


@dataclass(frozen=True, slots=True)
class Secrets:
    user: str
    known: bool  # False: an unknown user, every value is a decoy
    values: dict[str, Secret]
    decoys: frozenset[str] = frozenset()  # schemes answered with decoys (nothing stored)

    def __repr__(self) -> str:
        return f"Secrets({self.user!r}, known={self.known}, schemes={sorted(self.values)})"


@dataclass(frozen=True, slots=True)
class BearerResult:
    identity: str | None  # the user the token names, canonical; None if rejected
    error: str = ""  # RFC 7628 §3.2.2 status for the failure JSON ("invalid_token", ...)
    reason: str = ""  # for the audit log only
