"""OAuth 2.0 bearer tokens (RFC 6750) checked locally as signed JWTs (RFC 7519, the
RFC 9068 access-token profile), for the OAUTHBEARER and XOAUTH2 mechanisms.

The issuer's public keys come from a local JWKS file (RFC 7517): nothing is fetched at run
time, and the ``jku``/``x5u``/``jwk`` header parameters of a token are never looked at.
Parsing and signature checks are PyJWT's; this module decides what may be used:

* algorithms come from an allow-list of public-key algorithms. "none" and every HS* are
  refused when the validator is built, so a configuration cannot turn them on; that closes
  the "alg":"none" hole and the RS256/HS256 key confusion (an HMAC "secret" that is the
  issuer's public key);
* the key is the JWKS entry whose ``kid`` matches the token's (a token may omit ``kid``
  only when the set has a single key), and the token's ``alg`` must be one that key can
  verify: an EC P-256 key verifies only ES256, an Ed25519 key only EdDSA, an RSA key the
  RS*/PS* family, and a JWK with an ``alg`` member only that algorithm;
* ``exp``, ``iss`` and ``aud`` are required; ``exp``, ``nbf`` and ``iat`` are checked with
  the configured clock skew;
* the user is the value of one claim (``oauth_user_claim``); with ``email``, a token that
  says ``email_verified: false`` is refused;
* with ``oauth_scope`` set, the ``scope`` (RFC 9068, space separated) or ``scp`` claim
  must contain it, else the error is ``insufficient_scope``.

A result carries the RFC 7628 §3.2.2 status for the client and a reason for the audit
log. Reasons are fixed texts plus short reprs of header or claim values; the token itself
never reaches a reason, a log or an exception message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from pop3d.config.imapd import Config
from pop3d.sasl.requests import BearerResult
from pop3d.security.secret import Secret

# RFC 6750 §3.1 error codes, which RFC 7628 §3.2.2 sends as "status".
INVALID_REQUEST = "invalid_request"
INVALID_TOKEN = "invalid_token"  # noqa: S105 (an RFC 6750 error code)
INSUFFICIENT_SCOPE = "insufficient_scope"

# Every algorithm PyJWT verifies with a public key; nothing symmetric.
_RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP = {"Ed25519": "EdDSA", "Ed448": "EdDSA"}
SUPPORTED_ALGORITHMS = (*_RSA, *_EC.values(), "EdDSA")
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
DEFAULT_CLOCK_SKEW = 60
DEFAULT_USER_CLAIM = "email"

MAX_TOKEN_LENGTH = 16384  # far above real access tokens (a few kB); refused unparsed
MAX_JWKS_BYTES = 1 << 20
MAX_CLOCK_SKEW = 3600
MAX_USER_LENGTH = 256
MIN_RSA_BITS = 2048
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 §3.3 scope-token
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class TokenSettingsError(ValueError):
    """The validator's settings or key set cannot work (the message says why)."""


def _forbidden(name: str) -> bool:
    return name.lower() == "none" or name.upper().startswith("HS")


def parse_algorithms(words: Iterable[str]) -> tuple[str, ...]:
    """The canonical names of ``words`` (matched case-insensitively), or
    TokenSettingsError for "none", any HS*, an unknown name or an empty list."""
    canonical = {name.upper(): name for name in SUPPORTED_ALGORITHMS}
    chosen: list[str] = []
    for word in words:
        if _forbidden(word):
            raise TokenSettingsError(
                f"algorithm {word!r} is never allowed: tokens must be signed with the "
                "issuer's private key (RS*, PS*, ES*, EdDSA)"
            )
        name = canonical.get(word.upper())
        if name is None:
            raise TokenSettingsError(
                f"unknown algorithm {word!r} (known: {' '.join(SUPPORTED_ALGORITHMS)})"
            )
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise TokenSettingsError("no algorithm allowed")
    return tuple(chosen)


@dataclass(frozen=True, slots=True)
class TokenResult:
    user: str | None  # the value of the user claim; None if the token was refused
    error: str = ""  # RFC 7628 §3.2.2 status ("invalid_token", "insufficient_scope")
    reason: str = ""  # for the audit log only

    @property
    def ok(self) -> bool:
        return self.user is not None


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    verifiers: Mapping[str, jwt.PyJWK]  # algorithm -> the key bound to it


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_jwks(path: str | Path) -> dict[str, Any]:
    """The JSON of a JWKS file, or TokenSettingsError saying what is wrong with it."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_JWKS_BYTES + 1)
    except OSError as exc:
        raise TokenSettingsError(f"cannot read JWKS file {path}: {exc.strerror}") from None
    if len(data) > MAX_JWKS_BYTES:
        raise TokenSettingsError(f"JWKS file {path} is larger than {MAX_JWKS_BYTES} bytes")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TokenSettingsError(f"JWKS file {path} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise TokenSettingsError(f"JWKS file {path} is not a JSON object")
    return document


def _candidates(jwk: Mapping[str, Any], label: str) -> tuple[str, ...] | str:
    """The algorithms this JWK can verify, or a string saying why it is skipped. Raises
    TokenSettingsError for keys that must not be in the file at all."""
    kty = jwk.get("kty")
    if kty == "oct":
        raise TokenSettingsError(
            f"JWKS key {label} is a symmetric (oct) key: only public keys can be used"
        )
    present = sorted(_PRIVATE_MEMBERS & set(jwk))
    if present:
        raise TokenSettingsError(
            f"JWKS key {label} holds private key material ({', '.join(present)}): "
            "the server needs only the issuer's public keys"
        )
    declared = jwk.get("alg")
    if isinstance(declared, str) and _forbidden(declared):
        raise TokenSettingsError(f"JWKS key {label} declares algorithm {declared!r}")
    use = jwk.get("use")
    if use is not None and use != "sig":
        return f"use {_short(use)}"
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return "key_ops without verify"
    if kty == "RSA":
        found: tuple[str, ...] = _RSA
    elif kty == "EC" and jwk.get("crv") in _EC:
        found = (_EC[jwk["crv"]],)
    elif kty == "OKP" and jwk.get("crv") in _OKP:
        found = (_OKP[jwk["crv"]],)
    else:
        return f"unsupported key type {_short(kty)}/{_short(jwk.get('crv'))}"
    if declared is not None:
        if declared not in found:
            raise TokenSettingsError(
                f"JWKS key {label} declares algorithm {_short(declared)}, "
                f"which its key type ({kty}) cannot verify"
            )
        found = (declared,)
    return found


def load_keys(jwks: Mapping[str, Any], algorithms: Iterable[str]) -> list[_Key]:
    """The usable signature keys of a JWKS document for the allowed ``algorithms``.
    Keys for other algorithms, encryption keys and unknown types are skipped; a set that
    is malformed, holds secret material or has no usable key is a TokenSettingsError."""
    allowed = set(algorithms)
    entries = jwks.get("keys")
    if not isinstance(entries, list) or not entries:
        raise TokenSettingsError('the JWKS has no "keys" list')
    keys: list[_Key] = []
    skipped: list[str] = []
    for index, jwk in enumerate(entries):
        if not isinstance(jwk, dict):
            raise TokenSettingsError(f"JWKS key #{index} is not a JSON object")
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenSettingsError(f"JWKS key #{index} has a kid that is not a string")
        label = f"{kid!r}" if kid is not None else f"#{index}"
        found = _candidates(jwk, label)
        if isinstance(found, str):
            skipped.append(f"{label}: {found}")
            continue
        usable = [name for name in found if name in allowed]
        if not usable:
            skipped.append(f"{label}: none of {', '.join(found)} is allowed")
            continue
        verifiers: dict[str, jwt.PyJWK] = {}
        for name in usable:
            try:
                verifiers[name] = jwt.PyJWK(jwk, algorithm=name)
            except jwt.PyJWTError as exc:
                raise TokenSettingsError(f"JWKS key {label} cannot be loaded: {exc}") from None
        sample = next(iter(verifiers.values())).key
        if isinstance(sample, rsa.RSAPublicKey) and sample.key_size < MIN_RSA_BITS:
            raise TokenSettingsError(
                f"JWKS key {label} is a {sample.key_size}-bit RSA key "
                f"({MIN_RSA_BITS} bits at least)"
            )
        if kid is not None and any(key.kid == kid for key in keys):
            raise TokenSettingsError(f"JWKS key id {kid!r} appears twice")
        keys.append(_Key(kid, verifiers))
    if not keys:
        raise TokenSettingsError(
            "the JWKS has no key for the allowed algorithms"
            + (f" (skipped {'; '.join(skipped)})" if skipped else "")
        )
    if len(keys) > 1 and any(key.kid is None for key in keys):
        raise TokenSettingsError("a JWKS with several keys needs a kid on every key")
    return keys


def _scopes(claims: Mapping[str, Any]) -> set[str]:
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(item for item in value if isinstance(item, str))
    return found


class TokenValidator:
    """Validates bearer tokens against one issuer. Thread-safe: it holds no mutable
    state after construction (the driver may call it from its thread pool)."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks: Mapping[str, Any],
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        clock_skew: int = DEFAULT_CLOCK_SKEW,
        user_claim: str = DEFAULT_USER_CLAIM,
        scope: str | None = None,
    ) -> None:
        if not issuer:
            raise TokenSettingsError("the issuer must be set")
        if not audience:
            raise TokenSettingsError("the audience must be set")
        if not 0 <= clock_skew <= MAX_CLOCK_SKEW:
            raise TokenSettingsError(f"clock skew {clock_skew} s is outside 0..{MAX_CLOCK_SKEW} s")
        if not user_claim or _CONTROL.search(user_claim):
            raise TokenSettingsError(f"bad user claim name {user_claim!r}")
        if scope is not None and not _SCOPE_TOKEN.fullmatch(scope):
            raise TokenSettingsError(f"{scope!r} is not one OAuth scope (RFC 6749 §3.3)")
        self.issuer = issuer
        self.audience = audience
        self.algorithms = parse_algorithms(algorithms)
        self.clock_skew = clock_skew
        self.user_claim = user_claim
        self.scope = scope
        self._keys = load_keys(jwks, self.algorithms)

    def __repr__(self) -> str:
        return (
            f"TokenValidator(issuer={self.issuer!r}, audience={self.audience!r}, "
            f"algorithms={self.algorithms}, keys={len(self._keys)})"
        )

    def _key(self, kid: object) -> _Key | None:
        if kid is None:
            return self._keys[0] if len(self._keys) == 1 else None
        return next((key for key in self._keys if key.kid == kid), None)

    def validate(self, token: str) -> TokenResult:
        """Check ``token``; never raises for any input."""

        def refuse(reason: str, status: str = INVALID_TOKEN) -> TokenResult:
            return TokenResult(None, status, reason)

        if len(token) > MAX_TOKEN_LENGTH:
            return refuse(f"token longer than {MAX_TOKEN_LENGTH} characters")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            return refuse("not a JWS compact serialization")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            return refuse(f"algorithm {_short(alg)} is not allowed")
        kid = header.get("kid")
        key = self._key(kid)
        if key is None:
            return refuse(f"no key with kid {_short(kid)}")
        verifier = key.verifiers.get(alg)
        if verifier is None:
            return refuse(f"algorithm {alg} does not fit key {_short(key.kid)}")
        try:
            claims = jwt.decode(
                token,
                key=verifier,
                algorithms=[verifier.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.clock_skew,
                options={
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_iss": True,
                    "verify_aud": True,
                    "require": ["exp", "iss", "aud"],
                },
            )
        except jwt.ExpiredSignatureError:
            return refuse("token expired")
        except jwt.ImmatureSignatureError:
            return refuse("token not yet valid (nbf or iat in the future)")
        except jwt.MissingRequiredClaimError as exc:
            return refuse(f"token lacks the {exc.claim} claim")
        except jwt.InvalidIssuerError:
            return refuse("token from another issuer")
        except jwt.InvalidAudienceError:
            return refuse("token for another audience")
        except jwt.InvalidSignatureError:
            return refuse("bad signature")
        except jwt.InvalidAlgorithmError:
            return refuse(f"algorithm {alg} refused")
        except jwt.PyJWTError as exc:
            return refuse(f"invalid token ({type(exc).__name__})")
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            return refuse(f"malformed token ({type(exc).__name__})")
        user = claims.get(self.user_claim)
        if not isinstance(user, str) or not user:
            return refuse(f"token has no {self.user_claim} claim")
        if len(user) > MAX_USER_LENGTH or _CONTROL.search(user):
            return refuse(f"unusable {self.user_claim} claim")
        if self.user_claim == "email" and claims.get("email_verified") in (False, "false"):
            return refuse("email not verified")
        if self.scope is not None and self.scope not in _scopes(claims):
            return refuse(f"token lacks scope {self.scope}", INSUFFICIENT_SCOPE)
        return TokenResult(user)

    def verify(self, token: Secret) -> BearerResult:
        """The driver's answer to :class:`~pop3d.sasl.requests.VerifyBearer`."""
        try:
            text = token.reveal().decode("ascii")
        except UnicodeDecodeError:
            return BearerResult(None, INVALID_TOKEN, "token is not ASCII")
        result = self.validate(text)
        return BearerResult(result.user, result.error, result.reason)


def token_validator(config: Config, service: str | None = None) -> TokenValidator | None:
    """The validator the ``oauth_*`` options describe; None when ``oauth_issuer`` is
    unset (token mechanisms off). ConfigError (with file:line) when they cannot work."""
    issuer = config.string("oauth_issuer", service)
    if not issuer:
        return None
    audience = config.string("oauth_audience", service)
    if not audience:
        raise config.error("oauth_audience", service, "oauth_issuer needs oauth_audience as well")
    jwks_file = config.string("oauth_jwks_file", service)
    if not jwks_file:
        raise config.error(
            "oauth_jwks_file",
            service,
            "oauth_issuer needs oauth_jwks_file (the issuer's public keys as a JWKS)",
        )
    try:
        jwks = read_jwks(jwks_file)
    except TokenSettingsError as exc:
        raise config.error("oauth_jwks_file", service, str(exc)) from None
    try:
        algorithms = parse_algorithms((config.string("oauth_algorithms", service) or "").split())
    except TokenSettingsError as exc:
        raise config.error("oauth_algorithms", service, f"oauth_algorithms: {exc}") from None
    skew = config.integer("oauth_clock_skew", service)
    if not 0 <= skew <= MAX_CLOCK_SKEW:
        raise config.error(
            "oauth_clock_skew",
            service,
            f"oauth_clock_skew: {skew} s is outside 0..{MAX_CLOCK_SKEW} s",
        )
    user_claim = config.string("oauth_user_claim", service) or ""
    if not user_claim or _CONTROL.search(user_claim) or " " in user_claim:
        raise config.error(
            "oauth_user_claim", service, f"oauth_user_claim: bad claim {user_claim!r}"
        )
    scope = config.string("oauth_scope", service) or None
    if scope is not None and not _SCOPE_TOKEN.fullmatch(scope):
        raise config.error("oauth_scope", service, f"oauth_scope: {scope!r} is not one OAuth scope")
    try:
        return TokenValidator(
            issuer=issuer,
            audience=audience,
            jwks=jwks,
            algorithms=algorithms,
            clock_skew=skew,
            user_claim=user_claim,
            scope=scope,
        )
    except TokenSettingsError as exc:
        raise config.error("oauth_jwks_file", service, f"{jwks_file}: {exc}") from None
