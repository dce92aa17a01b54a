"""SCRAM-SHA-1, SCRAM-SHA-256, SCRAM-SHA-512 (RFC 5802, RFC 7677), each also -PLUS with
the channel bindings the transport offers.

The server stores only StoredKey and ServerKey per hash (``{SCRAM-SHA-256}i$salt$stored$server``
in the credential file), so a stolen file does not give the password and the login costs a
few HMACs, not a PBKDF2 run.

Nonces come from ``context.nonce`` (printable, no ","), so recorded exchanges replay.

Checks, each ending the exchange with a failure:
* GS2 header: "n" (no binding), "y" (client could bind but saw no -PLUS: a downgrade if we
  offered -PLUS), "p=<type>" only on -PLUS and only for a binding this connection has.
  The client picks the type (RFC 9266: tls-exporter on TLS 1.3, its default there, or
  tls-server-end-point; tls-unique on TLS 1.2); the TLS layer's facts say which exist;
* the channel-binding attribute ``c=`` must be exactly the GS2 header plus the binding data;
* the final nonce must be the one this exchange made (a replayed final message fails);
* mandatory extensions (``m=``) are refused; attributes must come in the RFC's order;
* the proof is compared in constant time.

An unknown user gets a salt and iteration count derived from a server secret
(:meth:`pop3d.auth.authenticator.Authenticator.fetch_secrets`), so the first server message
is the same shape either way and the failure comes at the same step.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

from pop3d.sasl import gs2_header, saslname
from pop3d.sasl.mechanism import (
    Challenge,
    Context,
    Failure,
    Flag,
    MalformedResponse,
    Mechanism,
    Run,
    Success,
)
from pop3d.sasl.requests import (
    FetchSecrets,
    Secrets,
)
from pop3d.sasl.saslprep import SASLprepError, saslprep
from pop3d.security.secret import Secret, equal

HASHES = {"SHA-1": "sha1", "SHA-256": "sha256", "SHA-512": "sha512"}
DEFAULT_ITERATIONS = 4096  # Cyrus's and Dovecot's; scram_iterations raises it
# RFC 5802 §7's c-nonce: printable, no ",". It goes back to the client in the server's
# first message, so a space, a control character or DEL was echoed (found probing).
_PRINTABLE = re.compile(rb"[\x21-\x2b\x2d-\x7e]+")


# A longer name is refused before SASLprep (RFC 4616's bound on PLAIN's authcid; no user
# name the identity rules take comes near it)
NAME_MAX_OCTETS = 255


@dataclass(frozen=True, slots=True)
class ScramKeys:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def encode(self) -> str:
        parts = (self.salt, self.stored_key, self.server_key)
        return f"{self.iterations}$" + "$".join(base64.b64encode(p).decode() for p in parts)

    @classmethod
    def decode(cls, text: str) -> ScramKeys:
        try:
            iterations, salt, stored, server = text.split("$")
            return cls(
                int(iterations),
                base64.b64decode(salt, validate=True),
                base64.b64decode(stored, validate=True),
                base64.b64decode(server, validate=True),
            )
        except (ValueError, binascii.Error):
            raise ValueError("malformed SCRAM credential") from None


def derive_keys(
    hash_name: str, password: Secret, salt: bytes, iterations: int = DEFAULT_ITERATIONS
) -> ScramKeys:
    """RFC 5802 §3, from the SASLprep'd password (SASLprepError if it cannot be)."""
    algorithm = HASHES[hash_name]
    prepared = saslprep(password.reveal().decode("utf-8")).encode("utf-8")
    salted = hashlib.pbkdf2_hmac(algorithm, prepared, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", algorithm).digest()
    server_key = hmac.new(salted, b"Server Key", algorithm).digest()
    return ScramKeys(iterations, salt, hashlib.new(algorithm, client_key).digest(), server_key)


def _attributes(message: bytes, expected: tuple[bytes, ...]) -> dict[bytes, bytes]:
    """``k=v,k=v`` with the mandatory keys first and in order; extensions after them are
    ignored unless mandatory (``m=``)."""
    parts = message.split(b",")
    values: dict[bytes, bytes] = {}
    for index, key in enumerate(expected):
        if index >= len(parts) or not parts[index].startswith(key + b"="):
            raise MalformedResponse(f"expected attribute {key.decode()}=")
        values[key] = parts[index][len(key) + 1 :]
    for extra in parts[len(expected) :]:
        if extra.startswith(b"m="):
            raise MalformedResponse("mandatory extension not supported")
    return values


class Scram(Mechanism):
    def __init__(self, hash_name: str, plus: bool) -> None:
        self.hash_name = hash_name
        self.algorithm = HASHES[hash_name]
        self.plus = plus
        self.scheme = f"SCRAM-{hash_name}"
        self.name = self.scheme + ("-PLUS" if plus else "")
        flags = Flag.MUTUAL
        if plus:
            flags |= Flag.CHANNEL_BINDING
        if hash_name == "SHA-1":
            flags |= Flag.LEGACY
        self.flags = flags
        self.credentials = (self.scheme,)

    def run(self, context: Context, initial: bytes | None) -> Run:
        client_first = initial if initial is not None else (yield Challenge(b""))
        gs2 = gs2_header.parse(client_first)
        header, authzid = gs2.raw, gs2.authzid
        binding = gs2_header.binding_data(gs2, context, self.plus)
        client_first_bare = gs2.rest
        first = _attributes(client_first_bare, (b"n", b"r"))
        name = saslname.decode(first[b"n"], "user name")
        if len(name.encode("utf-8")) > NAME_MAX_OCTETS:
            # SASLprep runs in Python on the event loop: 64 KiB of U+FDFA (18 characters
            # each after NFKC) held every session of the worker for 0.7 s (found probing)
            raise MalformedResponse(f"user name longer than {NAME_MAX_OCTETS} octets")
        try:
            user = saslprep(name)
        except (SASLprepError, UnicodeDecodeError):
            raise MalformedResponse("user name fails SASLprep") from None
        client_nonce = first[b"r"]
        if not user or not _PRINTABLE.fullmatch(client_nonce):
            raise MalformedResponse("empty user name or bad nonce")
        secrets = yield FetchSecrets(user, (self.scheme,))
        assert isinstance(secrets, Secrets)
        stored = secrets.values.get(self.scheme)
        if stored is None:
            return Failure(f"no {self.scheme} credential", user)
        try:
            keys = ScramKeys.decode(stored.reveal().decode("ascii"))
        except ValueError:
            return Failure(f"unusable {self.scheme} credential", user)
        nonce = client_nonce + context.nonce()
        server_first = (
            b"r=" + nonce + b",s=" + base64.b64encode(keys.salt) + b",i=%d" % keys.iterations
        )
        client_final = yield Challenge(server_first)
        without_proof, sep, proof_part = client_final.rpartition(b",p=")
        if not sep:
            raise MalformedResponse("no proof")
        final = _attributes(without_proof, (b"c", b"r"))
        try:
            channel = base64.b64decode(final[b"c"], validate=True)
            proof = base64.b64decode(proof_part, validate=True)
        except binascii.Error:
            raise MalformedResponse("bad base64 in client-final") from None
        if not equal(channel, header + binding):
            return Failure("channel binding mismatch", user)
        if not equal(final[b"r"], nonce):
            return Failure("nonce mismatch (a replayed or foreign message)", user)
        auth_message = client_first_bare + b"," + server_first + b"," + without_proof
        signature = hmac.new(keys.stored_key, auth_message, self.algorithm).digest()
        if len(proof) != len(signature):
            return Failure("proof of the wrong length", user)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not equal(hashlib.new(self.algorithm, client_key).digest(), keys.stored_key):
            if not secrets.known:
                return Failure("unknown user", user)
            if self.scheme in secrets.decoys:
                return Failure(f"no {self.scheme} credential stored", user)
            return Failure("wrong password", user)
        server_signature = hmac.new(keys.server_key, auth_message, self.algorithm).digest()
        return Success(user, authzid, final=b"v=" + base64.b64encode(server_signature))


def family() -> list[Scram]:
    return [Scram(h, plus) for h in ("SHA-512", "SHA-256", "SHA-1") for plus in (True, False)]
