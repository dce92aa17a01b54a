"""The storage interface the drivers use. Indexes are 0-based positions in the listing taken
at open; the session turns wire message numbers (1-based) into them."""

from __future__ import annotations

from typing import BinaryIO, Protocol


class StorageError(Exception):
    """The maildrop could not be used right now (I/O error, permissions): [SYS/TEMP]."""


class MaildropInUse(StorageError):
    """Another session holds the maildrop lock: [IN-USE]."""


class NoSuchFolder(StorageError):
    """The folder a ``user+folder`` login (popsubfolders) asked for does not exist."""


class MessageGone(StorageError):
    """The message was removed by someone else after the listing was taken."""


class UnacceptableMessage(ValueError):
    """A message offered for delivery that no client should be served (empty, or with NUL
    octets, which RFC 5322 forbids and Cyrus's lmtpd refuses): nothing was stored, and
    delivering it again will not help."""


class UnknownUser(StorageError):
    """Delivery to a user that has no maildrop and may not get one."""


class Maildrop(Protocol):
    uids: tuple[str, ...]
    sizes: tuple[int | None, ...]
    last_login: float | None

    def measure(self, indexes: tuple[int, ...]) -> list[int | StorageError]:
        """Each message's canonical size, or the error that kept it from being measured
        (:class:`MessageGone`: gone since the listing); raises for the maildrop itself."""
        ...

    def open_message(self, index: int) -> BinaryIO: ...

    def correct_size_hint(self, index: int, inode: int, size: int) -> tuple[str, str] | None:
        """Make the size the store keeps in the message's name (``inode``: the file the
        caller measured) say ``size``, the canonical size found by reading it: -> (old
        name, new name), None if its name holds no size or that one already."""
        ...

    def commit(
        self, deleted: tuple[int, ...], record_login: float | None, seen: tuple[int, ...] = ()
    ) -> tuple[int, int]:
        """Remove ``deleted`` durably, mark ``seen`` seen where the store keeps flags (best
        effort: never a failure); returns (removed, failed)."""
        ...

    def close(self) -> None: ...


class Store(Protocol):
    def open(self, user: str, folder: str | None = None) -> Maildrop: ...

    def recently_opened(self, user: str, folder: str | None = None) -> bool:
        """True if opening ``user``'s maildrop (``folder``: its popsubfolders folder) now
        would almost surely wait for no disk (this process opened it a moment ago): drivers
        then open it on their event loop instead of in a thread."""
        ...
