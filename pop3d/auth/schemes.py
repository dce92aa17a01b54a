"""Turning one password into every stored scheme a site needs (``pop3d-admin passwd``)."""

from __future__ import annotations

import base64
import os

from pop3d.auth.credentials import SCHEME_ARGON2ID, SCHEME_PLAIN_B64
from pop3d.auth.passwords import Argon2Parameters, hash_password, stored_form
from pop3d.sasl.saslprep import SASLprepError
from pop3d.sasl.scram import DEFAULT_ITERATIONS, derive_keys
from pop3d.security.secret import Secret


def derive(
    password: Secret,
    schemes: set[str],
    argon2: Argon2Parameters | None = None,
    scram_iterations: int = DEFAULT_ITERATIONS,
) -> tuple[dict[str, str], list[str]]:
    """(stored values by scheme, warnings). ARGON2ID is always written, of the password's
    SASLprep form where it has one (RFC 4616 §2; logins try that form first); SCRAM
    schemes are skipped with a warning when the password fails SASLprep (RFC 4013). The
    plaintext equivalent (APOP, CRAM-MD5) stays the password as typed: those clients
    digest what their users type."""
    values = {SCHEME_ARGON2ID: hash_password(stored_form(password), argon2)}
    warnings: list[str] = []
    for scheme in sorted(schemes):
        if scheme.startswith("SCRAM-"):
            try:
                keys = derive_keys(
                    scheme.removeprefix("SCRAM-"), password, os.urandom(16), scram_iterations
                )
            except (SASLprepError, UnicodeDecodeError) as exc:
                warnings.append(f"{scheme} not stored: the password fails SASLprep ({exc})")
                continue
            values[scheme] = keys.encode()
        elif scheme == SCHEME_PLAIN_B64:
            values[scheme] = base64.b64encode(password.reveal()).decode("ascii")
    return values, warnings
