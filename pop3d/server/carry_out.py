"""One table from request type to the code that carries it out, shared by every driver.

The asyncio driver (:mod:`.connection`) and the synchronous test driver run the same
functions: only *where* differs (the event loop, the I/O threads, the hash thread), and
that is in the table too. What stays driver-specific are the requests bound to the channel
or the clock (streaming a message, TLS, a security layer, a pause).

A :class:`Work` is one connection's view of the services: the credential store behind the
authenticator, the maildrop store, the token validator, and the maildrop it has open.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pop3d.auth.authenticator import Authenticator
from pop3d.protocol.events import (
    ClaimLogin,
    CommitResult,
    CommitUpdate,
    FailureKind,
    LoginLimited,
    MaildropOpened,
    MeasureMessages,
    OpenMaildrop,
    ReleaseMaildrop,
    StorageFailure,
)
from pop3d.requests import Offload, Request
from pop3d.sasl.requests import (
    AuthResult,
    BearerResult,
    FetchSecrets,
    ResolveUser,
    VerifyApop,
    VerifyBearer,
    VerifyPassword,
)
from pop3d.security.secret import Secret
from pop3d.server.limits import Claim, Exceeded, Gate
from pop3d.storage.base import (
    Maildrop,
    MaildropInUse,
    MessageGone,
    NoSuchFolder,
    StorageError,
    Store,
)

log = logging.getLogger("pop3d")


class TokenChecker(Protocol):
    def verify(self, token: Secret) -> BearerResult: ...


class Where(enum.Enum):
    LOOP = "loop"  # cheap, no I/O
    IO = "io"  # files, sockets, blocking libraries: the I/O threads
    HASH = "hash"  # Argon2: its own thread (server/context.py says why)


@dataclass(slots=True)
class Work:
    authenticator: Authenticator
    store: Store | None = None
    token_validator: TokenChecker | None = None
    session_id: str = "-"
    maildrop: Maildrop | None = None
    login_gate: Gate | None = None  # maxlogins_*: where logins are counted
    claim: Claim | None = None  # this session's login, while it counts
    deleted: int = 0  # messages removed at UPDATE, for the audit trail

    def release(self) -> None:
        if self.maildrop is not None:
            self.maildrop.close()
            self.maildrop = None
        if self.claim is not None:
            claim, self.claim = self.claim, None
            claim.release()


@dataclass(frozen=True, slots=True)
class Entry:
    run: Callable[[Work, Any], object]
    where: Where
    # Tried on the event loop first; a result other than None answers without a thread.
    fast: Callable[[Work, Any], object | None] | None = None
    # Where.HASH: the answer when too many checks already wait for the thread (no verdict)
    busy: Callable[[Any], object] | None = None
    # Where.HASH: called on the loop when the check is handed over (past ``busy``): the
    # answer when known at once, else a Started whose call the thread runs instead of
    # ``run``. A check that waits on threads of its own (a KDC's answer) begins here, so
    # its time limit and its place among the pending checks count from the hand-over.
    start: Callable[[Work, Any], object] | None = None


@dataclass(frozen=True, slots=True)
class Started:
    """A check begun by ``Entry.start``: ``wait`` blocks until its answer."""

    wait: Callable[[], object]


def _too_many_checks(_request: VerifyPassword) -> object:
    return AuthResult(None, "too many password checks waiting", temporary=True)


def _verify_password(work: Work, request: VerifyPassword) -> object:
    return work.authenticator.verify_password(request.user, request.password, request.realm)


def _start_password_check(work: Work, request: VerifyPassword) -> object:
    started = work.authenticator.start_password_check(request.user, request.password, request.realm)
    return started if isinstance(started, AuthResult) else Started(started)


def _recently_verified(work: Work, request: VerifyPassword) -> object | None:
    return work.authenticator.verified_recently(request.user, request.password)


def _verify_apop(work: Work, request: VerifyApop) -> object:
    return work.authenticator.verify_apop(request.user, request.challenge, request.digest)


def _fetch_secrets(work: Work, request: FetchSecrets) -> object:
    return work.authenticator.fetch_secrets(request.user, request.schemes)


def _resolve_user(work: Work, request: ResolveUser) -> object:
    return work.authenticator.resolve_user(request.user)


def _verify_bearer(work: Work, request: VerifyBearer) -> object:
    if work.token_validator is None:  # not offered then; a client naming it gets a refusal
        return BearerResult(None, "invalid_token", "token validation not configured")
    return work.token_validator.verify(request.token)


def _open_maildrop(work: Work, request: OpenMaildrop) -> object:
    assert work.store is not None
    try:
        maildrop = work.store.open(request.user, request.folder)
    except MaildropInUse as exc:
        return StorageFailure(FailureKind.IN_USE, str(exc))
    except NoSuchFolder as exc:
        log.info(
            "session %s: %s asked for a folder that does not exist: %s",
            work.session_id,
            request.user,
            exc,
        )
        return StorageFailure(FailureKind.TEMPORARY, str(exc), no_such_folder=True)
    except (StorageError, OSError) as exc:
        log.error("session %s: cannot open maildrop of %s: %s", work.session_id, request.user, exc)
        return StorageFailure(FailureKind.TEMPORARY, str(exc))
    work.maildrop = maildrop
    return MaildropOpened(maildrop.uids, maildrop.sizes, maildrop.last_login, time.time())


def _open_warm_maildrop(work: Work, request: OpenMaildrop) -> object | None:
    """A maildrop this worker opened a moment ago, and cheaply, is opened on the loop: its
    folders are in the kernel's caches, and the hop to an I/O thread cost more than the
    open (the thread gives up and takes back the GIL at each of the open's dozen system
    calls, each time a switch to and from the loop; bench/RESULTS.md, section 9). Any other
    maildrop (first login, a client polling every few minutes, one whose open took more
    than WARM_OPEN_CPU) is opened in a thread, where a cold disk or a big listing stalls
    no other session."""
    if work.store is None or not work.store.recently_opened(request.user, request.folder):
        return None
    return _open_maildrop(work, request)


def _claim_login(work: Work, request: ClaimLogin) -> object:
    if work.login_gate is None:  # -X: one session per process, nothing to count against
        return None
    if work.claim is not None:  # a session holds one login at most
        work.claim.release()
        work.claim = None
    result = work.login_gate.claim(request.host, request.user)
    if isinstance(result, Exceeded):
        log.warning(
            "session %s: login of %s from %s refused: maxlogins_per_%s %d reached",
            work.session_id,
            request.user,
            request.host,
            result.what,
            result.limit,
        )
        return LoginLimited(result.what, result.count, result.limit)
    work.claim = result
    return None


def _release_maildrop(work: Work, _request: ReleaseMaildrop) -> object:
    work.release()
    return None


def _measure(work: Work, request: MeasureMessages) -> object:
    assert work.maildrop is not None
    try:
        measured = work.maildrop.measure(request.indexes)
    except (StorageError, OSError) as exc:
        log.error("session %s: cannot measure messages: %s", work.session_id, exc)
        return StorageFailure(FailureKind.TEMPORARY, str(exc))
    sizes: list[int | None] = []
    for index, size in zip(request.indexes, measured, strict=True):
        if isinstance(size, MessageGone):
            log.info(
                "session %s: message %s went away since the login; listed as 0 octets: %s",
                work.session_id,
                work.maildrop.uids[index],
                size,
            )
        elif isinstance(size, StorageError):
            log.error(
                "session %s: message %s cannot be measured; listed as 0 octets: %s",
                work.session_id,
                work.maildrop.uids[index],
                size,
            )
        sizes.append(None if isinstance(size, StorageError) else size)
    return tuple(sizes)


def _commit(work: Work, request: CommitUpdate) -> object:
    assert work.maildrop is not None
    removed = failed = 0
    if request.deleted or request.seen or request.record_login is not None:
        # else: no fsync for nothing (and _nothing_to_commit answered on the loop)
        removed, failed = work.maildrop.commit(request.deleted, request.record_login, request.seen)
    if failed:
        log.error("session %s: %d deletions failed", work.session_id, failed)
    # UPDATE is the maildrop's last use: unlock before the client reads "+OK", so its next
    # session (a poller reconnecting at once) never finds the maildrop [IN-USE].
    work.release()
    work.deleted += removed
    return CommitResult(removed, failed)


def _nothing_to_commit(work: Work, request: CommitUpdate) -> object | None:
    """QUIT with no deletion, no flag and no LOGIN-DELAY record: nothing touches the disk,
    so no thread (closing the maildrop's descriptors does not wait)."""
    if request.deleted or request.seen or request.record_login is not None:
        return None
    work.release()
    return CommitResult(0, 0)


def _offload(_work: Work, request: Offload) -> object:
    try:
        return request.call()
    except Exception as exc:  # the core's to judge (Offload's contract)
        return exc


TABLE: dict[type[Request], Entry] = {
    VerifyPassword: Entry(
        _verify_password,
        Where.HASH,
        fast=_recently_verified,
        busy=_too_many_checks,
        start=_start_password_check,
    ),
    VerifyApop: Entry(_verify_apop, Where.IO),
    FetchSecrets: Entry(_fetch_secrets, Where.IO),
    ResolveUser: Entry(_resolve_user, Where.IO),
    VerifyBearer: Entry(_verify_bearer, Where.IO),
    OpenMaildrop: Entry(_open_maildrop, Where.IO, fast=_open_warm_maildrop),
    ReleaseMaildrop: Entry(_release_maildrop, Where.LOOP),
    ClaimLogin: Entry(_claim_login, Where.IO),
    MeasureMessages: Entry(_measure, Where.IO),
    CommitUpdate: Entry(_commit, Where.IO, fast=_nothing_to_commit),
    Offload: Entry(_offload, Where.IO),
}


def carry_out(work: Work, request: Request) -> object:
    """Synchronously, wherever the table says it belongs (for tests and tools)."""
    entry = TABLE[type(request)]
    if entry.fast is not None:
        answer = entry.fast(work, request)
        if answer is not None:
            return answer
    return entry.run(work, request)
