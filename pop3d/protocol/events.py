"""What the session hands to its driver, and what the driver hands back.

Three kinds of event come out of :meth:`Session.next_event`:

* output: :class:`Send` (bytes to write, in order) and :class:`Close`;
* :class:`Request` subclasses: work that needs I/O, a clock or a thread (verify a password,
  open the maildrop, stream a message, sleep, start TLS). The session stops until the driver
  calls :meth:`Session.resolve` with the result type named on the request;
* notices (:class:`LoginSucceeded`, :class:`LoginFailed`): facts for the audit log. They
  need no answer.

:data:`NEED_DATA` means "feed me more input". Message numbers never cross this boundary:
requests carry 0-based indexes into the maildrop listing the driver returned.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pop3d.requests import NEED_DATA, Request, Send, _NeedData
from pop3d.transport.layer import SecurityLayer


@dataclass(frozen=True, slots=True)
class Close:
    reason: str
    # The client asked (QUIT) and waits for its answer, sending nothing more; else the
    # session ends on its own while the client may still be talking (ByteChannel.close).
    client_asked: bool = False


# --- requests ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenMaildrop(Request):
    """Lock and list the user's maildrop, or with ``folder`` (popsubfolders) that Maildir++
    folder of it. -> :class:`MaildropOpened` or :class:`StorageFailure`"""

    user: str
    folder: str | None = None


@dataclass(frozen=True, slots=True)
class ReleaseMaildrop(Request):
    """Unlock without changing anything (the login was refused after opening), and give
    back the login :class:`ClaimLogin` took. -> None"""


@dataclass(frozen=True, slots=True)
class ClaimLogin(Request):
    """Count this login against ``maxlogins_per_host`` and ``maxlogins_per_user`` (asked
    only when one is set); it counts until the session ends or :class:`ReleaseMaildrop`.
    -> None, or :class:`LoginLimited`"""

    user: str
    host: str


@dataclass(frozen=True, slots=True)
class MeasureMessages(Request):
    """Compute canonical sizes of messages that had no size hint. -> tuple in the order
    asked of ints, or None for a message that could not be measured (gone since the login,
    unreadable: logged), or :class:`StorageFailure` (the maildrop itself failed)"""

    indexes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RetrieveMessage(Request):
    """Open the message; if that works write ``preamble``, then the message through a
    :class:`pop3d.message.MessageEncoder` (``body_lines`` for TOP), terminator included.
    -> None on success, :class:`StorageFailure` if the message could not be opened (nothing
    written). A failure after the preamble went out can only be answered by closing the
    connection.

    ``expected_octets``: the message's size as the session knows it (LIST/STAT; the
    canonical size, before dot-stuffing), None if it has none. For RETR the driver checks
    what it sends against it: a message changed underneath (truncated, emptied) must not go
    out looking complete. ``announced``: the client has been told that size (STAT or
    LIST); RFC 1939 makes it exact, so a message whose size proves wrong (a wrong ``,W=``
    in its name) is then refused for the rest of the session. Until then the driver sends
    it whole and answers its real size (an int) for the session to list from then on."""

    index: int
    body_lines: int | None
    preamble: bytes
    expected_octets: int | None = None
    announced: bool = True


@dataclass(frozen=True, slots=True)
class CommitUpdate(Request):
    """The UPDATE state: remove ``deleted`` durably, then record the login time (LOGIN-DELAY
    bookkeeping) if one is given. -> :class:`CommitResult`"""

    deleted: tuple[int, ...]
    record_login: float | None
    seen: tuple[int, ...] = ()  # sent whole by RETR, with popuseimapflags: mark them seen


@dataclass(frozen=True, slots=True)
class Pause(Request):
    """Delay this session only (failed-login pause). -> None"""

    seconds: float


@dataclass(frozen=True, slots=True)
class StartTLS(Request):
    """Handshake now; the "+OK" went out already and the session's trailing data was
    discarded (it came in clear; the channel drops its own too). -> :class:`TLSInfo`; on
    failure the driver closes the connection."""


@dataclass(frozen=True, slots=True)
class InstallLayer(Request):
    """A SASL security layer takes effect now: the "+OK" went out (in clear, RFC 4422
    §3.7); from here every byte both ways goes through ``layer``, ``trailing`` (received
    after the last response, not consumed) first. -> None"""

    layer: SecurityLayer
    trailing: bytes


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MaildropOpened:
    uids: tuple[str, ...]
    sizes: tuple[int | None, ...]  # None: no size hint, measure before use
    last_login: float | None
    now: float


class FailureKind(enum.Enum):
    IN_USE = "IN-USE"
    TEMPORARY = "SYS/TEMP"
    PERMANENT = "SYS/PERM"


@dataclass(frozen=True, slots=True)
class StorageFailure:
    kind: FailureKind
    detail: str  # for the log; the session chooses what the client sees
    no_such_folder: bool = False  # the popsubfolders folder asked for does not exist


@dataclass(frozen=True, slots=True)
class LoginLimited:
    """A login limit is reached: ``what`` is "host" or "user"; ``count`` logged-in sessions
    already, ``limit`` allowed."""

    what: str
    count: int
    limit: int


@dataclass(frozen=True, slots=True)
class CommitResult:
    removed: int
    failed: int


# --- notices ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginSucceeded:
    user: str
    method: str
    folder: str | None = None  # popsubfolders: the folder opened instead of the INBOX
    # Who authenticated, where that is not ``user`` alone: an admin acting as the user
    # (a SASL authzid), or the Kerberos principal that mapped to the user.
    authenticated_as: str = ""


@dataclass(frozen=True, slots=True)
class LoginFailed:
    user: str
    method: str
    reason: str
    # The credentials were good and the login failed after them (maildrop locked,
    # LOGIN-DELAY): the audit trail must not count it as a guessed password.
    authenticated: bool = False
    # No verdict at all: the server could not check the credentials (its password checker
    # or its keytab failed). Not the client's fault, so not logged as a wrong password.
    unavailable: bool = False
    # As LoginSucceeded's: who authenticated, where ``user`` alone does not say it.
    authenticated_as: str = ""
    # No verdict either: the attempt ended before its credentials were judged (the
    # client cancelled an AUTH exchange or broke it, or the policy refused the attempt on
    # this connection). Recorded so every attempt is, yet no guessed password.
    abandoned: bool = False


Event = Send | Close | Request | LoginSucceeded | LoginFailed | _NeedData

# NEED_DATA and Send are the shapes every core shares (pop3d.requests), re-exported so the
# POP3 vocabulary is one import for drivers.
__all__ = [
    "NEED_DATA",
    "ClaimLogin",
    "Close",
    "CommitResult",
    "CommitUpdate",
    "Event",
    "FailureKind",
    "InstallLayer",
    "LoginFailed",
    "LoginLimited",
    "LoginSucceeded",
    "MaildropOpened",
    "MeasureMessages",
    "OpenMaildrop",
    "Pause",
    "ReleaseMaildrop",
    "RetrieveMessage",
    "Send",
    "StartTLS",
    "StorageFailure",
]
