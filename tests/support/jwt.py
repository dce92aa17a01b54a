"""JSON Web Tokens and keys made by hand (not with PyJWT, the library under test): JWKs of
public keys (RFC 7518 §6, RFC 8037 §2) and compact JWS tokens for RS256, PS256, ES256 and
EdDSA."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(value: int, length: int | None = None) -> str:
    length = length or (value.bit_length() + 7) // 8
    return b64url(value.to_bytes(length, "big"))


def jwk(key: Any, kid: str | None, **extra: Any) -> dict[str, Any]:
    """The public JWK of a private key (RFC 7518 §6, RFC 8037 §2)."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        out: dict[str, Any] = {"kty": "RSA", "n": _int(numbers.n), "e": _int(numbers.e)}
    elif isinstance(public, ec.EllipticCurvePublicKey):
        point = public.public_numbers()
        out = {"kty": "EC", "crv": "P-256", "x": _int(point.x, 32), "y": _int(point.y, 32)}
    else:
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        out = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    if kid is not None:
        out["kid"] = kid
    out.update(extra)
    return out


def signing_input(header: dict[str, Any], claims: dict[str, Any]) -> bytes:
    return (
        b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    ).encode()


def sign(key: Any, alg: str, data: bytes) -> bytes:
    if alg == "RS256":
        return bytes(key.sign(data, padding.PKCS1v15(), hashes.SHA256()))
    if alg == "PS256":
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return bytes(key.sign(data, pss, hashes.SHA256()))
    if alg == "ES256":
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    if alg == "EdDSA":
        return bytes(key.sign(data))
    raise AssertionError(alg)


def token(key: Any, alg: str, header: dict[str, Any], body: dict[str, Any]) -> str:
    """A compact JWS of ``body`` signed with ``key``; ``header`` gets ``alg`` added."""
    data = signing_input({"alg": alg, **header}, body)
    return data.decode() + "." + b64url(sign(key, alg, data))
