"""Argon2id through two libraries (auth/passwords.py): libsodium for the shape it makes,
``cryptography`` for the rest. They must agree on every PHC string, or a site that changes
parameters (or imports hashes from another tool) would lock users out."""

from __future__ import annotations

import os

import nacl.pwhash.argon2id as sodium_argon2id
import pytest
from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from hypothesis import given, settings
from hypothesis import strategies as st

from pop3d.auth.passwords import Argon2Parameters, hash_password, verify_password
from pop3d.security.secret import Secret

SMALL = Argon2Parameters(memory_kib=64, passes=1)


def _cryptography_hash(password: bytes, *, lanes: int = 1, tag: int = 32) -> str:
    kdf = Argon2id(salt=os.urandom(16), length=tag, iterations=1, lanes=lanes, memory_cost=64)
    return kdf.derive_phc_encoded(password)


def test_what_we_write_cryptography_verifies() -> None:
    for parameters in (SMALL, Argon2Parameters()):
        phc = hash_password(Secret(b"correct horse"), parameters)
        Argon2id.verify_phc_encoded(b"correct horse", phc)
        with pytest.raises(InvalidKey):
            Argon2id.verify_phc_encoded(b"correct horsE", phc)


def test_what_cryptography_writes_we_verify() -> None:
    phc = _cryptography_hash(b"correct horse")
    assert verify_password(Secret(b"correct horse"), phc)
    assert not verify_password(Secret(b"correct horsE"), phc)


def test_default_shape_is_the_one_libsodium_reads() -> None:
    # The fast path only helps if the hashes pop3d-admin writes are ones libsodium takes.
    phc = hash_password(Secret(b"pw"))
    assert len(phc) <= sodium_argon2id.PWHASH_SIZE
    assert sodium_argon2id.verify(phc.encode(), b"pw")


@pytest.mark.parametrize(("lanes", "tag"), [(4, 32), (1, 64), (2, 48)])
def test_shapes_libsodium_cannot_make_still_verify(lanes: int, tag: int) -> None:
    phc = _cryptography_hash(b"pw", lanes=lanes, tag=tag)
    assert verify_password(Secret(b"pw"), phc)
    assert not verify_password(Secret(b"pW"), phc)
    ours = hash_password(Secret(b"pw"), Argon2Parameters(64, 1, lanes=lanes, hash_bytes=tag))
    assert f"p={lanes}$" in ours
    assert verify_password(Secret(b"pw"), ours)


@pytest.mark.parametrize(
    "phc",
    [
        "",
        "garbage",
        "$argon2id$",
        "$argon2id$v=19$m=64,t=1,p=1$$",
        "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$é",
        "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 200,
    ],
)
def test_a_malformed_hash_is_a_mismatch_not_an_error(phc: str) -> None:
    assert not verify_password(Secret(b"pw"), phc)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=140))
def test_no_stored_string_makes_verification_raise(tail: str) -> None:
    assert not verify_password(Secret(b"pw"), "$argon2id$" + tail)
