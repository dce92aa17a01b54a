"""Password hashing: Argon2id (RFC 9106) through ``cryptography``, in PHC string form.

The default parameters are one of OWASP's equivalent Argon2id settings: 7 MiB, 5 passes,
1 lane (OWASP lists it beside 19 MiB/2 passes as the same level of defence). Of those we
take the smallest memory on purpose: a server verifies many passwords, and glibc keeps a
hashing thread's buffer after it is freed, so the memory per hash is memory a worker holds
for good (bench/RESULTS.md: 39 MiB per worker at 19 MiB, which alone is 78 KiB per idle
connection at 1,000 connections). It also costs less CPU here (fewer cache misses for the
same work). Sites raise the parameters with ``argon2_memory`` and ``argon2_passes``; the
PHC string carries its own parameters, so existing hashes keep verifying after a change.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from pop3d.security.secret import Secret, equal


@dataclass(frozen=True, slots=True)
class Argon2Parameters:
    memory_kib: int = 7168
    passes: int = 5
    lanes: int = 1
    salt_bytes: int = 16
    hash_bytes: int = 32


def hash_password(password: Secret, parameters: Argon2Parameters | None = None) -> str:
    p = parameters or Argon2Parameters()
    kdf = Argon2id(
        salt=os.urandom(p.salt_bytes),
        length=p.hash_bytes,
        iterations=p.passes,
        lanes=p.lanes,
        memory_cost=p.memory_kib,
    )
    return kdf.derive_phc_encoded(password.reveal())


def verify_password(password: Secret, phc: str) -> bool:
    try:
        Argon2id.verify_phc_encoded(password.reveal(), phc)
    except (InvalidKey, ValueError):
        return False
    return True


def apop_digest(challenge: str, secret: bytes) -> str:
    """RFC 1939 §7: MD5 of the greeting's timestamp followed by the shared secret."""
    return hashlib.md5(challenge.encode("ascii") + secret, usedforsecurity=False).hexdigest()


def apop_matches(challenge: str, secret: bytes, digest_hex: str) -> bool:
    return equal(apop_digest(challenge, secret).encode(), digest_hex.lower().encode())
