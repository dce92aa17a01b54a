"""OAUTHBEARER (RFC 7628) and XOAUTH2: the vectors (published examples and JWTs made by
vectors/sasl/make_oauth.py), errors as the extra challenge, authzid checks and every
malformed client message.

VerifyBearer is answered by a real TokenValidator (tests/support's runner does not know
the request yet, so :func:`replay` here is its counterpart), ResolveUser by a real
Authenticator over a credential file holding the users the tokens name."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from pop3d.auth import credentials, schemes
from pop3d.auth.authenticator import Authenticator
from pop3d.auth.credentials import CredentialFile
from pop3d.auth.tokens import TokenValidator, read_jwks
from pop3d.sasl import requests as rq
from pop3d.sasl.mechanism import (
    Challenge,
    Context,
    Failure,
    Flag,
    MalformedResponse,
    Mechanism,
    Success,
)
from pop3d.sasl.oauth import OAuthBearer, XOAuth2
from pop3d.security.secret import Secret
from tests.support import jwt, sasl_run, sasl_vectors
from tests.support.jwt import b64url
from tests.support.lab import FAST_ARGON2

CASES = sasl_vectors.load("oauth.json")
# What vectors/sasl/make_oauth.py signed its tokens for.
VECTOR_ISSUER = "https://issuer.example.com"
VECTOR_AUDIENCE = "pop3d.example.com"
ISSUER = "https://issuer.lab.test"
AUDIENCE = "pop3d"
MECHANISMS: dict[str, type[OAuthBearer] | type[XOAuth2]] = {
    "OAUTHBEARER": OAuthBearer,
    "XOAUTH2": XOAuth2,
}
OAUTHBEARER_ERROR = b'{"status":"invalid_token","schemes":"bearer"}'
XOAUTH2_ERROR = b'{"status":"401","schemes":"bearer"}'


def vector_validator() -> TokenValidator:
    return TokenValidator(
        issuer=VECTOR_ISSUER,
        audience=VECTOR_AUDIENCE,
        jwks=read_jwks(sasl_vectors.SASL_VECTORS / "oauth-jwks.json"),
    )


# Every user a good token here names, but "nobody@lab.test".
KNOWN_USERS = ("alice@lab.test", "a,b=c@lab.test", "user@example.com", "someuser@example.com")
_KNOWN: dict[str, Authenticator] = {}


@pytest.fixture(scope="module", autouse=True)
def _known_users(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("oauth") / "passwd"
    values, _ = schemes.derive(Secret(b"unused"), set(), FAST_ARGON2)
    for user in KNOWN_USERS:
        credentials.update(path, user, lambda _old, user=user: credentials.UserRecord(user, values))
    _KNOWN["users"] = Authenticator(CredentialFile(path), FAST_ARGON2)


def resolve(validator: TokenValidator, request: object) -> object:
    """The driver's part: VerifyBearer goes to the validator, ResolveUser to the
    authenticator; nothing else is asked."""
    if isinstance(request, rq.VerifyBearer):
        assert isinstance(request.token, Secret)
        return validator.verify(request.token)
    if isinstance(request, rq.ResolveUser):
        return _KNOWN["users"].resolve_user(request.user)
    raise AssertionError(f"unexpected request {request!r}")


def replay(mechanism: Mechanism, case: sasl_vectors.Case, validator: TokenValidator) -> Any:
    """Replay ``case`` byte for byte, as tests/support/sasl_run.run does for passwords."""
    context = Context("lab.test")
    return sasl_run.run(mechanism, case, context=context, resolve=lambda r: resolve(validator, r))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_vectors(case: sasl_vectors.Case) -> None:
    result = replay(MECHANISMS[case.mechanism](), case, vector_validator())
    assert isinstance(result, Success if case.outcome == "success" else Failure), result
    if isinstance(result, Success):
        assert result.authcid == case.user
        assert result.final is None


def test_vector_file_has_the_published_examples() -> None:
    names = {case.name for case in CASES}
    assert {"rfc7628-section-4.1", "rfc7628-section-4.3", "google-xoauth2"} <= names
    rfc = next(case for case in CASES if case.name == "rfc7628-section-4.3")
    assert rfc.steps[-1] == ("C", b"\x01")  # the published "AQ=="
    assert {case.outcome for case in CASES} == {"success", "failure"}


# --- helpers for hand-made exchanges ------------------------------------------------------

_KEY = ed25519.Ed25519PrivateKey.generate()


def make_token(**changes: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "email": "alice@lab.test",
        "iat": now,
        "exp": now + 300,
        "scope": "mail",
    }
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.token(_KEY, "EdDSA", {"kid": "k1"}, claims)


def make_validator(**settings_: Any) -> TokenValidator:
    public = _KEY.public_key().public_bytes_raw()
    jwks = {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": b64url(public)}]}
    return TokenValidator(issuer=ISSUER, audience=AUDIENCE, jwks=jwks, **settings_)


def oauthbearer(token: str, header: str = "n,a=alice@lab.test,") -> bytes:
    return f"{header}\x01host=lab.test\x01port=110\x01auth=Bearer {token}\x01\x01".encode()


def xoauth2(token: str, user: str = "alice@lab.test") -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def exchange(
    mechanism: Mechanism,
    initial: bytes | None,
    answers: Sequence[bytes] = (),
    validator: TokenValidator | None = None,
    scope: str = "",
) -> tuple[Success | Failure, list[bytes], list[object]]:
    """Run to the end: (result, challenges sent, requests made)."""
    chosen = validator or make_validator()
    context = Context("lab.test", oauth_scope=scope)
    done = sasl_run.script(mechanism, context, initial, answers, lambda r: resolve(chosen, r))
    return done.result, done.challenges, done.requests


# --- success and refusals -----------------------------------------------------------------


def test_flags() -> None:
    for mechanism in (OAuthBearer(), XOAuth2()):
        assert mechanism.flags & Flag.TOKEN
        assert mechanism.flags & Flag.PLAINTEXT  # a bearer token is as good as a password
        assert mechanism.credentials == ()
    assert (OAuthBearer.name, XOAuth2.name) == ("OAUTHBEARER", "XOAUTH2")


def test_oauthbearer_success() -> None:
    token = make_token()
    result, challenges, requests = exchange(OAuthBearer(), oauthbearer(token))
    assert result == Success("alice@lab.test", "alice@lab.test")
    assert challenges == []
    request, lookup = requests
    assert lookup == rq.ResolveUser("alice@lab.test")
    assert isinstance(request, rq.VerifyBearer)
    assert request.user_hint == "alice@lab.test"
    assert request.token.reveal() == token.encode()
    assert "redacted" in repr(request) and token.split(".")[1] not in repr(request)


def test_oauthbearer_without_authzid_and_with_y_flag() -> None:
    for header in ("n,,", "y,,"):
        result, _, requests = exchange(OAuthBearer(), oauthbearer(make_token(), header))
        assert result == Success("alice@lab.test", ""), header
        assert isinstance(requests[0], rq.VerifyBearer) and requests[0].user_hint == ""


def test_oauthbearer_without_initial_response() -> None:
    result, challenges, _ = exchange(OAuthBearer(), None, [oauthbearer(make_token())])
    assert challenges == [b""]
    assert isinstance(result, Success)


def test_oauthbearer_escaped_authzid() -> None:
    token = make_token(email="a,b=c@lab.test")
    result, _, _ = exchange(OAuthBearer(), oauthbearer(token, "n,a=a=2Cb=3Dc@lab.test,"))
    assert result == Success("a,b=c@lab.test", "a,b=c@lab.test")


def test_xoauth2_success() -> None:
    result, challenges, _ = exchange(XOAuth2(), xoauth2(make_token()))
    assert result == Success("alice@lab.test", "alice@lab.test")
    assert challenges == []
    result, _, _ = exchange(XOAuth2(), b"auth=Bearer " + make_token().encode() + b"\x01\x01")
    assert result == Success("alice@lab.test", "")


def test_bearer_scheme_is_case_insensitive() -> None:
    message = oauthbearer(make_token()).replace(b"auth=Bearer ", b"auth=bEARER  ")
    assert isinstance(exchange(OAuthBearer(), message)[0], Success)


REFUSED: list[tuple[str, dict[str, Any], dict[str, Any], str, str]] = [
    # (name, token claims, validator settings, RFC 7628 status, XOAUTH2 status)
    ("expired", {"iat": 1, "exp": int(time.time()) - 3600}, {}, "invalid_token", "401"),
    ("not yet valid", {"nbf": int(time.time()) + 3600}, {}, "invalid_token", "401"),
    ("wrong issuer", {"iss": "https://evil.example"}, {}, "invalid_token", "401"),
    ("wrong audience", {"aud": "imap"}, {}, "invalid_token", "401"),
    ("no user claim", {"email": None}, {}, "invalid_token", "401"),
    ("missing scope", {}, {"scope": "pop"}, "insufficient_scope", "403"),
]


@pytest.mark.parametrize(
    ("claims", "validator_settings", "status", "http"),
    [r[1:] for r in REFUSED],
    ids=[r[0] for r in REFUSED],
)
def test_refused_tokens_get_the_error_challenge(
    claims: dict[str, Any], validator_settings: dict[str, Any], status: str, http: str
) -> None:
    scope = validator_settings.get("scope", "")
    validator = make_validator(**validator_settings)
    token = make_token(**claims)

    result, challenges, _ = exchange(OAuthBearer(), oauthbearer(token), [b"\x01"], validator, scope)
    expected: dict[str, str] = {"status": status, "schemes": "bearer"}
    if scope:
        expected["scope"] = scope
    assert challenges == [json.dumps(expected, separators=(",", ":")).encode()]
    assert isinstance(result, Failure) and result.authcid == "alice@lab.test"
    assert "wrong answer" not in result.reason

    result, challenges, _ = exchange(XOAuth2(), xoauth2(token), [b""], validator, scope)
    assert json.loads(challenges[0]) == expected | {"status": http}
    assert isinstance(result, Failure)


@pytest.mark.parametrize("mechanism", [OAuthBearer(), XOAuth2()], ids=["oauthbearer", "xoauth2"])
def test_a_good_token_for_an_unknown_user_is_refused_as_a_bad_token_is(
    mechanism: Mechanism,
) -> None:
    """RFC 7628 §3.2.2: the error challenge, the client's answer, then the failure. A
    good token whose user pop3d does not know was failed at once (the session found the
    user unknown after the mechanism's success), so the two could be told apart (found
    probing)."""
    oauth = isinstance(mechanism, OAuthBearer)
    answer, error = (b"\x01", OAUTHBEARER_ERROR) if oauth else (b"", XOAUTH2_ERROR)
    reasons = []
    for token in (make_token(email="nobody@lab.test"), make_token(aud="x")):
        message = oauthbearer(token, "n,,") if oauth else xoauth2(token, "")
        result, challenges, _ = exchange(mechanism, message, [answer])
        assert challenges == [error]
        assert isinstance(result, Failure)
        reasons.append(result.reason)
    assert reasons[0] == "unknown user" and "wrong answer" not in reasons[1]


def test_error_challenge_with_the_configured_scope() -> None:
    result, challenges, _ = exchange(
        OAuthBearer(), oauthbearer(make_token(exp=1, iat=0)), [b"\x01"], scope="mail"
    )
    assert challenges == [b'{"status":"invalid_token","schemes":"bearer","scope":"mail"}']
    assert isinstance(result, Failure)


@pytest.mark.parametrize("answer", [b"", b"\x01\x01", b"x", b"\x00", oauthbearer("t")])
def test_a_wrong_answer_to_the_error_is_still_a_failure(answer: bytes) -> None:
    bad = oauthbearer(make_token(aud="x"))
    result, challenges, _ = exchange(OAuthBearer(), bad, [answer])
    assert challenges == [OAUTHBEARER_ERROR]
    assert isinstance(result, Failure) and "wrong answer" in result.reason


def test_xoauth2_answer_other_than_empty_is_still_a_failure() -> None:
    result, challenges, _ = exchange(XOAuth2(), xoauth2(make_token(aud="x")), [b"\x01"])
    assert challenges == [XOAUTH2_ERROR]
    assert isinstance(result, Failure) and "wrong answer" in result.reason


def test_a_valid_token_never_succeeds_after_the_error() -> None:
    """The answer to the error challenge is not a second chance."""
    result, _, requests = exchange(
        OAuthBearer(), oauthbearer(make_token(aud="x")), [oauthbearer(make_token())]
    )
    assert isinstance(result, Failure)
    assert len(requests) == 1


# The messages are made when the test runs: a token made at collection expires (300 s)
# before a long run of the suite reaches it.
@pytest.mark.parametrize(
    ("mechanism", "message"),
    [
        (OAuthBearer(), lambda: oauthbearer(make_token(), "n,a=bob@lab.test,")),
        (XOAuth2(), lambda: xoauth2(make_token(), "bob@lab.test")),
        (OAuthBearer(), lambda: oauthbearer(make_token(email="alice@lab.test.evil"))),
    ],
    ids=["oauthbearer", "xoauth2", "suffix"],
)
def test_named_user_must_be_the_token_user(
    mechanism: Mechanism, message: Callable[[], bytes]
) -> None:
    answer = b"\x01" if isinstance(mechanism, OAuthBearer) else b""
    result, challenges, _ = exchange(mechanism, message(), [answer])
    assert isinstance(result, Failure)
    assert "token is for" in result.reason
    assert json.loads(challenges[0])["status"] in ("invalid_token", "401")


def test_named_user_compared_case_insensitively() -> None:
    result, _, _ = exchange(OAuthBearer(), oauthbearer(make_token(), "n,a=ALICE@Lab.Test,"))
    assert result == Success("alice@lab.test", "ALICE@Lab.Test")
    result, _, _ = exchange(XOAuth2(), xoauth2(make_token(), "Alice@LAB.test"))
    assert result == Success("alice@lab.test", "Alice@LAB.test")


@pytest.mark.parametrize("bad", ["alg-none", "hs256", "tampered"])
def test_forged_tokens_through_the_mechanism(bad: str) -> None:
    good = make_token()
    head, body, signature = good.split(".")
    if bad == "alg-none":
        token = b64url(b'{"alg":"none","kid":"k1"}') + "." + body + "."
    elif bad == "hs256":
        token = b64url(b'{"alg":"HS256","kid":"k1"}') + "." + body + "." + signature
    else:
        token = head + "." + b64url(json.dumps({"email": "root@lab.test"}).encode()) + "."
        token += signature
    result, challenges, _ = exchange(OAuthBearer(), oauthbearer(token), [b"\x01"])
    assert isinstance(result, Failure)
    assert challenges == [OAUTHBEARER_ERROR]


# --- malformed client messages --------------------------------------------------------------

TOKEN = make_token()
GOOD = oauthbearer(TOKEN)
MALFORMED_OAUTHBEARER = {
    "empty": b"",
    "just kvsep": b"\x01",
    "no terminator": GOOD[:-2],
    "single terminator": GOOD[:-1],
    "triple terminator": GOOD + b"\x01",
    "no auth": b"n,,\x01host=lab.test\x01port=110\x01\x01",
    "no pairs": b"n,,\x01\x01",
    "auth twice": GOOD[:-1] + b"auth=Bearer x\x01\x01",
    "basic scheme": GOOD.replace(b"Bearer", b"Basic"),
    "no token": b"n,,\x01auth=Bearer \x01\x01",
    "token with space": b"n,,\x01auth=Bearer ab cd\x01\x01",
    "token with comma": b"n,,\x01auth=Bearer ab,cd\x01\x01",
    "padding inside token": b"n,,\x01auth=Bearer ab=cd\x01\x01",
    "no gs2 header": b"\x01auth=Bearer " + TOKEN.encode() + b"\x01\x01",
    "gs2 without comma": b"n\x01auth=Bearer x\x01\x01",
    "gs2 one comma": b"n,a=alice\x01auth=Bearer x\x01\x01",
    "gs2 p= binding": GOOD.replace(b"n,a=", b"p=tls-unique,a=", 1),
    "gs2 bad flag": GOOD.replace(b"n,a=", b"x,a=", 1),
    "gs2 bad authzid": GOOD.replace(b"n,a=", b"n,b=", 1),
    "gs2 bad escape": GOOD.replace(b"a=alice", b"a=al=2Xice", 1),
    "gs2 empty authzid": GOOD.replace(b"a=alice@lab.test", b"a=", 1),
    "no kvsep after gs2": GOOD.replace(b",\x01host", b",host", 1),
    "bad key": GOOD.replace(b"host=", b"ho-st=", 1),
    "empty key": GOOD.replace(b"host=", b"=", 1),
    "pair without =": GOOD.replace(b"host=lab.test", b"hostlabtest", 1),
    "NUL in value": GOOD.replace(b"host=lab.test", b"host=lab\x00test", 1),
    "NUL in authzid": GOOD.replace(b"a=alice", b"a=al\x00ice", 1),
    "NUL in token": GOOD.replace(TOKEN[:5].encode(), TOKEN[:5].encode() + b"\x00", 1),
    "invalid UTF-8 in value": GOOD.replace(b"host=lab.test", b"host=\xff\xfe", 1),
    "invalid UTF-8 in authzid": GOOD.replace(b"a=alice", b"a=\xc3(", 1),
    "invalid UTF-8 in token": GOOD.replace(TOKEN[:5].encode(), b"\xe9" + TOKEN[:5].encode(), 1),
    "control character in authzid": GOOD.replace(b"a=alice", b"a=ali\nce", 1),
    "100 kB message": oauthbearer("a" * 100_000),
    "100 kB padding pair": GOOD[:-1] + b"x=" + b"y" * 100_000 + b"\x01\x01",
}


@pytest.mark.parametrize("message", MALFORMED_OAUTHBEARER.values(), ids=list(MALFORMED_OAUTHBEARER))
def test_malformed_oauthbearer(message: bytes) -> None:
    result, challenges, requests = exchange(OAuthBearer(), message, [b"\x01"])
    assert isinstance(result, Failure) and result.reason.startswith("malformed:"), result
    assert challenges == [] and requests == []
    # and without an initial response
    run = OAuthBearer().run(Context("lab.test"), None)
    assert run.send(None) == Challenge(b"")
    with pytest.raises(MalformedResponse):
        run.send(message)


MALFORMED_XOAUTH2 = {
    "empty": b"",
    "no terminator": xoauth2(TOKEN)[:-2],
    "no auth": b"user=alice@lab.test\x01\x01",
    "gs2 header": b"n,,\x01" + xoauth2(TOKEN),
    "NUL in user": xoauth2(TOKEN, "ali\x00ce"),
    "control character in user": xoauth2(TOKEN, "ali\rce"),
    "invalid UTF-8 in user": xoauth2(TOKEN).replace(b"alice", b"\xffalice"),
    "user twice": b"user=a\x01" + xoauth2(TOKEN),
    "100 kB message": xoauth2("a" * 100_000),
}


@pytest.mark.parametrize("message", MALFORMED_XOAUTH2.values(), ids=list(MALFORMED_XOAUTH2))
def test_malformed_xoauth2(message: bytes) -> None:
    result, challenges, requests = exchange(XOAuth2(), message, [b""])
    assert isinstance(result, Failure) and result.reason.startswith("malformed:"), result
    assert challenges == [] and requests == []


def test_long_token_within_the_message_limit_is_refused_by_the_validator() -> None:
    """20 kB token: the mechanism passes it on, the validator refuses it unparsed."""
    result, challenges, requests = exchange(OAuthBearer(), oauthbearer("a" * 20_000), [b"\x01"])
    assert isinstance(result, Failure) and "longer than" in result.reason
    assert challenges == [OAUTHBEARER_ERROR] and len(requests) == 1


@settings(max_examples=400, deadline=None)
@given(
    initial=st.none() | st.binary(max_size=200),
    answers=st.lists(st.binary(max_size=50), min_size=3, max_size=3),
    xoauth=st.booleans(),
)
def test_fuzzed_messages_end_in_failure_or_malformed(
    initial: bytes | None, answers: list[bytes], xoauth: bool
) -> None:
    mechanism: Mechanism = XOAuth2() if xoauth else OAuthBearer()
    result, _, _ = exchange(mechanism, initial, answers, _FUZZ_VALIDATOR)
    assert isinstance(result, Failure)


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(
            st.sampled_from(["host", "port", "auth", "user", "x", "Auth"]),
            st.sampled_from(["Bearer abc", "Bearer " + TOKEN, "", "\x00", "é", "a\tb"]),
        ),
        max_size=5,
    ),
    header=st.sampled_from(["n,,", "y,,", "n,a=alice@lab.test,", "p=x,,", "", "n,a=,"]),
)
def test_fuzzed_structures(pairs: list[tuple[str, str]], header: str) -> None:
    body = "".join(f"{k}={v}\x01" for k, v in pairs) + "\x01"
    for mechanism, message in (
        (OAuthBearer(), (header + "\x01" + body).encode()),
        (XOAuth2(), body.encode()),
    ):
        result, _, _ = exchange(mechanism, message, [b"\x01", b""])
        assert isinstance(result, Success | Failure)


_FUZZ_VALIDATOR = make_validator()


def test_the_token_never_reaches_a_reason_or_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bad = make_token(aud="x")
    for mechanism, message, answer in (
        (OAuthBearer(), oauthbearer(bad), b"\x01"),
        (XOAuth2(), xoauth2(bad), b""),
        (OAuthBearer(), oauthbearer(make_token(), "n,a=bob,"), b"\x01"),
    ):
        result, challenges, requests = exchange(mechanism, message, [answer])
        assert isinstance(result, Failure)
        for part in bad.split(".") + make_token().split("."):
            assert part not in result.reason
            assert part.encode() not in b"".join(challenges)
            assert part not in caplog.text
        assert "redacted" in repr(requests[0])
