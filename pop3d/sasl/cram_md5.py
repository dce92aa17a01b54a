"""CRAM-MD5 (RFC 2195): the server sends ``<nonce@servername>``, the client answers with
its user name, a space and HMAC-MD5(password, challenge) in lower-case hex.

Security properties, and why the mechanism is LEGACY (offered only when sasl_mech_list
names it):

* the password does not cross the wire, but anyone who records one exchange can test
  password guesses offline against it (DICTIONARY);
* the server must hold a plaintext equivalent (``PLAIN.B64``), so a stolen credential file
  gives away the password itself;
* the server proves nothing to the client, and nothing binds the exchange to the TLS
  channel, so a man in the middle can relay it.

An unknown user, or one with no plaintext equivalent stored, costs the same HMAC as a
known one and fails at the same step, so the exchange does not tell the cases apart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from secrets import token_bytes

from pop3d.sasl.mechanism import (
    Challenge,
    Context,
    Failure,
    Flag,
    MalformedResponse,
    Mechanism,
    Run,
    Success,
    utf8,
)
from pop3d.sasl.requests import (
    FetchSecrets,
    Secrets,
)
from pop3d.security.secret import equal

SCHEME = "PLAIN.B64"
MAX_RESPONSE = 4096  # a user name and 32 hex digits; anything longer is not a response
_HEX = frozenset(b"0123456789abcdefABCDEF")


def challenge_for(context: Context) -> bytes:
    """RFC 2195 §2: a msg-id, unique for every exchange (the nonce makes it so)."""
    nonce = context.nonce().decode("ascii")
    return f"<{nonce}@{context.servername}>".encode()


def digest(secret: bytes, challenge: bytes) -> bytes:
    """The client's proof, as lower-case hex."""
    return hmac.new(secret, challenge, hashlib.md5).hexdigest().encode("ascii")


def stored_secret(secrets: Secrets) -> tuple[bytes | None, str]:
    """The shared secret (the password), or None and why there is none."""
    stored = secrets.values.get(SCHEME)
    if stored is None:
        return None, "no plaintext-equivalent stored" if secrets.known else "unknown user"
    try:
        return base64.b64decode(stored.reveal(), validate=True), ""
    except (binascii.Error, ValueError):
        return None, f"unusable {SCHEME} credential"


class CramMd5(Mechanism):
    name = "CRAM-MD5"
    flags = Flag.DICTIONARY | Flag.LEGACY
    credentials = (SCHEME,)

    def run(self, context: Context, initial: bytes | None) -> Run:
        if initial is not None:
            # The challenge comes from the server, so there is nothing to answer yet
            # (RFC 4422 §5: a server-first mechanism takes no initial response).
            raise MalformedResponse("CRAM-MD5 takes no initial response")
        challenge = challenge_for(context)
        response = yield Challenge(challenge)
        if len(response) > MAX_RESPONSE:
            raise MalformedResponse("response too long")
        # The last space: RFC 2195 does not forbid spaces in the user name, and the digest
        # never holds one.
        user_raw, sep, client_digest = response.rpartition(b" ")
        if not sep or len(client_digest) != 32 or not set(client_digest) <= _HEX:
            raise MalformedResponse("expected: user SP 32 hex digits")
        user = utf8(user_raw, "user name")
        if not user:
            raise MalformedResponse("empty user name")
        secrets = yield FetchSecrets(user, (SCHEME,))
        assert isinstance(secrets, Secrets)
        secret, missing = stored_secret(secrets)
        # The dummy key keeps the work the same; the result is thrown away.
        expected = digest(token_bytes(16) if secret is None else secret, challenge)
        matches = equal(expected, client_digest.lower())
        if secret is None:
            return Failure(missing, user)
        if not matches:
            return Failure("wrong password", user)
        return Success(user)
