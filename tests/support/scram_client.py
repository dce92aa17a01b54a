"""SCRAM-SHA-256 from the client's side (RFC 5802 §3), with any GS2 header: scramp, the
independent client, always sends "n,,", and a test of authorization identities needs
"n,a=bob,"."""

from __future__ import annotations

import base64
import hashlib
import hmac


def client_first_bare(user: str, nonce: bytes = b"client-nonce") -> bytes:
    return b"n=" + user.encode() + b",r=" + nonce


def client_final(password: str, header: bytes, first_bare: bytes, server_first: bytes) -> bytes:
    fields = dict(part.split(b"=", 1) for part in server_first.split(b","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(fields[b"s"]), int(fields[b"i"])
    )
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    without_proof = b"c=" + base64.b64encode(header) + b",r=" + fields[b"r"]
    auth_message = first_bare + b"," + server_first + b"," + without_proof
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return without_proof + b",p=" + base64.b64encode(proof)
