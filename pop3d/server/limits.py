"""``maxlogins_per_host`` and ``maxlogins_per_user``: logged-in sessions per client address
and per user, counted per service across every worker of the master.

The counts live in one place, the master, in a :class:`LoginTable`; each worker talks to it
over a ``SOCK_SEQPACKET`` socket pair the master made for it (``POP3D_LIMITS_FD``): one
datagram to claim a login (answered yes or no), one to release it. Why not shared memory:
the master's table is updated by one process in order, so two workers can never both take
the last place; and a worker that dies (OOM kill, crash) needs no clean-up protocol: its
end of the socket closes, the master sees end-of-file and forgets every login it held.
A claim is one round trip on a local socket per login, in an I/O thread, next to an
Argon2 hash and a maildrop listing.

A worker serving on its own (systemd socket activation) keeps the same table in process
(:class:`LocalLimits`). ``pop3d -X`` serves one session per process and cannot count: the
limits are not enforced there (a warning says so).

As in Cyrus the limits bite at login, after the credentials are checked and before the
maildrop is opened; unlike Cyrus only logged-in sessions count (Cyrus also counts a
host's connections still in AUTHORIZATION, and counts the session asking, so its limit N
lets N-1 in): ``maxlogins_per_user: 2`` lets a user have two sessions.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import socket
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("pop3d")

LIMITS_FD_ENV = "POP3D_LIMITS_FD"
_MAX_MESSAGE = 4096


@dataclass(frozen=True, slots=True)
class Limits:
    per_host: int = 0  # 0: no limit
    per_user: int = 0

    @property
    def active(self) -> bool:
        return self.per_host > 0 or self.per_user > 0


@dataclass(frozen=True, slots=True)
class Exceeded:
    """Which limit a login would break: ``what`` is "host" or "user"."""

    what: str
    count: int  # logged-in sessions it already has
    limit: int
    name: str  # the host or the user


class LoginTable:
    """The counts, and who holds what (``owner``: a worker's channel, or one process)."""

    def __init__(self) -> None:
        self._held: dict[object, dict[int, tuple[str, str, str]]] = {}
        self._hosts: Counter[tuple[str, str]] = Counter()
        self._users: Counter[tuple[str, str]] = Counter()

    def claim(
        self, owner: object, ticket: int, service: str, host: str, user: str, *, limits: Limits
    ) -> Exceeded | None:
        hosts = self._hosts[service, host]
        if limits.per_host > 0 and hosts >= limits.per_host:
            return Exceeded("host", hosts, limits.per_host, host)
        users = self._users[service, user]
        if limits.per_user > 0 and users >= limits.per_user:
            return Exceeded("user", users, limits.per_user, user)
        self._held.setdefault(owner, {})[ticket] = (service, host, user)
        self._hosts[service, host] += 1
        self._users[service, user] += 1
        return None

    def release(self, owner: object, ticket: int) -> None:
        held = self._held.get(owner, {}).pop(ticket, None)
        if held is not None:
            self._forget(*held)

    def drop_owner(self, owner: object) -> int:
        """Forget every login ``owner`` held (its worker exited); how many there were."""
        held = self._held.pop(owner, {})
        for entry in held.values():
            self._forget(*entry)
        return len(held)

    def _forget(self, service: str, host: str, user: str) -> None:
        for counter, key in ((self._hosts, (service, host)), (self._users, (service, user))):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]

    def count(self, service: str, *, host: str | None = None, user: str | None = None) -> int:
        if host is not None:
            return self._hosts[service, host]
        assert user is not None
        return self._users[service, user]


class Claim:
    """A login that counts until :meth:`release` (idempotent, any thread)."""

    def __init__(self, release: object) -> None:
        self._release = release
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if callable(release):
            release()


class LoginCounter(Protocol):
    def claim(self, service: str, host: str, user: str, limits: Limits) -> Claim | Exceeded:
        """Blocking (a round trip to the master): call it from an I/O thread."""
        ...


class LocalLimits:
    """The table in this process (one worker serving on its own)."""

    def __init__(self) -> None:
        self.table = LoginTable()
        self._lock = threading.Lock()
        self._tickets = itertools.count(1)

    def claim(self, service: str, host: str, user: str, limits: Limits) -> Claim | Exceeded:
        with self._lock:
            ticket = next(self._tickets)
            refused = self.table.claim(self, ticket, service, host, user, limits=limits)
        if refused is not None:
            return refused

        def release() -> None:
            with self._lock:
                self.table.release(self, ticket)

        return Claim(release)


class MasterLimits:
    """The worker's side of the master's table (one socket, one request at a time)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self._tickets = itertools.count(1)

    def claim(self, service: str, host: str, user: str, limits: Limits) -> Claim | Exceeded:
        ticket = next(self._tickets)
        message = ["claim", ticket, service, host, user, limits.per_host, limits.per_user]
        try:
            with self._lock:
                self.sock.send(json.dumps(message).encode())
                answer = json.loads(self.sock.recv(_MAX_MESSAGE) or b"null")
        except (OSError, ValueError) as exc:
            # The master is gone (we are about to be stopped): let the login through
            # rather than lock every user out of a worker that still serves.
            log.error("login limits: no answer from the master (%s); not enforced", exc)
            return Claim(None)
        if isinstance(answer, list) and len(answer) == 4:
            return Exceeded(str(answer[0]), int(answer[1]), int(answer[2]), str(answer[3]))

        def release() -> None:
            try:  # no reply comes, so no lock: a datagram is sent whole, never interleaved
                self.sock.send(json.dumps(["release", ticket]).encode())
            except OSError as exc:
                log.warning("login limits: cannot release a login: %s", exc)

        return Claim(release)


def pair() -> tuple[socket.socket, socket.socket]:
    """(the master's end, the worker's end); the worker's is inheritable."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    return ours, theirs


def answer(table: LoginTable, ready: Iterable[socket.socket]) -> list[socket.socket]:
    """The master: read every datagram waiting on the workers' channels in ``ready`` and
    answer them; the channels whose worker has gone (end of file) are returned, their
    logins forgotten.

    Releases are counted before claims, whichever channel they came by: a session's
    release is sent before its client reads "+OK" to QUIT, so a claim that client's next
    session makes through another worker can be waiting in the same wake-up; answered
    first, it met a place still taken (found in CI: a reconnecting client refused
    "Too many open sessions" for the session it had just ended)."""
    claims: list[tuple[socket.socket, object]] = []
    gone: list[socket.socket] = []
    for owner in ready:
        for message in _waiting(owner):
            if message is None:
                gone.append(owner)
                dropped = table.drop_owner(owner)
                if dropped:
                    log.info("login limits: a worker exited holding %d logins; released", dropped)
            elif isinstance(message, list) and message[:1] == ["release"]:
                try:
                    table.release(owner, int(message[1]))
                except (ValueError, TypeError, IndexError) as exc:
                    log.error("login limits: bad message from a worker (%s); ignored", exc)
            else:
                claims.append((owner, message))
    for owner, message in claims:
        if owner not in gone:
            _answer_claim(table, owner, message)
    return gone


def _waiting(owner: socket.socket) -> list[object]:
    """Every datagram queued on ``owner``, decoded (None: end of file, the last item)."""
    messages: list[object] = []
    while True:
        try:
            data = owner.recv(_MAX_MESSAGE)
        except BlockingIOError:
            return messages
        except OSError:
            data = b""
        if not data:
            messages.append(None)
            return messages
        try:
            messages.append(json.loads(data))
        except ValueError:
            messages.append(data)  # answered as a claim: its worker waits for a reply


def _answer_claim(table: LoginTable, owner: socket.socket, message: object) -> None:
    refused: Exceeded | None = None
    match message:
        case [_verb, int(ticket), str(service), str(host), str(user), int(per_host), int(per_user)]:
            limits = Limits(per_host, per_user)
            refused = table.claim(owner, ticket, service, host, user, limits=limits)
        case _:
            log.error("login limits: bad message from a worker (%.80r); ignored", message)
    reply = None if refused is None else [refused.what, refused.count, refused.limit, refused.name]
    with contextlib.suppress(OSError):
        owner.send(json.dumps(reply).encode())


@dataclass(frozen=True, slots=True)
class Gate:
    """One service's limits and where they are counted (ServiceContext.login_gate)."""

    counter: LoginCounter
    service: str
    limits: Limits

    def claim(self, host: str, user: str) -> Claim | Exceeded:
        return self.counter.claim(self.service, host, user, self.limits)
