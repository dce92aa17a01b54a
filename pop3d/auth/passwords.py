"""Password hashing: Argon2id (RFC 9106) in PHC string form, through libsodium (PyNaCl)
where it can and ``cryptography`` otherwise.

Why two libraries: a login without a cached verification is one Argon2id run, and that is
what bounds uncached logins per second. libsodium's AVX2 code verifies the default hash in
16 to 20 ms of CPU on the bench machine where ``cryptography`` takes 25 to 33 (bench/
RESULTS.md, section 3.2). But libsodium only makes one shape of hash (1 lane, 16-octet
salt, 32-octet tag) and reads PHC strings of at most 127 characters, so the rest
(non-default ``Argon2Parameters``, or hashes written by another tool) goes through
``cryptography``. Both are the same RFC 9106 function on the same PHC string: either one
verifies what the other made (tests/auth/test_passwords.py).

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

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass

import nacl.exceptions
import nacl.pwhash.argon2id as sodium_argon2id
from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from pop3d.sasl.saslprep import SASLprepError, saslprep
from pop3d.security.secret import Secret, equal


@dataclass(frozen=True, slots=True)
class Argon2Parameters:
    memory_kib: int = 7168
    passes: int = 5
    lanes: int = 1
    salt_bytes: int = 16
    hash_bytes: int = 32


# libsodium's one shape, and the longest PHC string its verifier reads.
_SODIUM_SHAPE = (1, 16, 32)
_SODIUM_PHC_MAX = sodium_argon2id.PWHASH_SIZE


def hash_password(password: Secret, parameters: Argon2Parameters | None = None) -> str:
    p = parameters or Argon2Parameters()
    if (p.lanes, p.salt_bytes, p.hash_bytes) == _SODIUM_SHAPE and _sodium_accepts(p):
        phc = sodium_argon2id.str(
            password.reveal(), opslimit=p.passes, memlimit=p.memory_kib * 1024
        )
        return phc.decode("ascii")
    kdf = Argon2id(
        salt=os.urandom(p.salt_bytes),
        length=p.hash_bytes,
        iterations=p.passes,
        lanes=p.lanes,
        memory_cost=p.memory_kib,
    )
    return kdf.derive_phc_encoded(password.reveal())


def _sodium_accepts(p: Argon2Parameters) -> bool:
    return (
        sodium_argon2id.OPSLIMIT_MIN <= p.passes <= sodium_argon2id.OPSLIMIT_MAX
        and sodium_argon2id.MEMLIMIT_MIN <= p.memory_kib * 1024 <= sodium_argon2id.MEMLIMIT_MAX
    )


# RFC 4616 §2: a server MUST take authcid and passwd of up to 255 octets; longer
# passwords are compared as sent (password_forms).
PREPARED_MAX_OCTETS = 255


def password_forms(password: Secret) -> tuple[Secret, ...]:
    """The forms of a password to try against a stored Argon2id hash, in order.

    RFC 4616 §2 (PLAIN; USER/PASS carries the same string): the presented and the stored
    password are prepared with SASLprep (RFC 4013) before they are compared, so the same
    password typed as U+2168 or as "IX", with a no-break space or a soft hyphen, decomposed
    or not, is one password, as it already is for SCRAM. ``pop3d-admin passwd`` hashes the
    prepared form (:func:`stored_form`). A hash stored before it did, of a password that
    SASLprep changes, is still found by trying the password as sent second: two Argon2id
    runs, only for such passwords, and as many for a user who does not exist (the decoy
    is tried with every form), so the count tells nothing about the account.

    A password in ASCII is its own prepared form (SASLprep maps and normalises nothing
    there, and refuses only the control characters), and so is one that SASLprep refuses
    or that is not UTF-8: those are tried as sent, once. So is one longer than the 255
    octets RFC 4616 asks a server to take: SASLprep runs in Python over what NFKC makes
    of it, up to 18 characters for one, and 64 KiB of U+FDFA in an AUTH PLAIN answer
    cost 0.7 s of the hashing thread per attempt, the queue of password checks behind it
    (found probing)."""
    raw = password.reveal()
    if raw.isascii() or len(raw) > PREPARED_MAX_OCTETS:
        return (password,)
    try:
        prepared = saslprep(raw.decode("utf-8")).encode("utf-8")
    except (UnicodeDecodeError, SASLprepError):
        return (password,)
    if prepared == raw:
        return (password,)
    return (Secret(prepared), password)


def stored_form(password: Secret) -> Secret:
    """What ``pop3d-admin passwd`` hashes: the SASLprep form of the password where it has
    one (:func:`password_forms`)."""
    return password_forms(password)[0]


def verify_password(password: Secret, phc: str) -> bool:
    if phc.startswith("$argon2id$") and len(phc) <= _SODIUM_PHC_MAX:
        try:
            return sodium_argon2id.verify(phc.encode("ascii"), password.reveal())
        except nacl.exceptions.InvalidkeyError:
            return False
        except (nacl.exceptions.ValueError, UnicodeEncodeError):
            pass  # a string libsodium does not read: cryptography decides
    try:
        Argon2id.verify_phc_encoded(password.reveal(), phc)
    except (InvalidKey, ValueError):
        return False
    return True


def phc_parameters(phc: str) -> Argon2Parameters | None:
    """The parameters an Argon2id PHC string was made with (None if it is not one)."""
    parts = phc.split("$")
    # "", "argon2id", "v=19", "m=..,t=..,p=..", salt, hash
    if len(parts) != 6 or parts[1] != "argon2id" or not parts[2].startswith("v="):
        return None
    try:
        fields = dict(item.split("=", 1) for item in parts[3].split(","))
        salt, tag = (_unpadded_b64decode(part) for part in parts[4:])
        return Argon2Parameters(
            memory_kib=int(fields["m"]),
            passes=int(fields["t"]),
            lanes=int(fields["p"]),
            salt_bytes=len(salt),
            hash_bytes=len(tag),
        )
    except (KeyError, ValueError, binascii.Error):
        return None


def _unpadded_b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def decoy_hash(parameters: Argon2Parameters) -> str:
    """A PHC string with these parameters, a random salt and a random tag: verifying any
    password against it costs what verifying against a real hash with the same parameters
    costs, and fails. No hashing is needed to make one."""

    def encode(size: int) -> str:
        return base64.b64encode(os.urandom(size)).decode("ascii").rstrip("=")

    p = parameters
    return (
        f"$argon2id$v=19$m={p.memory_kib},t={p.passes},p={p.lanes}"
        f"${encode(p.salt_bytes)}${encode(p.hash_bytes)}"
    )


def apop_digest(challenge: str, secret: bytes) -> str:
    """RFC 1939 §7: MD5 of the greeting's timestamp followed by the shared secret."""
    return hashlib.md5(challenge.encode("ascii") + secret, usedforsecurity=False).hexdigest()


def apop_matches(challenge: str, secret: bytes, digest_hex: str) -> bool:
    return equal(apop_digest(challenge, secret).encode(), digest_hex.lower().encode())
