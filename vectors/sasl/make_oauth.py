"""Writes vectors/sasl/oauth.json and vectors/sasl/oauth-jwks.json: the OAUTHBEARER and
XOAUTH2 test vectors (run ``.venv/bin/python vectors/sasl/make_oauth.py``).

Two kinds of case:

* the published examples (RFC 7628 §4.1 and §4.3, Google's XOAUTH2 page, as quoted in
  ../shared/reference/sasl-vectors.md). Their tokens are opaque strings, not JWTs, so
  pop3d refuses them: the server message in each case is pop3d's own error (the RFC's
  server sent its own JSON), and the client's answer is the published "AQ==" (0x01);
* JWTs made here, signed with three key pairs generated on each run (RSA 2048 "lab-rsa",
  EC P-256 "lab-ec", Ed25519 "lab-ed25519"). Only the public halves are kept, in
  oauth-jwks.json; the private keys are thrown away, so running the script again makes
  new keys, a new JWKS and new tokens (commit all three files together).

Tokens use fixed times: issued 2026-01-01, expiring 2100-01-01 (the expired case:
2000-01-01; the not-yet-valid one: nbf 2099-01-01), so the success cases stay valid.
The validator the tests build for these vectors: issuer ISSUER, audience AUDIENCE, the
default algorithms (RS256 ES256 EdDSA), user claim "email", no required scope.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

HERE = Path(__file__).resolve().parent
ISSUER = "https://issuer.example.com"
AUDIENCE = "pop3d.example.com"
IAT = 1767225600  # 2026-01-01T00:00:00Z
EXP = 4102444800  # 2100-01-01T00:00:00Z
PAST = 946684800  # 2000-01-01T00:00:00Z
NOTE = (
    f"token made by make_oauth.py: issuer {ISSUER}, audience {AUDIENCE}, "
    "keys in oauth-jwks.json, user claim email"
)

# What pop3d answers a refused token with (our choice, fixed here independently of the
# implementation): RFC 7628 §3.2.2 for OAUTHBEARER, Google's HTTP status for XOAUTH2.
OAUTHBEARER_ERROR = '{"status":"invalid_token","schemes":"bearer"}'
XOAUTH2_ERROR = '{"status":"401","schemes":"bearer"}'
KV = "\x01"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(user: str = "user@example.com", **changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "248289761001",
        "email": user,
        "iat": IAT,
        "exp": EXP,
        "scope": "openid email mail",
    }
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def oauthbearer(token: str, authzid: str = "user@example.com") -> str:
    header = f"n,a={authzid}," if authzid else "n,,"
    return f"{header}{KV}host=server.example.com{KV}port=110{KV}auth=Bearer {token}{KV}{KV}"


def xoauth2(token: str, user: str = "someuser@example.com") -> str:
    return f"user={user}{KV}auth=Bearer {token}{KV}{KV}"


def case(  # noqa: PLR0917 (one row of the vector table)
    name: str,
    source: str,
    mechanism: str,
    user: str,
    steps: list[list[str]],
    outcome: str,
    note: str = NOTE,
) -> dict[str, Any]:
    return {
        "name": name,
        "source": source,
        "valid": outcome == "success",
        "mechanism": mechanism,
        "user": user,
        "password": "",
        "steps": steps,
        "outcome": outcome,
        "note": note,
    }


def refused_oauthbearer(message: str) -> list[list[str]]:
    return [["C", message], ["S", OAUTHBEARER_ERROR], ["C64", "AQ=="]]


def refused_xoauth2(message: str) -> list[list[str]]:
    return [["C", message], ["S", XOAUTH2_ERROR], ["C", ""]]


def published() -> list[dict[str, Any]]:
    rfc_41 = (
        "bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9Q"
        "mVhcmVyIHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB"
    )
    rfc_text = base64.b64decode(rfc_41).decode()
    google = (
        "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbG"
        "NrQmhiSFJoZG1semRHRXVZMjl0Q2cBAQ=="
    )
    opaque = "the token is opaque, not a JWT: refused with pop3d's error"
    return [
        case(
            "rfc7628-section-4.1",
            "RFC 7628 §4.1 initial response (base64 as published)",
            "OAUTHBEARER",
            "user@example.com",
            [["C64", rfc_41], ["S", OAUTHBEARER_ERROR], ["C64", "AQ=="]],
            "failure",
            opaque,
        ),
        case(
            "rfc7628-section-4.3",
            "RFC 7628 §4.3 failure exchange: the error challenge answered by AQ==",
            "OAUTHBEARER",
            "user@example.com",
            [["C", rfc_text], ["S", OAUTHBEARER_ERROR], ["C64", "AQ=="]],
            "failure",
            opaque + ' (the RFC\'s server sent {"status":"invalid_token","scope":'
            '"example_scope","openid-configuration":...})',
        ),
        case(
            "rfc7628-section-4.1-no-initial-response",
            "RFC 7628 §4.1 message after an empty challenge (RFC 7628 §3.2.1)",
            "OAUTHBEARER",
            "user@example.com",
            [["S", ""], ["C", rfc_text], ["S", OAUTHBEARER_ERROR], ["C64", "AQ=="]],
            "failure",
            opaque,
        ),
        case(
            "rfc7628-section-4.3-wrong-answer",
            "RFC 7628 §4.3, the error challenge answered by something other than 0x01",
            "OAUTHBEARER",
            "user@example.com",
            [["C", rfc_text], ["S", OAUTHBEARER_ERROR], ["C", "=x"]],
            "failure",
            opaque,
        ),
        case(
            "google-xoauth2",
            "Google XOAUTH2 documentation example (base64 as published)",
            "XOAUTH2",
            "someuser@example.com",
            [["C64", google], ["S", XOAUTH2_ERROR], ["C", ""]],
            "failure",
            opaque + "; the client answers the error with an empty response",
        ),
    ]


def generated() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    jwks = {
        "keys": [
            {
                **RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True),
                "kid": "lab-rsa",
                "use": "sig",
                "alg": "RS256",
            },
            {
                **ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True),
                "kid": "lab-ec",
                "use": "sig",
                "alg": "ES256",
            },
            {
                **OKPAlgorithm.to_jwk(ed_key.public_key(), as_dict=True),
                "kid": "lab-ed25519",
                "use": "sig",
                "alg": "EdDSA",
            },
        ]
    }

    def sign(payload: dict[str, Any], key: Any, alg: str, kid: str) -> str:
        return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})

    def rs256(payload: dict[str, Any], kid: str = "lab-rsa") -> str:
        return sign(payload, rsa_key, "RS256", kid)

    def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
        return b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())

    good = rs256(claims())
    head, _, rest = good.partition(".")
    _, _, signature = rest.partition(".")
    tampered = f"{head}.{b64url(json.dumps(claims('admin@example.com')).encode())}.{signature}"
    confusion_input = unsigned({"alg": "HS256", "typ": "JWT", "kid": "lab-rsa"}, claims())
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    confusion_mac = hmac.new(pem, confusion_input.encode(), hashlib.sha256).digest()
    confusion = confusion_input + "." + b64url(confusion_mac)
    alg_none = unsigned({"alg": "none", "typ": "JWT"}, claims()) + "."

    ok = "OAUTHBEARER"
    cases = [
        case(
            "oauthbearer-rs256",
            "generated JWT, RS256, authzid = token user",
            ok,
            "user@example.com",
            [["C", oauthbearer(good)]],
            "success",
        ),
        case(
            "oauthbearer-es256-no-authzid",
            "generated JWT, ES256, no authzid",
            ok,
            "user@example.com",
            [["C", oauthbearer(sign(claims(), ec_key, "ES256", "lab-ec"), "")]],
            "success",
        ),
        case(
            "oauthbearer-eddsa-no-initial-response",
            "generated JWT, EdDSA (Ed25519), after an empty challenge",
            ok,
            "user@example.com",
            [["S", ""], ["C", oauthbearer(sign(claims(), ed_key, "EdDSA", "lab-ed25519"))]],
            "success",
        ),
        case(
            "oauthbearer-authzid-other-case",
            "generated JWT, authzid differs only in case",
            ok,
            "user@example.com",
            [["C", oauthbearer(good, "User@Example.COM")]],
            "success",
        ),
        case(
            "xoauth2-rs256",
            "generated JWT, RS256, Google's XOAUTH2 format",
            "XOAUTH2",
            "someuser@example.com",
            [["C", xoauth2(rs256(claims("someuser@example.com")))]],
            "success",
        ),
        case(
            "oauthbearer-expired",
            "generated JWT, exp 2000-01-01",
            ok,
            "user@example.com",
            refused_oauthbearer(oauthbearer(rs256(claims(exp=PAST, iat=PAST - 3600)))),
            "failure",
        ),
        case(
            "oauthbearer-not-yet-valid",
            "generated JWT, nbf 2099-01-01",
            ok,
            "user@example.com",
            refused_oauthbearer(oauthbearer(rs256(claims(nbf=EXP - 31536000)))),
            "failure",
        ),
        case(
            "oauthbearer-wrong-audience",
            "generated JWT for another audience",
            ok,
            "user@example.com",
            refused_oauthbearer(oauthbearer(rs256(claims(aud="imap.example.com")))),
            "failure",
        ),
        case(
            "oauthbearer-wrong-issuer",
            "generated JWT from another issuer",
            ok,
            "user@example.com",
            refused_oauthbearer(oauthbearer(rs256(claims(iss="https://evil.example")))),
            "failure",
        ),
        case(
            "oauthbearer-unknown-kid",
            "generated JWT naming a kid not in the JWKS",
            ok,
            "user@example.com",
            refused_oauthbearer(oauthbearer(rs256(claims(), "lab-old"))),
            "failure",
        ),
        case(
            "oauthbearer-tampered-payload",
            "generated JWT whose payload was replaced (email admin@...), signature kept",
            ok,
            "admin@example.com",
            refused_oauthbearer(oauthbearer(tampered, "admin@example.com")),
            "failure",
        ),
        case(
            "oauthbearer-alg-none",
            'unsigned JWT, header "alg":"none"',
            ok,
            "user@example.com",
            refused_oauthbearer(oauthbearer(alg_none)),
            "failure",
        ),
        case(
            "oauthbearer-hs256-key-confusion",
            "JWT with header HS256, MAC keyed with the RSA public key (PEM)",
            ok,
            "user@example.com",
            refused_oauthbearer(oauthbearer(confusion)),
            "failure",
        ),
        case(
            "oauthbearer-authzid-mismatch",
            "valid JWT for user@, authzid other@",
            ok,
            "other@example.com",
            refused_oauthbearer(oauthbearer(good, "other@example.com")),
            "failure",
        ),
        case(
            "xoauth2-expired",
            "generated JWT, exp 2000-01-01, XOAUTH2",
            "XOAUTH2",
            "someuser@example.com",
            refused_xoauth2(
                xoauth2(rs256(claims("someuser@example.com", exp=PAST, iat=PAST - 3600)))
            ),
            "failure",
        ),
        case(
            "xoauth2-user-mismatch",
            "valid JWT for user@, XOAUTH2 user=someuser@",
            "XOAUTH2",
            "someuser@example.com",
            refused_xoauth2(xoauth2(good)),
            "failure",
        ),
    ]
    return jwks, cases


def main() -> None:
    jwks, cases = generated()
    (HERE / "oauth-jwks.json").write_text(json.dumps(jwks, indent=1) + "\n", encoding="utf-8")
    everything = published() + cases
    (HERE / "oauth.json").write_text(
        json.dumps(everything, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(f"wrote {len(everything)} cases and {len(jwks['keys'])} keys")


if __name__ == "__main__":
    main()
