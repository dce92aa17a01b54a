"""The maildrop lock (RFC 1939 §8: the maildrop is the session's alone from login to QUIT),
taken by every POP3 session and every ``pop3d-admin import``, in one of two ways
(``maildrop_lock``):

* ``maildir`` (the default): an exclusive ``flock`` on ``pop3d.lock`` in the Maildir. It
  works wherever the Maildir is, Maildirs on NFS shared by several hosts included (Linux
  maps flock to NFS byte-range locks), and costs a descriptor per session.
* ``table``: one byte per maildrop in ``<configdirectory>/lock/pop3d-maildrops/`` (256
  files), locked with an open-file-description lock (``F_OFD_SETLK``). The process keeps
  one descriptor per file for all its sessions, so a logged-in session costs its socket
  only: what lets one worker hold ten thousand of them under a hard limit of 20,000
  descriptors (server/fdlimit.py). It excludes only processes that see the same table: one host, or
  hosts sharing the configuration directory.

Both are dropped by the kernel when the holder dies (no stale lock after a crash).

A table lock's key is the Maildir's device and inode hashed to 62 bits: the directory
itself, whatever path or link named it; the key picks the file (key mod 256) and is the
byte's offset in it. Two maildrops sharing a key (one chance in 2^62 per pair) would only
exclude each other. OFD locks held through one open file description
never conflict with each other, so the process keeps its own set of the bytes it holds,
under a mutex (maildrops are opened in I/O threads).

A lock is on a file, and a name can be made to point elsewhere: ``pop3d.lock`` unlinked
or renamed over, the table's folder removed (the next locker makes a new one). Two
checks keep two holders from locking two different files for one maildrop. A locker
checks, after locking, that the name is still the file it locked, and opens again if not
(a few times, then :class:`StorageError`). A table checks that at every lock, so a
process whose table went away moves to the new one, taking again every byte it holds
there. And a holder that finds its file gone takes the lock again on the new file before
an UPDATE (:meth:`MaildropLock.reassert`); if another holder has it by then, the UPDATE
is not carried out. What stays open (SECURITY.md): between the removal and that moment,
a second session can open the maildrop and read it.
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
_KEY_MASK = (1 << 62) - 1
# The kernel keeps an inode's byte locks in one list and walks it for every lock and
# unlock: 10,000 sessions' locks in one file made each login's lock and its QUIT's unlock
# cost 0.2 ms of system time (bench/RESULTS.md, section 12), still 6 % of a session's CPU
# over 64 files. Over 256, a list is 40 locks at 10,000 sessions, for 256 descriptors a
# process (server/fdlimit.py counts them with the worker's reserve).
SHARDS = 256
# A name changing under every one of these attempts is not a race but someone doing it
# on purpose: refuse rather than spin.
_ATTEMPTS = 8


class MaildropLock(Protocol):
    def reassert(self, root: int) -> bool:
        """Whether the lock is still the one every other locker sees, taking it again on
        the file that now bears its name if not (the Maildir open as ``root``): False if
        another holder has that one, or it cannot be had."""
        ...

    def release(self) -> None: ...


def _names(fd: int, name: str | Path, dir_fd: int | None = None) -> bool:
    """Whether ``name`` (not followed) is the file open as ``fd``: not when it was
    unlinked or renamed over since it was opened."""
    try:
        there = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError(f"cannot check the lock {name}: {exc.strerror}") from exc
    mine = os.fstat(fd)
    # st_nlink: a name that is still the inode is a link to it, but NFS may show an
    # unlinked open file under its old attributes for a while.
    return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino) and mine.st_nlink > 0


class FileLock:
    """``flock`` on the Maildir's ``pop3d.lock``; closing the descriptor releases it."""

    __slots__ = ("_fd", "_path")

    def __init__(self, fd: int, path: str | Path) -> None:
        self._fd = fd
        self._path = path

    def reassert(self, root: int) -> bool:
        if self._fd < 0:
            return False
        if _names(self._fd, LOCK_NAME, root):
            return True
        # Ours is held on a file nobody else can open any more: take the one they can,
        # before letting go of ours, so the maildrop is never without a holder here.
        try:
            fresh = lock_in_maildir(root, self._path)
        except StorageError:
            return False
        os.close(self._fd)
        self._fd, fresh._fd = fresh._fd, -1
        return True

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def lock_in_maildir(root: int, path: str | Path) -> FileLock:
    """The ``maildir`` way: the Maildir open as ``root`` locked through its ``pop3d.lock``.
    :class:`MaildropInUse` if another holder has it, :class:`StorageError` otherwise."""
    for _ in range(_ATTEMPTS):
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
            if _names(fd, LOCK_NAME, root):
                return FileLock(fd, path)
        except OSError as exc:
            os.close(fd)
            if exc.errno in _BUSY:
                raise MaildropInUse(f"{path} is locked") from exc
            raise StorageError(f"cannot lock {path}: {exc.strerror}") from exc
        except BaseException:
            os.close(fd)
            raise
        # Unlinked or replaced between the open and the flock: a lock nobody else sees.
        os.close(fd)
    raise StorageError(f"cannot lock {path}: its {LOCK_NAME} keeps being replaced")


class LockTable:
    """The ``table`` way: byte locks for every maildrop, spread over :data:`SHARDS` files
    in one folder. Use :func:`table_at` so that a process has one per folder (its set of
    held keys must be the only one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fds: list[int] = []
        self._held: set[int] = set()
        # Held keys that another process took while the table was being replaced: their
        # sessions hold nothing others can see (TableLock.reassert says so).
        self._lost: set[int] = set()
        self._mutex = threading.Lock()

    def _descriptors(self) -> list[int]:
        # Opened at first use, under the mutex, and kept for the process's life.
        if not self._fds:
            fds: list[int] = []
            try:
                self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
                flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                for shard in range(SHARDS):
                    fd = os.open(self.path / f"{shard:02x}", flags, 0o600)
                    fds.append(fd)  # each one kept, to be closed if a later one fails
            except OSError as exc:
                for fd in fds:
                    os.close(fd)
                raise StorageError(
                    f"cannot open the maildrop lock table {self.path}: {exc.strerror}"
                ) from exc
            self._fds = fds
        return self._fds

    def _current(self, shard: int) -> bool:
        return _names(self._fds[shard], self.path / f"{shard:02x}")

    def _reopen(self) -> None:
        """The table was removed or replaced: open the one others now lock and take every
        byte held here again in it, before closing the old files (which releases them
        there), so no moment passes with a held maildrop free in the new table."""
        old, self._fds = self._fds, []
        try:
            fds = self._descriptors()
        except StorageError:
            self._fds = old
            raise
        for key in self._held - self._lost:
            try:
                fcntl.fcntl(fds[key % SHARDS], fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, key))
            except OSError:
                self._lost.add(key)
        for fd in old:
            os.close(fd)

    def lock(self, root: int, path: str | Path) -> TableLock:
        """Lock the maildrop whose Maildir is open as ``root``: :class:`MaildropInUse` if a
        session of this process or another holds it, :class:`StorageError` otherwise."""
        info = os.fstat(root)
        digest = hashlib.blake2b(struct.pack("<QQ", info.st_dev, info.st_ino), digest_size=8)
        key = int.from_bytes(digest.digest(), "little") & _KEY_MASK
        shard = key % SHARDS
        with self._mutex:
            if key in self._held:
                raise MaildropInUse(f"{path} is locked")
            for _ in range(_ATTEMPTS):
                fds = self._descriptors()
                try:
                    fcntl.fcntl(fds[shard], fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, key))
                except OSError as exc:
                    if exc.errno in _BUSY:
                        raise MaildropInUse(f"{path} is locked") from exc
                    raise StorageError(f"cannot lock {path}: {exc.strerror}") from exc
                # Checked after locking: a table replaced before the check is seen; one
                # replaced after it finds this byte when its locker moves over (_reopen).
                try:
                    current = self._current(shard)
                except StorageError:
                    fcntl.fcntl(fds[shard], fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, key))
                    raise
                if current:
                    self._held.add(key)
                    return TableLock(self, key)
                fcntl.fcntl(fds[shard], fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, key))
                self._reopen()
        raise StorageError(f"cannot lock {path}: the lock table {self.path} keeps being replaced")

    def reassert(self, key: int) -> bool:
        with self._mutex:
            try:
                if key in self._held and not self._current(key % SHARDS):
                    self._reopen()
            except StorageError:
                return False
            return key in self._held and key not in self._lost

    def unlock(self, key: int) -> None:
        with self._mutex:
            if key not in self._held:
                return
            if key in self._lost:
                # Another process's byte now: not ours to unlock.
                self._lost.discard(key)
                self._held.discard(key)
                return
            try:
                fcntl.fcntl(self._fds[key % SHARDS], fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, key))
            except OSError:
                # Not seen for a byte this description holds; if it ever were, the
                # maildrop stays locked until the process ends, never the reverse.
                return
            self._held.discard(key)


class TableLock:
    __slots__ = ("_key", "_table")

    def __init__(self, table: LockTable, key: int) -> None:
        self._table: LockTable | None = table
        self._key = key

    def reassert(self, root: int) -> bool:
        return self._table is not None and self._table.reassert(self._key)

    def release(self) -> None:
        if self._table is not None:
            self._table.unlock(self._key)
            self._table = None


def _flock(kind: int, key: int) -> bytes:
    # struct flock: l_type, l_whence, l_start, l_len, l_pid (0: an OFD lock requires it).
    # The byte at ``key`` (up to 2^62: off_t has room; the file stays empty).
    return struct.pack("@hhqqi", kind, os.SEEK_SET, key, 1, 0)


def prepare_table(path: Path) -> None:
    """Make the table's folder and files now, one descriptor at a time, and keep none
    open: a server checks at start (as the user it serves as) that it can, rather than
    failing every login; the process that locks opens them at its first lock.
    :class:`StorageError` if not."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        for shard in range(SHARDS):
            os.close(os.open(path / f"{shard:02x}", flags, 0o600))
    except OSError as exc:
        raise StorageError(f"cannot open the maildrop lock table {path}: {exc.strerror}") from exc


def check_table(path: Path) -> str | None:
    """What stands in the way of the table at ``path``, without making anything (for
    ``check-config``, which may run as another user than the server): None if it can be
    opened read-write, or could be made."""
    for folder in (path.parent, path):
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            return f"cannot open the maildrop lock table {path}: {folder} is not a folder"
    for shard in range(SHARDS):
        file = path / f"{shard:02x}"
        if file.is_symlink() or (file.exists() and not file.is_file()):
            return f"cannot open the maildrop lock table {path}: {file} is not a regular file"
        if file.exists() and not os.access(file, os.R_OK | os.W_OK):
            return (
                f"cannot open the maildrop lock table {path}: {file} is not readable and writable"
            )
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
