"""TokenValidator: JWT access tokens checked against a local JWKS.

Tokens here are made by hand with ``cryptography`` (JWS compact serialization, RFC 7515),
not with PyJWT, so the validator's PyJWT is checked against an independent signer."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from pop3d.auth.tokens import (
    INSUFFICIENT_SCOPE,
    INVALID_TOKEN,
    TokenResult,
    TokenSettingsError,
    TokenValidator,
    parse_algorithms,
    read_jwks,
    token_validator,
)
from pop3d.config import imapd
from pop3d.config.imapd import ConfigError
from pop3d.security.secret import Secret
from tests.support import jwt
from tests.support.jwt import b64url, jwk, signing_input

ISSUER = "https://issuer.example.com"
AUDIENCE = "pop3d.example.com"
USER = "alice@example.com"

# --- keys, JWKS and tokens made without PyJWT -------------------------------------------------


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "email": USER,
        "iat": now - 10,
        "exp": now + 600,
        "scope": "openid email mail",
    }
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def token(
    key: Any, alg: str, kid: str | None = "rsa", body: dict[str, Any] | None = None, **header: Any
) -> str:
    head: dict[str, Any] = {"typ": "JWT"}
    if kid is not None:
        head["kid"] = kid
    head.update(header)
    return jwt.token(key, alg, head, body if body is not None else claims())


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
        "attacker": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


@pytest.fixture(scope="module")
def jwks(keys: dict[str, Any]) -> dict[str, Any]:
    return {"keys": [jwk(keys["rsa"], "rsa"), jwk(keys["ec"], "ec"), jwk(keys["ed"], "ed")]}


def validator(jwks: dict[str, Any], **settings_: Any) -> TokenValidator:
    arguments: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "jwks": jwks}
    arguments.update(settings_)
    return TokenValidator(**arguments)


def refused(result: TokenResult, status: str = INVALID_TOKEN, reason: str = "") -> None:
    assert result.user is None, result
    assert not result.ok
    assert result.error == status, result
    assert reason in result.reason, result


# --- accepted ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kid", "alg"), [("rsa", "RS256"), ("ec", "ES256"), ("ed", "EdDSA")])
def test_valid_tokens_are_accepted(
    keys: dict[str, Any], jwks: dict[str, Any], kid: str, alg: str
) -> None:
    result = validator(jwks).validate(token(keys[kid], alg, kid))
    assert result == TokenResult(USER)
    assert result.ok


def test_user_claim_is_configurable(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    good = token(keys["rsa"], "RS256", body=claims(preferred_username="alice"))
    assert validator(jwks, user_claim="sub").validate(good).user == "alice"
    assert validator(jwks, user_claim="preferred_username").validate(good).user == "alice"


def test_audience_list_containing_ours(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    good = token(keys["rsa"], "RS256", body=claims(aud=["other", AUDIENCE]))
    assert validator(jwks).validate(good).user == USER


def test_skew_tolerates_small_clock_differences(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    now = int(time.time())
    check = validator(jwks, clock_skew=60)
    for body in (claims(exp=now - 30), claims(nbf=now + 30), claims(iat=now + 30)):
        assert check.validate(token(keys["rsa"], "RS256", body=body)).user == USER, body


def test_single_key_set_needs_no_kid(keys: dict[str, Any]) -> None:
    only = {"keys": [jwk(keys["ec"], None)]}
    assert validator(only).validate(token(keys["ec"], "ES256", kid=None)).user == USER


def test_ps256_when_allowed(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    check = validator(jwks, algorithms=["PS256", "RS256"])
    assert check.validate(token(keys["rsa"], "PS256")).user == USER


def test_scope_in_scope_or_scp(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    check = validator(jwks, scope="mail")
    assert check.validate(token(keys["rsa"], "RS256")).user == USER
    scp = claims(scope=None, scp=["mail", "openid"])
    assert check.validate(token(keys["rsa"], "RS256", body=scp)).user == USER


# --- refused ----------------------------------------------------------------------------


def test_expired_beyond_skew(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    now = int(time.time())
    old = token(keys["rsa"], "RS256", body=claims(iat=now - 7200, exp=now - 120))
    refused(validator(jwks, clock_skew=60).validate(old), reason="expired")


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_yet_valid_beyond_skew(keys: dict[str, Any], jwks: dict[str, Any], claim: str) -> None:
    future = token(keys["rsa"], "RS256", body=claims(**{claim: int(time.time()) + 600}))
    refused(validator(jwks, clock_skew=60).validate(future), reason="not yet valid")


@pytest.mark.parametrize("claim", ["exp", "iss", "aud"])
def test_required_claims(keys: dict[str, Any], jwks: dict[str, Any], claim: str) -> None:
    missing = token(keys["rsa"], "RS256", body=claims(**{claim: None}))
    refused(validator(jwks).validate(missing), reason=f"lacks the {claim} claim")


def test_wrong_issuer(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    other = token(keys["rsa"], "RS256", body=claims(iss="https://evil.example"))
    refused(validator(jwks).validate(other), reason="another issuer")


@pytest.mark.parametrize("aud", ["imap.example.com", ["a", "b"], AUDIENCE.upper()])
def test_wrong_audience(keys: dict[str, Any], jwks: dict[str, Any], aud: object) -> None:
    other = token(keys["rsa"], "RS256", body=claims(aud=aud))
    refused(validator(jwks).validate(other), reason="another audience")


def test_wrong_kid(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    refused(validator(jwks).validate(token(keys["rsa"], "RS256", "gone")), reason="no key")
    # several keys and no kid: the validator does not guess
    refused(validator(jwks).validate(token(keys["rsa"], "RS256", None)), reason="no key")


def test_kid_of_another_key_type(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    """An RS256 token that names the EC key's kid: the key cannot verify RS256."""
    refused(validator(jwks).validate(token(keys["rsa"], "RS256", "ec")), reason="does not fit")


def test_signed_by_another_key(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    forged = token(keys["attacker"], "RS256", "rsa")
    refused(validator(jwks).validate(forged), reason="bad signature")


def test_embedded_jwk_header_is_ignored(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    """RFC 7515 "jwk"/"jku" headers name a key the attacker controls: never used."""
    attacker = jwk(keys["attacker"], "rsa")
    forged = token(keys["attacker"], "RS256", "rsa", jwk=attacker, jku="https://evil.example/jwks")
    refused(validator(jwks).validate(forged), reason="bad signature")


def test_tampered_payload(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    head, _, signature = token(keys["rsa"], "RS256").split(".")
    body = b64url(json.dumps(claims(email="admin@example.com")).encode())
    refused(validator(jwks).validate(f"{head}.{body}.{signature}"), reason="bad signature")


def test_tampered_signature(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    head, body, signature = token(keys["ed"], "EdDSA", "ed").split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[0] ^= 1
    refused(validator(jwks).validate(f"{head}.{body}.{b64url(bytes(raw))}"), reason="signature")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
@pytest.mark.parametrize("signature", ["", "AAAA"])
def test_alg_none(jwks: dict[str, Any], alg: str, signature: str) -> None:
    data = signing_input({"alg": alg, "typ": "JWT", "kid": "rsa"}, claims()).decode()
    refused(validator(jwks).validate(f"{data}.{signature}"), reason="not allowed")


def test_hs256_key_confusion(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    """HS256 with the issuer's public key (in every form an attacker might try) as the HMAC
    secret: a validator that let the header choose the algorithm would accept it."""
    public = keys["rsa"].public_key()
    secrets = [
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        json.dumps(jwks["keys"][0]).encode(),
    ]
    check = validator(jwks, algorithms=["RS256", "PS256", "ES256", "EdDSA"])
    for secret in secrets:
        for kid in ("rsa", None):
            head = {"alg": "HS256", "typ": "JWT"} | ({"kid": kid} if kid else {})
            data = signing_input(head, claims())
            mac = hmac.new(secret, data, hashlib.sha256).digest()
            refused(check.validate(data.decode() + "." + b64url(mac)), reason="not allowed")


def test_algorithm_outside_the_allow_list(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    only_rsa = validator(jwks, algorithms=["RS256"])
    refused(only_rsa.validate(token(keys["ec"], "ES256", "ec")), reason="not allowed")
    refused(only_rsa.validate(token(keys["rsa"], "PS256", "rsa")), reason="not allowed")
    refused(validator(jwks).validate(token(keys["rsa"], "PS256")), reason="not allowed")


def test_jwk_alg_member_binds_the_key(keys: dict[str, Any]) -> None:
    """A JWK that says "alg":"RS256" does not verify PS256, even when PS256 is allowed."""
    pinned = {"keys": [jwk(keys["rsa"], "rsa", alg="RS256")]}
    check = validator(pinned, algorithms=["RS256", "PS256"])
    assert check.validate(token(keys["rsa"], "RS256")).user == USER
    refused(check.validate(token(keys["rsa"], "PS256")), reason="does not fit")


@pytest.mark.parametrize("value", [None, "", ["alice@example.com"], 42, "a\nb", "x" * 300])
def test_missing_or_unusable_user_claim(
    keys: dict[str, Any], jwks: dict[str, Any], value: object
) -> None:
    body = claims(email=value) if value is not None else claims(email=None)
    refused(validator(jwks).validate(token(keys["rsa"], "RS256", body=body)), reason="claim")


def test_unverified_email(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    body = claims(email_verified=False)
    refused(validator(jwks).validate(token(keys["rsa"], "RS256", body=body)), reason="verified")
    # with another user claim, email_verified does not matter
    assert validator(jwks, user_claim="sub").validate(token(keys["rsa"], "RS256", body=body)).ok


def test_insufficient_scope(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    check = validator(jwks, scope="pop")
    refused(check.validate(token(keys["rsa"], "RS256")), INSUFFICIENT_SCOPE, "scope pop")
    # the scope string is split on spaces, not searched as a substring
    body = claims(scope="popular")
    refused(check.validate(token(keys["rsa"], "RS256", body=body)), INSUFFICIENT_SCOPE)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a",
        "a.b",
        "a.b.c",
        "...",
        "e30.e30.",
        "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.AA",
        "x" * 20000,
        "é.é.é",
        "eyJhbGciOlsiUlMyNTYiXX0.e30.AA",
    ],
)
def test_garbage_is_refused_without_an_exception(jwks: dict[str, Any], text: str) -> None:
    refused(validator(jwks).validate(text))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.from_regex(r"[A-Za-z0-9_\-]{0,40}\.[A-Za-z0-9_\-.]{0,80}"))
def test_fuzzed_tokens_never_raise(text: str) -> None:
    check = _FUZZ_VALIDATOR
    result = check.validate(text)
    assert result.user is None and result.error == INVALID_TOKEN


_FUZZ_KEY = ed25519.Ed25519PrivateKey.generate()
_FUZZ_VALIDATOR = TokenValidator(
    issuer=ISSUER, audience=AUDIENCE, jwks={"keys": [jwk(_FUZZ_KEY, "ed")]}
)


def test_verify_takes_a_secret(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    check = validator(jwks)
    good = check.verify(Secret(token(keys["rsa"], "RS256").encode()))
    assert (good.identity, good.error) == (USER, "")
    bad = check.verify(Secret("é".encode()))
    assert (bad.identity, bad.error) == (None, INVALID_TOKEN)


def test_the_token_never_reaches_a_reason_or_the_log(
    keys: dict[str, Any], jwks: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    now = int(time.time())
    tokens = [
        token(keys["rsa"], "RS256", body=claims(exp=now - 1000)),
        token(keys["rsa"], "RS256", "nope"),
        token(keys["attacker"], "RS256"),
        token(keys["rsa"], "RS256", body=claims(aud="x")),
        "garbage-token-value",
    ]
    check = validator(jwks)
    for text in tokens:
        result = check.validate(text)
        assert result.user is None
        for part in text.split("."):
            if len(part) > 8:
                assert part not in result.reason
                assert part not in caplog.text
    assert "garbage-token-value" not in repr(check)


# --- construction -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["none", "NONE", "HS256", "hs384", "HS512", "Hs256"])
def test_none_and_hmac_can_never_be_enabled(jwks: dict[str, Any], name: str) -> None:
    with pytest.raises(TokenSettingsError, match="never allowed"):
        parse_algorithms([name])
    with pytest.raises(TokenSettingsError, match="never allowed"):
        validator(jwks, algorithms=["RS256", name])


def test_algorithm_names(jwks: dict[str, Any]) -> None:
    assert parse_algorithms(["rs256", "eddsa", "RS256"]) == ("RS256", "EdDSA")
    with pytest.raises(TokenSettingsError, match="unknown algorithm"):
        parse_algorithms(["RS1"])
    with pytest.raises(TokenSettingsError, match="no algorithm"):
        parse_algorithms([])
    assert validator(jwks).algorithms == ("RS256", "ES256", "EdDSA")


def test_refused_key_sets(keys: dict[str, Any]) -> None:
    rsa_jwk = jwk(keys["rsa"], "rsa")
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, 'no "keys" list'),
        ({"keys": []}, 'no "keys" list'),
        ({"keys": ["x"]}, "not a JSON object"),
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}, "symmetric"),
        ({"keys": [rsa_jwk | {"d": "AAAA"}]}, "private key material"),
        ({"keys": [rsa_jwk | {"alg": "HS256"}]}, "declares algorithm"),
        ({"keys": [rsa_jwk | {"alg": "ES256"}]}, "cannot verify"),
        ({"keys": [rsa_jwk, rsa_jwk]}, "appears twice"),
        ({"keys": [rsa_jwk, jwk(keys["ec"], None)]}, "needs a kid"),
        ({"keys": [rsa_jwk | {"use": "enc"}]}, "skipped"),
        ({"keys": [jwk(keys["ec"], "ec") | {"crv": "P-384"}]}, "no key for the allowed"),
        ({"keys": [{"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"}]}, "cannot be loaded"),
        ({"keys": [rsa_jwk | {"kid": 7}]}, "not a string"),
    ]
    for document, message in cases:
        with pytest.raises(TokenSettingsError, match=message):
            validator(document)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (the point)
    with pytest.raises(TokenSettingsError, match="1024-bit"):
        validator({"keys": [jwk(small, "small")]})


def test_refused_settings(jwks: dict[str, Any]) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"issuer": ""}, "issuer"),
        ({"audience": ""}, "audience"),
        ({"clock_skew": -1}, "skew"),
        ({"clock_skew": 86400}, "skew"),
        ({"user_claim": ""}, "claim"),
        ({"scope": "two scopes"}, "scope"),
    ]
    for bad, message in cases:
        with pytest.raises(TokenSettingsError, match=message):
            validator(jwks, **bad)


def test_unusable_keys_are_skipped_when_others_remain(keys: dict[str, Any]) -> None:
    document = {"keys": [jwk(keys["rsa"], "enc-key", use="enc"), jwk(keys["ec"], "ec")]}
    check = validator(document)
    assert check.validate(token(keys["ec"], "ES256", "ec")).ok
    refused(check.validate(token(keys["rsa"], "RS256", "enc-key")), reason="no key")


# --- from imapd.conf --------------------------------------------------------------------


def config_for(tmp_path: Path, text: str) -> imapd.Config:
    path = tmp_path / "imapd.conf"
    path.write_text(text)
    return imapd.load(path)


def test_token_validator_from_config(tmp_path: Path, jwks: dict[str, Any]) -> None:
    assert token_validator(config_for(tmp_path, "servername: x\n")) is None
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    config = config_for(
        tmp_path,
        f"oauth_issuer: {ISSUER}\noauth_audience: {AUDIENCE}\n"
        f"oauth_jwks_file: {tmp_path / 'jwks.json'}\noauth_algorithms: ES256 EdDSA\n"
        "oauth_clock_skew: 2m\noauth_user_claim: sub\noauth_scope: mail\n"
        "pop3s_oauth_scope: pop\n",
    )
    check = token_validator(config, "pop3")
    assert check is not None
    assert (check.issuer, check.audience, check.algorithms) == (
        ISSUER,
        AUDIENCE,
        ("ES256", "EdDSA"),
    )
    assert (check.clock_skew, check.user_claim, check.scope) == (120, "sub", "mail")
    pop3s = token_validator(config, "pop3s")
    assert pop3s is not None and pop3s.scope == "pop"
    defaults = token_validator(
        config_for(
            tmp_path,
            f"oauth_issuer: {ISSUER}\noauth_audience: {AUDIENCE}\n"
            f"oauth_jwks_file: {tmp_path / 'jwks.json'}\n",
        )
    )
    assert defaults is not None
    assert (defaults.algorithms, defaults.clock_skew) == (("RS256", "ES256", "EdDSA"), 60)
    assert (defaults.user_claim, defaults.scope) == ("email", None)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("oauth_audience: {aud}\n", r"imapd.conf \(oauth_jwks_file unset\).*needs oauth_jwks"),
        ("oauth_jwks_file: {jwks}\n", "needs oauth_audience"),
        (
            "oauth_audience: {aud}\noauth_jwks_file: {tmp}/missing.json\n",
            r"imapd.conf:3: error: cannot read JWKS file",
        ),
        ("oauth_audience: {aud}\noauth_jwks_file: {tmp}/bad.json\n", "is not JSON"),
        ("oauth_audience: {aud}\noauth_jwks_file: {tmp}/oct.json\n", "symmetric"),
        (
            "oauth_audience: {aud}\noauth_jwks_file: {jwks}\noauth_algorithms: RS256 HS256\n",
            r"imapd.conf:4: error: oauth_algorithms: algorithm 'HS256' is never allowed",
        ),
        (
            "oauth_audience: {aud}\noauth_jwks_file: {jwks}\noauth_algorithms: none\n",
            "never allowed",
        ),
        (
            "oauth_audience: {aud}\noauth_jwks_file: {jwks}\noauth_algorithms: ES256\n",
            "no key for the allowed algorithms",
        ),
        (
            "oauth_audience: {aud}\noauth_jwks_file: {jwks}\noauth_clock_skew: 2h\n",
            "outside 0..3600",
        ),
        (
            "oauth_audience: {aud}\noauth_jwks_file: {jwks}\noauth_scope: a b\n",
            "not one OAuth scope",
        ),
    ],
)
def test_token_validator_config_errors(
    tmp_path: Path, jwks: dict[str, Any], keys: dict[str, Any], extra: str, message: str
) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk(keys["rsa"], "rsa")]}))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "oct.json").write_text(json.dumps({"keys": [{"kty": "oct", "k": "AAAA"}]}))
    text = f"oauth_issuer: {ISSUER}\n" + extra.format(
        aud=AUDIENCE, jwks=tmp_path / "jwks.json", tmp=tmp_path
    )
    with pytest.raises(ConfigError, match=message):
        token_validator(config_for(tmp_path, text))


def test_read_jwks_limits(tmp_path: Path) -> None:
    (tmp_path / "big.json").write_bytes(b" " * (1 << 21))
    with pytest.raises(TokenSettingsError, match="larger than"):
        read_jwks(tmp_path / "big.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(TokenSettingsError, match="not a JSON object"):
        read_jwks(tmp_path / "list.json")
