"""Password hashing: Argon2id (RFC 9106) through ``cryptography``, in PHC string form.

The parameters are the OWASP 2024 minimum for Argon2id (19 MiB, 2 passes, 1 lane), about
50 ms per verification on the reference machine; sites raise them with ``argon2_memory``,
``argon2_passes``. The PHC string carries its own parameters, so old hashes keep verifying
after a change.
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
    memory_kib: int = 19456
    passes: int = 2
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
