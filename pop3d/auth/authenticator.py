"""Verifies credentials for every login method. Mechanisms and commands never see the
credential file: they ask this object, as Dovecot's lib-sasl asks its auth backend.

Methods here block (Argon2 takes tens of milliseconds); drivers call them from a thread
pool so one login never stalls the other sessions of a worker.

Timing: an unknown user costs the same Argon2 verification as a known one, and both
failures return the same result to the session, which sends one text for both. Decoys (the
dummy Argon2 hash, the SCRAM iteration count and salt size) copy the most common parameters
stored in the credential file, not the current settings: after a site raises
``argon2_passes`` or ``scram_iterations``, stored users keep their old parameters until
their password changes, and a decoy built from the settings would stand out from all of
them. The settings are used only while nothing is stored.

The verification cache (``auth_cache_ttl``, 0 disables it) remembers successful password
checks for a while: under a keyed BLAKE2b of (user, password), with a per-process random
key, it keeps when the entry expires, the credential file's generation the stored hash was
read from, and a keyed BLAKE2b of that hash. It holds no password and nothing usable
outside this process. A poll whose file is the generation it was verified against (and
had not changed for 2 s then: CredentialFile.settled_generation) is a hit without reading
the user's line (one ``stat``, one BLAKE2b); after any change to the file the line is read
again and the entry holds only while the user's stored hash is the one verified, so a
password change misses the cache at once. It is what lets a worker serve frequent polls
without paying Argon2 on each; see SECURITY.md for the trade-off.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from pop3d.auth.credentials import SCHEME_ARGON2ID, SCHEME_PLAIN_B64, CredentialFile, UserRecord
from pop3d.auth.passwords import (
    Argon2Parameters,
    apop_matches,
    decoy_hash,
    password_forms,
    phc_parameters,
    verify_password,
)
from pop3d.sasl.requests import (
    AuthResult,
    Secrets,
)
from pop3d.sasl.scram import DEFAULT_ITERATIONS, HASHES, ScramKeys
from pop3d.security.secret import Secret, equal

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


class PasswordChecker(Protocol):
    """Checks a user's password somewhere else (sasl_pwcheck_method: saslauthd, kerberos5);
    blocking. ``user`` is canonical; ``realm`` is the loginrealms realm the client named
    and the identity rules dropped ("" if none): kerberos5 asks that realm's KDC."""

    def __call__(self, user: str, password: Secret, /, realm: str = "") -> PasswordCheck: ...


@dataclass(frozen=True, slots=True)
class Decoys:
    """What an unknown user is given, shaped like the stored population."""

    argon2_hash: str
    scram: dict[str, tuple[int, int]]  # scheme -> (iterations, salt octets)
    scram_default: tuple[int, int]

    @classmethod
    def of(
        cls, users: Iterable[UserRecord], argon2: Argon2Parameters, scram_iterations: int
    ) -> Decoys:
        """The most common stored parameters of each kind; ``argon2`` and
        ``scram_iterations`` (the settings) where nothing of that kind is stored."""
        hashes: Counter[Argon2Parameters] = Counter()
        scram: dict[str, Counter[tuple[int, int]]] = {}
        for record in users:
            for scheme, value in record.secrets.items():
                if scheme == SCHEME_ARGON2ID:
                    parameters = phc_parameters(value)
                    if parameters is not None:
                        hashes[parameters] += 1
                elif scheme.startswith("SCRAM-"):
                    try:
                        keys = ScramKeys.decode(value)
                    except ValueError:
                        continue
                    scram.setdefault(scheme, Counter())[keys.iterations, len(keys.salt)] += 1
        every_scram = sum(scram.values(), Counter[tuple[int, int]]())
        return cls(
            argon2_hash=decoy_hash(_most_common(hashes, argon2)),
            scram={scheme: _most_common(counts, (0, 0)) for scheme, counts in scram.items()},
            scram_default=_most_common(every_scram, (scram_iterations, 16)),
        )

    def scram_shape(self, scheme: str) -> tuple[int, int]:
        return self.scram.get(scheme, self.scram_default)


_T = TypeVar("_T")


def _most_common(counts: Counter[_T], default: _T) -> _T:
    """The most frequent key (the first seen among equals), or ``default`` if none."""
    return counts.most_common(1)[0][0] if counts else default


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
        self._argon2 = argon2 or Argon2Parameters()
        self._decoys: tuple[int, Decoys] | None = None
        self._decoys_lock = threading.Lock()
        self._cache_ttl = cache_ttl
        self._cache_key = secrets.token_bytes(32)
        # login tag -> (expiry, the file's settled generation, the stored hash's tag)
        self._cache: dict[bytes, tuple[float, int | None, bytes]] = {}
        self._cache_lock = threading.Lock()
        self._clock = clock

    @property
    def has_password_checker(self) -> bool:
        return self._password_checker is not None

    def close(self) -> None:
        """Lets the password checker go (kerberos5 has threads of its own)."""
        close = getattr(self._password_checker, "close", None)
        if close is not None:
            close()

    def verified_recently(self, user: str, password: Secret) -> AuthResult | None:
        """A cache hit, cheaply (one stat, one BLAKE2b while the credential file is
        unchanged): drivers call this on the event loop and go to a thread only on a
        miss. None: not known, ask verify_password."""
        if self._password_checker is not None or self._cache_ttl <= 0:
            return None
        key = self._login_tag(user, password)
        with self._cache_lock:
            entry = self._cache.get(key)
        if entry is None or entry[0] < self._clock():
            return None
        if entry[1] is not None and entry[1] == self.credentials.settled_generation():
            return AuthResult(user)
        generation, record = self.credentials.lookup_at(user)
        stored = record.secrets.get(SCHEME_ARGON2ID) if record else None
        return AuthResult(user) if self._still_holds(key, generation, stored) else None

    def start_password_check(
        self, user: str, password: Secret, realm: str = ""
    ) -> AuthResult | Callable[[], AuthResult]:
        """:meth:`verify_password`, handed over now without blocking: its answer when that
        is known at once, else the blocking call that gives it. A password checker that
        can begin a check ahead (kerberos5: its KDC exchange runs in threads of its own)
        begins it here, so its time limit and its place among the checks in flight count
        from the hand-over, not from when a thread of the driver's pool gets to the wait;
        anything else runs whole in the returned call."""
        start = getattr(self._password_checker, "start", None)
        if start is None:
            return functools.partial(self.verify_password, user, password, realm)
        started = start(user, password, realm)
        if callable(started):
            return lambda: self._judged(user, started())
        return self._judged(user, started)

    def verify_password(self, user: str, password: Secret, realm: str = "") -> AuthResult:
        if self._password_checker is not None:
            return self._judged(user, self._password_checker(user, password, realm))
        generation, record = self.credentials.lookup_at(user)
        stored = record.secrets.get(SCHEME_ARGON2ID) if record else None
        forms = password_forms(password)  # SASLprep's form first, then as sent
        if stored is None:
            decoy = self.decoys().argon2_hash
            for form in forms:  # as many runs as a wrong password of a real user costs
                verify_password(form, decoy)
            return AuthResult(None, "unknown user" if record is None else "no password set")
        key = self._login_tag(user, password) if self._cache_ttl > 0 else None
        if key is not None and self._still_holds(key, generation, stored):
            return AuthResult(user)
        if not any(verify_password(form, stored) for form in forms):
            return AuthResult(None, "wrong password")
        if key is not None:
            self._remember(key, generation, stored)
        return AuthResult(user)

    def _judged(self, user: str, result: PasswordCheck) -> AuthResult:
        """A password checker's answer (sasl_pwcheck_method: saslauthd or kerberos5). The
        backend decides, and its timing is its own: no dummy Argon2 (both outcomes already
        take the same path) and no cache (nothing here would notice a password change or a
        locked account). No verdict (a backend down) is a temporary failure, not a refusal."""
        if result.unavailable:
            log.error("cannot check the password of %s: %s", user, result.reason)
            return AuthResult(None, result.reason, temporary=True)
        return AuthResult(user) if result.ok else AuthResult(None, result.reason)

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
            # The decoy is made for a known user too, and dropped: it is most of this
            # call's work, and made only for unknown names it answered them 50-80 µs later
            # (measured probing, a free oracle: the exchange can be cancelled right there).
            decoy = self._scram_decoy(user, scheme) if scheme.startswith("SCRAM-") else None
            if scheme in stored:
                values[scheme] = Secret(stored[scheme].encode("utf-8"))
            elif decoy is not None:
                values[scheme] = Secret(decoy.encode("ascii"))
                decoys.add(scheme)
        return Secrets(user, record is not None, values, frozenset(decoys))

    def decoys(self) -> Decoys:
        """The decoys for the credential file as it is now (rebuilt when it changes)."""
        generation = self.credentials.generation()
        with self._decoys_lock:
            if self._decoys is None or self._decoys[0] != generation:
                users = self.credentials.users()
                decoys = Decoys.of(users, self._argon2, self._scram_iterations)
                self._decoys = (generation, decoys)
            return self._decoys[1]

    def _scram_decoy(self, user: str, scheme: str) -> str:
        def derive(label: bytes, size: int) -> bytes:
            message = b"\0".join((label, scheme.encode(), user.encode("utf-8")))
            return hmac.new(self._decoy_key, message, hashlib.sha512).digest()[:size]

        size = hashlib.new(HASHES[scheme.removeprefix("SCRAM-")]).digest_size
        iterations, salt_size = self.decoys().scram_shape(scheme)
        keys = ScramKeys(
            iterations,
            derive(b"salt", salt_size),
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

    def _login_tag(self, user: str, password: Secret) -> bytes:
        # BLAKE2b in CPython's own C: HMAC through OpenSSL 3 looks its digest up by name
        # in the provider tables at every call. A user name holds no NUL (canonical_user).
        message = b"\0".join((user.encode(), password.reveal()))
        return hashlib.blake2b(message, key=self._cache_key, person=b"pop3d login").digest()

    def _stored_tag(self, stored: str) -> bytes:
        return hashlib.blake2b(stored.encode(), key=self._cache_key, person=b"pop3d hash").digest()

    def _still_holds(self, key: bytes, generation: int | None, stored: str | None) -> bool:
        """Whether the entry under ``key`` is unexpired and was made for ``stored`` (the
        user's hash as the file's ``generation`` holds it); it then vouches for that
        generation (None: a file too recently changed to vouch for), so the next hit needs
        no read of the line."""
        now = self._clock()
        with self._cache_lock:
            entry = self._cache.get(key)
            if entry is None:
                return False
            if entry[0] < now:
                del self._cache[key]
                return False
        if stored is None or not equal(self._stored_tag(stored), entry[2]):
            return False
        with self._cache_lock:
            if self._cache.get(key) is entry:
                self._cache[key] = (entry[0], generation, entry[2])
        return True

    def _remember(self, key: bytes, generation: int | None, stored: str) -> None:
        now = self._clock()
        entry = (now + self._cache_ttl, generation, self._stored_tag(stored))
        with self._cache_lock:
            if len(self._cache) >= _CACHE_MAX:
                self._cache = {k: v for k, v in self._cache.items() if v[0] >= now}
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
            self._cache[key] = entry
