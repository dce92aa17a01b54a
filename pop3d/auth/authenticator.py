"""Verifies credentials for every login method. Mechanisms and commands never see the
credential file: they ask this object, as Dovecot's lib-sasl asks its auth backend.

Methods here block (Argon2 takes tens of milliseconds); drivers call them from a thread
pool so one login never stalls the other sessions of a worker.

Timing: an unknown user costs the same Argon2 verification as a known one (against a hash
made at start-up with the site's parameters), and both failures return the same result to
the session, which sends one text for both.

The verification cache (``auth_cache_ttl``, 0 disables it) remembers successful password
checks for a while, keyed by HMAC-SHA256 under a per-process random key of (user, stored
hash, password). It holds no password and nothing usable outside this process; a password
change alters the stored hash and so misses the cache at once. It is what lets a worker
serve frequent polls without paying Argon2 on each; see SECURITY.md for the trade-off.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Protocol

from pop3d.auth.credentials import SCHEME_ARGON2ID, SCHEME_PLAIN_B64, CredentialFile
from pop3d.auth.passwords import Argon2Parameters, apop_matches, hash_password, verify_password
from pop3d.sasl.requests import (
    AuthResult,
    Secrets,
)
from pop3d.sasl.scram import DEFAULT_ITERATIONS, HASHES, ScramKeys
from pop3d.security.secret import Secret

_CACHE_MAX = 100_000
log = logging.getLogger("pop3d")


class PasswordCheck(Protocol):
    """What an external password checker answers (``saslauthd.SaslauthdResult`` is one)."""

    @property
    def ok(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def unavailable(self) -> bool: ...


# Checks a user's password somewhere else (sasl_pwcheck_method: saslauthd); blocking.
PasswordChecker = Callable[[str, Secret], PasswordCheck]


class Authenticator:
    def __init__(
        self,
        credentials: CredentialFile,
        argon2: Argon2Parameters | None = None,
        *,
        cache_ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        decoy_key: bytes | None = None,
        scram_iterations: int = DEFAULT_ITERATIONS,
        password_checker: PasswordChecker | None = None,
    ) -> None:
        self.credentials = credentials
        self._password_checker = password_checker
        # Without a persistent key, decoys would change with every restart, which an
        # observer could notice; the service context passes the one from disk.
        self._decoy_key = decoy_key or secrets.token_bytes(32)
        self._scram_iterations = scram_iterations
        self._dummy_hash = hash_password(Secret(secrets.token_bytes(16)), argon2)
        self._cache_ttl = cache_ttl
        self._cache_key = secrets.token_bytes(32)
        self._cache: dict[bytes, float] = {}
        self._cache_lock = threading.Lock()
        self._clock = clock

    def verified_recently(self, user: str, password: Secret) -> AuthResult | None:
        """A cache hit, cheaply (one stat, one HMAC): drivers call this on the event loop
        and go to a thread only on a miss. None: not known, ask verify_password."""
        if self._password_checker is not None or self._cache_ttl <= 0:
            return None
        record = self.credentials.lookup(user)
        stored = record.secrets.get(SCHEME_ARGON2ID) if record else None
        if stored is None:
            return None
        key = self._cache_tag(user, stored, password)
        if key is not None and self._cached(key):
            return AuthResult(user)
        return None

    def verify_password(self, user: str, password: Secret) -> AuthResult:
        if self._password_checker is not None:
            # sasl_pwcheck_method: saslauthd. The backend decides, and its timing is its
            # own: no dummy Argon2 (both outcomes already take the same path) and no cache
            # (nothing here would notice a password change or a locked account).
            result = self._password_checker(user, password)
            if result.unavailable:
                log.error("cannot check the password of %s: %s", user, result.reason)
            return AuthResult(user) if result.ok else AuthResult(None, result.reason)
        record = self.credentials.lookup(user)
        stored = record.secrets.get(SCHEME_ARGON2ID) if record else None
        if stored is None:
            verify_password(password, self._dummy_hash)
            return AuthResult(None, "unknown user" if record is None else "no password set")
        key = self._cache_tag(user, stored, password)
        if key is not None and self._cached(key):
            return AuthResult(user)
        if not verify_password(password, stored):
            return AuthResult(None, "wrong password")
        if key is not None:
            self._remember(key)
        return AuthResult(user)

    def resolve_user(self, user: str) -> AuthResult:
        """Whether ``user`` exists (for logins proven by something other than a password)."""
        if self.credentials.lookup(user) is None:
            return AuthResult(None, "unknown user")
        return AuthResult(user)

    def fetch_secrets(self, user: str, schemes: tuple[str, ...]) -> Secrets:
        """Stored secrets for SASL mechanisms. A SCRAM scheme with nothing stored (unknown
        user, or a user without that hash) is answered with a decoy derived from the server
        secret: the same salt and iteration count every time for that name, keys that match
        no password. An observer cannot tell the cases apart from the exchange."""
        record = self.credentials.lookup(user)
        stored = record.secrets if record else {}
        values: dict[str, Secret] = {}
        decoys: set[str] = set()
        for scheme in schemes:
            if scheme in stored:
                values[scheme] = Secret(stored[scheme].encode("utf-8"))
            elif scheme.startswith("SCRAM-"):
                values[scheme] = Secret(self._scram_decoy(user, scheme).encode("ascii"))
                decoys.add(scheme)
        return Secrets(user, record is not None, values, frozenset(decoys))

    def _scram_decoy(self, user: str, scheme: str) -> str:
        def derive(label: bytes, size: int) -> bytes:
            message = b"\0".join((label, scheme.encode(), user.encode("utf-8")))
            return hmac.new(self._decoy_key, message, hashlib.sha512).digest()[:size]

        size = hashlib.new(HASHES[scheme.removeprefix("SCRAM-")]).digest_size
        keys = ScramKeys(
            self._scram_iterations,
            derive(b"salt", 16),
            derive(b"stored", size),
            derive(b"server", size),
        )
        return keys.encode()

    def verify_apop(self, user: str, challenge: str, digest: str) -> AuthResult:
        record = self.credentials.lookup(user)
        encoded = record.secrets.get(SCHEME_PLAIN_B64) if record else None
        try:
            secret = base64.b64decode(encoded, validate=True) if encoded else None
        except (binascii.Error, ValueError):
            secret = None
        if secret is None:
            apop_matches(challenge, b"", digest)  # same work either way
            return AuthResult(None, "unknown user" if record is None else "no APOP secret")
        if not apop_matches(challenge, secret, digest):
            return AuthResult(None, "wrong APOP digest")
        return AuthResult(user)

    # --- cache ----------------------------------------------------------------------

    def _cache_tag(self, user: str, stored: str, password: Secret) -> bytes | None:
        if self._cache_ttl <= 0:
            return None
        message = b"\0".join((user.encode(), stored.encode(), password.reveal()))
        return hmac.new(self._cache_key, message, hashlib.sha256).digest()

    def _cached(self, key: bytes) -> bool:
        with self._cache_lock:
            expiry = self._cache.get(key)
            if expiry is None:
                return False
            if expiry < self._clock():
                del self._cache[key]
                return False
            return True

    def _remember(self, key: bytes) -> None:
        now = self._clock()
        with self._cache_lock:
            if len(self._cache) >= _CACHE_MAX:
                self._cache = {k: v for k, v in self._cache.items() if v >= now}
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
            self._cache[key] = now + self._cache_ttl
