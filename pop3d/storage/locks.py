"""The maildrop lock (RFC 1939 §8: the maildrop is the session's alone from login to QUIT),
taken by every POP3 session and every ``pop3d-admin import``, in one of two ways
(``maildrop_lock``):

* ``maildir`` (the default): an exclusive ``flock`` on ``pop3d.lock`` in the Maildir. It
  works wherever the Maildir is, Maildirs on NFS shared by several hosts included (Linux
  maps flock to NFS byte-range locks), and costs a descriptor per session.
* ``table``: one byte per maildrop in ``<configdirectory>/lock/pop3d-maildrops``, locked
  with an open-file-description lock (``F_OFD_SETLK``). The process keeps one descriptor to
  the table for all its sessions, so a logged-in session costs its socket only: what lets
  one worker hold ten thousand of them under a hard limit of 20,000 descriptors
  (server/fdlimit.py). It excludes only processes that see the same table: one host, or
  hosts sharing the configuration directory.

Both are dropped by the kernel when the holder dies (no stale lock after a crash).

A table lock's byte is the Maildir's device and inode hashed to 62 bits: the directory
itself, whatever path or link named it; two maildrops sharing a byte (one chance in 2^62
per pair) would only exclude each other. OFD locks held through one open file description
never conflict with each other, so the process keeps its own set of the bytes it holds,
under a mutex (maildrops are opened in I/O threads).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct
import threading
from pathlib import Path
from typing import Protocol

from pop3d.storage.base import MaildropInUse, StorageError

LOCK_NAME = "pop3d.lock"
TABLE_NAME = "pop3d-maildrops"
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
_OFFSET_MASK = (1 << 62) - 1


class MaildropLock(Protocol):
    def release(self) -> None: ...


class FileLock:
    """``flock`` on the Maildir's ``pop3d.lock``; closing the descriptor releases it."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def lock_in_maildir(root: int, path: Path) -> FileLock:
    """The ``maildir`` way: the Maildir open as ``root`` locked through its ``pop3d.lock``.
    :class:`MaildropInUse` if another holder has it, :class:`StorageError` otherwise."""
    try:
        fd = os.open(
            LOCK_NAME,
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            0o600,
            dir_fd=root,
        )
    except OSError as exc:
        raise StorageError(f"cannot open lock in {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in _BUSY:
            raise MaildropInUse(f"{path} is locked") from exc
        raise StorageError(f"cannot lock {path}: {exc.strerror}") from exc
    return FileLock(fd)


class LockTable:
    """The ``table`` way: one file of byte locks for every maildrop. Use :func:`table_at`
    so that a process has one per file (its set of held bytes must be the only one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._held: set[int] = set()
        self._mutex = threading.Lock()

    def open(self) -> None:
        """Open (and make) the table now: a server checks at start that it can, rather
        than failing every login. :class:`StorageError` if not."""
        with self._mutex:
            self._descriptor()

    def _descriptor(self) -> int:
        # Opened at first use, under the mutex, and kept for the process's life.
        if self._fd < 0:
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._fd = os.open(
                    self.path,
                    os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                )
            except OSError as exc:
                raise StorageError(
                    f"cannot open the maildrop lock table {self.path}: {exc.strerror}"
                ) from exc
        return self._fd

    def lock(self, root: int, path: Path) -> TableLock:
        """Lock the maildrop whose Maildir is open as ``root``: :class:`MaildropInUse` if a
        session of this process or another holds it, :class:`StorageError` otherwise."""
        info = os.fstat(root)
        digest = hashlib.blake2b(struct.pack("<QQ", info.st_dev, info.st_ino), digest_size=8)
        offset = int.from_bytes(digest.digest(), "little") & _OFFSET_MASK
        with self._mutex:
            if offset in self._held:
                raise MaildropInUse(f"{path} is locked")
            fd = self._descriptor()
            try:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, offset))
            except OSError as exc:
                if exc.errno in _BUSY:
                    raise MaildropInUse(f"{path} is locked") from exc
                raise StorageError(f"cannot lock {path}: {exc.strerror}") from exc
            self._held.add(offset)
        return TableLock(self, offset)

    def unlock(self, offset: int) -> None:
        with self._mutex:
            if offset not in self._held:
                return
            try:
                fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, offset))
            except OSError:
                # Not seen for a byte this description holds; if it ever were, the
                # maildrop stays locked until the process ends, never the reverse.
                return
            self._held.discard(offset)


class TableLock:
    __slots__ = ("_offset", "_table")

    def __init__(self, table: LockTable, offset: int) -> None:
        self._table: LockTable | None = table
        self._offset = offset

    def release(self) -> None:
        if self._table is not None:
            self._table.unlock(self._offset)
            self._table = None


def _flock(kind: int, offset: int) -> bytes:
    # struct flock: l_type, l_whence, l_start, l_len, l_pid (0: an OFD lock requires it).
    return struct.pack("@hhqqi", kind, os.SEEK_SET, offset, 1, 0)


def check_table(path: Path) -> str | None:
    """What stands in the way of the table at ``path``, without making anything (for
    ``check-config``, which may run as another user than the server): None if it can be
    opened read-write, or could be made."""
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        return f"cannot open the maildrop lock table {path}: {folder} is not a folder"
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return f"cannot open the maildrop lock table {path}: not a regular file"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return f"cannot open the maildrop lock table {path}: not readable and writable"
    return None


_tables: dict[Path, LockTable] = {}
_tables_mutex = threading.Lock()


def table_at(path: Path) -> LockTable:
    """The process's one :class:`LockTable` for the file ``path``."""
    with _tables_mutex:
        table = _tables.get(path)
        if table is None:
            table = _tables[path] = LockTable(path)
        return table
