"""Maildir (https://cr.yp.to/proto/maildir.html) as a POP3 maildrop.

Choices, and why:

* **Listing** reads directory entries only (``new/`` and ``cur/``), never message bodies. A
  size comes from the ``,W=`` field of the file name (the CRLF size Dovecot and our own
  delivery write); a message without one is measured only when a command needs its size.
  A ``W=`` that RETR proves wrong is corrected in the name
  (:meth:`MaildirMaildrop.correct_size_hint`), as Dovecot renames such a file.
* **Measured sizes are kept** in ``pop3d-sizes`` in the Maildir (Courier's
  ``courierpop3dsizelist`` does the same): a Maildir delivered by an agent that writes no
  ``,W=`` (Postfix's ``local`` and ``virtual``, procmail) would otherwise have every
  message read in full by the first STAT of every session. An entry counts only while the
  file's inode, size and mtime are those it was measured with; a message not in the
  listing drops out at the next write. A cache: written whole under the maildrop lock
  (``pop3d-sizes.new``, then ``rename``), without fsync; a lost or mangled one costs a
  measurement, never a wrong answer beyond what a wrong ``,W=`` would give.
* **UIDL** is the unique part of the file name: everything before the first "," or ":".
  Flag changes (``:2,S``) and the move from ``new/`` to ``cur/`` leave it alone, so it is
  stable across sessions and across other agents touching the Maildir. A unique part that
  is not a valid RFC 1939 unique-id (1-70 characters 0x21-0x7E) is replaced by a digest of
  itself, which is just as stable.
* **Twins**: two files claiming one unique part (another agent's mistake, a restore, a
  copy) are two messages, told apart by inode: a rename keeps it. The first listed has the
  unique part's UIDL, the others one of the unique part and the inode, and each file's
  UIDL is pinned in ``pop3d-uidl`` (:func:`pin_key`) the first time it is given, so that
  it stays when the other is deleted (the one left must not take a UIDL a client holds for
  the message deleted) and when flags change. A twin renamed since the listing is found by
  its inode, never as a file another listed message names; in doubt it is gone.
* **Kept UIDLs**: messages ``pop3d-admin import`` brought from another server are served
  with the UIDL that server gave them, from ``pop3d-uidl`` in the Maildir (``<unique part>
  <uidl>`` lines; see DESIGN.md, Storage). A unique part not listed there keeps the rule
  above.
* **Order** is delivery order: the leading timestamp of the name, then the name.
* **Flags** (``popuseimapflags``): with it, a message whose info (``:2,<flags>``) has T
  (trashed: IMAP's \\Deleted) is not listed, and :meth:`MaildirMaildrop.commit` marks the
  messages RETR sent whole as seen: one ``rename`` each, dir-fd to dir-fd, from ``new/<name>``
  to ``cur/<name>:2,S`` or within ``cur/`` adding S to the sorted flags (the unique part, so
  the UIDL, is unchanged); never over an existing name, and a message that cannot be
  renamed stays unseen without failing the QUIT.
* **Lock**: ``flock`` on ``pop3d.lock`` in the Maildir, or with ``maildrop_lock: table`` a
  byte lock in one table for every maildrop (storage/locks.py). Either excludes two
  sessions in one worker process too, and the kernel drops it when the process dies: no
  stale lock after a crash.
* **Deletion** happens only in :meth:`MaildirMaildrop.commit` (the UPDATE state): unlink,
  then fsync the directories, so "+OK" after QUIT means the deletions are on disk.
* **Delivery** writes ``tmp/``, fsyncs the file, links it into ``new/`` and fsyncs ``new/``:
  at no point can a crash leave the message half-written in ``new/`` or lost. An error at
  any of these steps (the error names it) leaves nothing in ``new/``, so the MTA's retry
  delivers one copy; once ``new/`` is synced, nothing fails the delivery any more.
* **No symbolic links, no races**: a Maildir may belong to its user (``/home/%u/Maildir``)
  while pop3d can read more than they can. Every operation works on directory file
  descriptors opened with ``O_NOFOLLOW`` (the Maildir, then ``new/``, ``cur/``, ``tmp/``
  inside it; the Maildir reached one folder at a time from the first one the template fills
  in per user, :class:`MaildirLocation`) and names relative to them (``dir_fd=``): a link
  planted as a message, as a
  folder or as the Maildir itself is neither listed, served nor unlinked through, and a
  link swapped in after the listing fails to open instead of being followed. A session
  opens its directories again for each command (it holds only its lock between commands)
  and refuses any that is not the one its listing read (device and inode). Only regular
  files count as messages (a FIFO could hang a read); messages are opened ``O_NONBLOCK``
  and checked with ``fstat`` for the same reason.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import itertools
import os
import re
import secrets
import socket
import stat
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pop3d.config.imapd import Config, ConfigError, Problem
from pop3d.message import SizeCounter, canonical_size
from pop3d.storage.base import MessageGone, NoSuchFolder, StorageError, UnacceptableMessage
from pop3d.storage.locks import TABLE_NAME, MaildropLock, lock_in_maildir, table_at

LAST_LOGIN_NAME = "pop3d-lastlogin"
# Kept UIDLs of imported messages (pop3d-admin import): "<unique part> <uidl>" lines.
UIDL_MAP_NAME = "pop3d-uidl"
_UIDL_MAP_NEW = "pop3d-uidl.new"
_UIDL_MAP_MAX = 64 * 1024 * 1024
# Measured sizes (MaildirMaildrop.measure): a header line, then "<name before the ':'>
# <inode> <octets on disk> <mtime in ns> <CRLF size>" lines.
SIZE_CACHE_NAME = "pop3d-sizes"
_SIZE_CACHE_NEW = "pop3d-sizes.new"
_SIZE_CACHE_HEADER = "pop3d-sizes 1\n"
# A line is at most a 255-octet name and four 20-digit numbers. A file may hold lines for
# messages removed since it was written, up to as many again as the listing has; a bigger
# one (planted by whoever can write the Maildir, to cost a worker seconds of parsing) is
# not read.
_SIZE_LINE_MAX = 340
_SIZE_CACHE_SLACK = 2
_CHUNK = 256 * 1024
# A ,W= of more digits than this is not a size (1 PB and more): it is not taken as one.
_SIZE_HINT_DIGITS = 15
_SUBDIRS = ("new", "cur")
# A maildrop's open runs these over every file name in it (a warm open runs on the event
# loop): regular expressions, not a Python step per character.
_UNIQUE_PART = re.compile(r"[^,:]*")
_LEADING_DIGITS = re.compile(r"[0-9]*")
# size_hint(): the first "," field before the info (":") that is "W=" and digits
_SIZE_HINT = re.compile(rf"[^:]*?,W=([0-9]{{1,{_SIZE_HINT_DIGITS}}})(?=[,:]|\Z)")
_delivery_counter = itertools.count(1)
# MaildirStore.recently_opened(): how long a Maildir counts as warm, for how many users,
# and the most CPU its last open may have taken (a warm open runs on the worker's event
# loop, where every other session waits for it: a bigger maildrop's open goes to a thread)
WARM_SECONDS = 60.0
WARM_USERS = 10_000
WARM_OPEN_CPU = 0.005
# MaildirStore's kept listings (MaildirStore._listing): only for folders of at least
# LISTING_KEPT_FROM messages (a smaller one is listed again for less than the memory it
# would hold), at most LISTING_KEPT_ENTRIES names per process in all (about 250 octets
# each: some 25 MB at the most).
LISTING_KEPT_FROM = 100
LISTING_KEPT_ENTRIES = 100_000
# A directory changed less than this long ago may change again within the file system's
# timestamp granularity and keep its mtime: its listing is not kept.
_SETTLED_NS = 2_000_000_000


@dataclass(slots=True)
class _Entry:
    subdir: str
    name: str
    unique: str


def unique_part(name: str) -> str:
    """The part of a Maildir file name that never changes after delivery: all before its
    first "," (size fields) or ":" (flags)."""
    match = _UNIQUE_PART.match(name)
    assert match is not None  # "*" matches everywhere
    return match.group()


def uidl_for(unique: str) -> str:
    """The unique part if it is a valid UIDL, else a digest of it."""
    if valid_uidl(unique):
        return unique
    digest = hashlib.sha256(unique.encode("utf-8", "surrogateescape")).digest()
    return "h" + base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def flags_of(name: str) -> str:
    """The Maildir flags of a file name: the letters after ``:2,`` ("" without them)."""
    _base, sep, info = name.partition(":")
    return info[2:] if sep and info.startswith("2,") else ""


def seen_name(name: str) -> str | None:
    """``name`` with the S flag added (flags kept sorted), or None if it already has it or
    its info is not the ``2,`` kind (experimental ``1,`` semantics are left alone)."""
    base, sep, info = name.partition(":")
    if not sep:
        return f"{name}:2,S"
    if not info.startswith("2,") or "S" in info[2:]:
        return None
    return f"{base}:2,{''.join(sorted(info[2:] + 'S'))}"


def valid_uidl(text: str) -> bool:
    """RFC 1939 §7: 1 to 70 characters in the range 0x21 to 0x7E."""
    # Called for every message of a maildrop at each open: three C calls instead of a
    # Python step per character. The printable ASCII characters are 0x20 to 0x7E.
    return 0 < len(text) <= 70 and text.isascii() and text.isprintable() and " " not in text


class UidlMap(dict[str, str]):
    """``pop3d-uidl`` read: unique part (or pin key, :func:`pin_key`) -> UIDL, and in
    ``pinned`` the prefixes of its pin keys, so that opening a maildrop with pins looks up
    only the files they may be about, and one without none."""

    __slots__ = ("pinned",)

    def __init__(self) -> None:
        super().__init__()
        self.pinned: set[str] = set()


def pin_key(unique: str, inode: int) -> str:
    """The ``pop3d-uidl`` key pinning the UIDL of the file ``inode`` whose unique part is
    ``unique`` (one of two files or more claiming it). A rename keeps the inode, so flag
    changes and the move to ``cur/`` keep the key; a unique part has no "/", so no key of
    an imported message's line is a pin key."""
    return f"{uidl_for(unique)}/{inode}"


def _pin_prefix(key: str) -> str | None:
    """The unique part's UIDL that ``key`` is a pin key of, None if it is none."""
    prefix, sep, inode = key.rpartition("/")
    if sep and inode.isascii() and inode.isdigit() and len(inode) <= 20 and valid_uidl(prefix):
        return prefix
    return None


def read_uidl_map(root: int) -> UidlMap:
    """The kept UIDLs in ``pop3d-uidl`` in the Maildir ``root`` (a directory fd): not through
    a link, only a regular file, at most 64 MiB; lines that do not parse are ignored, a
    later line for the same key wins. Missing: empty."""
    found = UidlMap()
    try:
        handle = _open_message(UIDL_MAP_NAME, root)
    except FileNotFoundError:
        return found
    except OSError as exc:
        raise StorageError(f"cannot open {UIDL_MAP_NAME}: {exc.strerror}") from exc
    with handle:
        data = handle.read(_UIDL_MAP_MAX + 1)
    if len(data) > _UIDL_MAP_MAX:
        raise StorageError(f"{UIDL_MAP_NAME} is larger than {_UIDL_MAP_MAX} bytes")
    for line in data.decode("ascii", "replace").splitlines():
        key, sep, uidl = line.partition(" ")
        if not sep or not valid_uidl(uidl):
            continue
        if "/" in key:  # never in a unique part: a pin (pin_key)
            prefix = _pin_prefix(key)
            if prefix is not None:
                found[key] = uidl
                found.pinned.add(prefix)
        elif valid_uidl(key):
            found[key] = uidl
    return found


def size_hint(name: str) -> int | None:
    """The ``W=`` (CRLF size) field of a Maildir name, if present: ASCII digits only
    (``str.isdigit`` also takes other scripts' digits, which ``int`` reads as numbers, and
    superscripts, which it refuses) and at most :data:`_SIZE_HINT_DIGITS` of them (a bigger
    number is no message's size, and LIST and STAT would report it). A field refused is
    no hint: the message is measured."""
    if ",W=" not in name:
        return None
    match = _SIZE_HINT.match(name)
    return int(match.group(1)) if match is not None else None


def _valid_hint(fields: list[str]) -> tuple[int, int | None]:
    """The position among a name's ``,`` fields of the first ``W=`` that is a size hint,
    and its value; (0, None) if there is none (field 0 is the unique part)."""
    for position, field in enumerate(fields[1:], 1):
        if field.startswith("W="):
            digits = field[2:]
            if digits.isascii() and digits.isdigit() and len(digits) <= _SIZE_HINT_DIGITS:
                return position, int(digits)
    return 0, None


def stored_size(name: str) -> int | None:
    """The ``,S=`` field of a Maildir name: the file's size in octets as delivered (ASCII
    digits only, as :func:`size_hint`); None without one."""
    for field in name.partition(":")[0].split(",")[1:]:
        if field.startswith("S="):
            digits = field[2:]
            if digits.isascii() and digits.isdigit() and len(digits) <= _SIZE_HINT_DIGITS:
                return int(digits)
    return None


def with_size_hint(name: str, size: int, stored: int | None = None) -> str:
    """``name``, which has a size hint, with the ``W=`` field :func:`size_hint` reads
    saying ``size`` (and its ``S=`` field ``stored``, if given and present); the unique
    part, the other fields and the info are kept."""
    base, sep, info = name.partition(":")
    fields = base.split(",")
    position, _hint = _valid_hint(fields)
    assert position, f"{name!r} has no size hint"
    fields[position] = f"W={size}"
    if stored is not None:
        fields[1:] = [f"S={stored}" if f.startswith("S=") else f for f in fields[1:]]
    return ",".join(fields) + sep + info


def _order_key(entry: _Entry) -> tuple[int, str]:
    """Delivery order: the leading number of the unique part (the delivery time in the
    names Maildir writers make), then the name. ASCII digits only: ``str.isdigit`` also
    takes characters ``int`` refuses (superscripts), which a file name may hold."""
    match = _LEADING_DIGITS.match(entry.unique)
    digits = match.group() if match is not None else ""
    return (int(digits) if digits else 0, entry.unique)


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    while chunk := handle.read(_CHUNK):
        yield chunk


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_directory(path: Path | str, dir_fd: int | None = None) -> int:
    """A directory, never through a symbolic link (ELOOP/ENOTDIR then)."""
    return os.open(path, _DIRECTORY, dir_fd=dir_fd)


def _kind(name: str, dir_fd: int) -> str:
    """ "file" (a regular file), "missing", or "other" (a link, directory, FIFO, ...)."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return "missing"
    return "file" if stat.S_ISREG(info.st_mode) else "other"


# --- measured sizes kept (pop3d-sizes) ------------------------------------------------

# What a measured size holds for: the file's (inode, octets, mtime in ns), then the size.
_SizeRecord = tuple[int, int, int, int]


def _size_key(name: str) -> str | None:
    """A message's key in ``pop3d-sizes``: its name without the info (flags change it, the
    move to ``cur/`` adds it), None if the name cannot be one word of an ASCII line."""
    base = name.partition(":")[0]
    if base.isascii() and base.isprintable() and " " not in base and base:
        return base
    return None


def _size_record(info: os.stat_result, size: int) -> _SizeRecord:
    return info.st_ino, info.st_size, info.st_mtime_ns, size


def read_size_cache(root: int, listed: int) -> dict[str, _SizeRecord]:
    """The records in ``pop3d-sizes`` in the Maildir ``root`` (read like a message: not
    through a link, only a regular file) of a maildrop of ``listed`` messages. A missing,
    unreadable or oversized file is empty, a line that does not parse is skipped: it only
    costs measuring again."""
    limit = len(_SIZE_CACHE_HEADER) + _SIZE_CACHE_SLACK * _SIZE_LINE_MAX * listed
    try:
        with _open_message(SIZE_CACHE_NAME, root) as handle:
            data = handle.read(limit + 1)
    except OSError:
        return {}
    if len(data) > limit or not data.startswith(_SIZE_CACHE_HEADER.encode()):
        return {}
    records: dict[str, _SizeRecord] = {}
    for line in data.decode("ascii", "replace").splitlines()[1:]:
        fields = line.split(" ")
        if len(fields) != 5 or _size_key(fields[0]) != fields[0]:
            continue
        numbers = fields[1:]
        if all(number.isascii() and number.isdigit() for number in numbers):
            inode, octets, mtime, size = (int(number) for number in numbers)
            records[fields[0]] = (inode, octets, mtime, size)
    return records


def write_size_cache(root: int, records: dict[str, _SizeRecord]) -> None:
    """Replace ``pop3d-sizes`` in ``root`` by ``records``. The caller holds the maildrop
    lock, so no other writer is at work. The new file is made fresh (``O_EXCL`` after an
    unlink: a link planted under its name is removed, never written through), then renamed
    over the old one. No fsync: after a crash an old or empty file only costs measuring
    again. Raises OSError."""
    lines = [_SIZE_CACHE_HEADER]
    lines += [f"{key} {i} {o} {m} {s}\n" for key, (i, o, m, s) in records.items()]
    _replace(root, SIZE_CACHE_NAME, _SIZE_CACHE_NEW, "".join(lines).encode("ascii"))


def write_uidl_map(root: int, kept: dict[str, str]) -> None:
    """Replace ``pop3d-uidl`` in ``root`` by ``kept``, or remove it when ``kept`` is empty.
    The caller holds the maildrop lock (as an import does: no line is appended meanwhile).
    Durable, unlike ``pop3d-sizes``: a file lost or emptied by a crash would give every
    imported message a new UIDL, and the client would fetch them all again. Raises
    OSError."""
    if kept:
        data = "".join(f"{unique} {uidl}\n" for unique, uidl in kept.items())
        _replace(root, UIDL_MAP_NAME, _UIDL_MAP_NEW, data.encode("ascii"), durable=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(UIDL_MAP_NAME, dir_fd=root)
        os.fsync(root)


def _replace(root: int, name: str, new_name: str, data: bytes, *, durable: bool = False) -> None:
    """``name`` in ``root`` replaced by a file of ``data``, made fresh under ``new_name``
    (``O_EXCL`` after an unlink: a link planted under that name is removed, never written
    through), then renamed over it. ``durable``: on disk, contents and name, before this
    returns. Raises OSError."""
    view = memoryview(data)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(new_name, dir_fd=root)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(new_name, flags, 0o600, dir_fd=root)
    try:
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(new_name, dir_fd=root)
        raise
    os.close(fd)
    os.replace(new_name, name, src_dir_fd=root, dst_dir_fd=root)
    if durable:
        os.fsync(root)


def _open_message(name: str, dir_fd: int) -> BinaryIO:
    """A message file in ``dir_fd``: not through a link, and only a regular file (a FIFO or
    device planted there must not hang or feed a read). Raises OSError."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if regular:
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    raise OSError(errno.EINVAL, "not a regular file")


def _make_folders(path: Path) -> None:
    """``path`` and the folders above it that are missing, each 0700: ``Path.mkdir``
    gives only the last one the mode it is asked for, so ``<spool>/<user>/`` above a
    Maildir was 0755 (listing who has mail; found probing)."""
    missing = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile: a delivery, a login
            folder.mkdir(mode=0o700)


_FOLLOWED_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# A template's escapes naming the user: the first path component holding one, and every
# one after it, may belong to the user (/home/%u/Maildir). A domain's folder (%d) before it
# is the administrator's, as the folders above it are: an alias domain made as a link
# (/var/mail/example.net -> example.org) is followed (refused for a day, found re-probing).
_PER_USER_ESCAPE = re.compile(r"%[un]")
# One escape of a template: "%" and the character after it (none at the end: an error)
_ESCAPE = re.compile(r"%(.?)", re.DOTALL)


@dataclass(slots=True)
class MaildirLocation:
    """Where a Maildir is: ``followed``, the administrator's part of the path (resolved as
    any path is: a link there is theirs, /var/mail is one on many systems), then ``parts``,
    each opened in the one before without following a link. The parts begin at the first
    folder the template names the user in (``/home/%u/Maildir``: ``alice``, ``Maildir``):
    from there on a folder may be its user's, who could otherwise replace one with a link
    to another user's and be served, and have deleted, that user's mail (found probing:
    O_NOFOLLOW on the whole path guards its last component only)."""

    # Strings: a Path costs a parse, and a session's open makes only the one it needs
    followed: str
    parts: tuple[str, ...]

    @property
    def path(self) -> Path:
        return Path(self.text)

    @property
    def text(self) -> str:
        return self._join(len(self.parts))

    def _join(self, count: int) -> str:
        return os.path.join(self.followed, *self.parts[:count])

    def open(self) -> int:
        """The Maildir as a directory fd. FileNotFoundError when a folder on the way is
        missing; OSError (ELOOP) naming it when one in ``parts`` is a link or no folder."""
        fd = os.open(self.followed, _FOLLOWED_DIRECTORY)
        for index, part in enumerate(self.parts):
            try:
                inner = _open_directory(part, fd)
            except FileNotFoundError:
                os.close(fd)
                raise
            except OSError as exc:
                where = self._join(index + 1)
                reason = _not_followed(part, fd) or exc.strerror
                os.close(fd)
                raise OSError(exc.errno, f"{where}: {reason}") from None
            os.close(fd)
            fd = inner
        return fd

    def make(self) -> None:
        """The Maildir and its tmp/, new/, cur/, and any folder missing on the way, each
        0700; made in the folder opened before it, never through a link (StorageError)."""
        try:
            _make_folders(Path(self.followed))
            fd = os.open(self.followed, _FOLLOWED_DIRECTORY)
        except OSError as exc:
            raise StorageError(f"cannot create {self.path}: {exc.strerror}") from exc
        try:
            for index, part in enumerate(self.parts):
                where = self._join(index + 1)
                try:
                    with contextlib.suppress(FileExistsError):  # made meanwhile, or before
                        os.mkdir(part, 0o700, dir_fd=fd)
                    inner = _open_directory(part, fd)
                except OSError as exc:
                    reason = _not_followed(part, fd) or exc.strerror
                    raise StorageError(f"cannot create {self.path}: {where}: {reason}") from exc
                os.close(fd)
                fd = inner
            for sub in ("tmp", "new", "cur"):
                try:
                    os.mkdir(sub, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise StorageError(f"cannot create {self.path / sub}: {exc.strerror}") from exc
        finally:
            os.close(fd)


def _not_followed(name: str, dir_fd: int) -> str | None:
    """ "a symbolic link, not followed" when ``name`` in ``dir_fd`` is one, else None."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    return "a symbolic link, not followed" if stat.S_ISLNK(info.st_mode) else None


class _Folders:
    """The Maildir and its ``new/`` and ``cur/`` (``tmp/`` for delivery) as directory file
    descriptors, each opened without following a link."""

    __slots__ = ("fds", "root")

    def __init__(self, where: MaildirLocation, names: tuple[str, ...] = _SUBDIRS) -> None:
        self.root = where.open()
        self.fds: dict[str, int] = {}
        try:
            for name in names:
                try:
                    self.fds[name] = _open_directory(name, self.root)
                except FileNotFoundError:
                    continue  # a Maildir without cur/ yet: nothing there
        except BaseException:
            self.close()
            raise

    def listing_stamp(self) -> tuple[int, ...] | None:
        """What a listing of ``new/`` and ``cur/`` depends on: each one's device, inode,
        mtime and ctime (every delivery, rename or removal in a directory changes its
        mtime). None when either changed in the last seconds."""
        values: list[int] = []
        now = time.time_ns()
        for name in _SUBDIRS:
            fd = self.fds.get(name)
            if fd is None:
                values += (0, 0, 0, 0)
                continue
            info = os.fstat(fd)
            if now - max(info.st_mtime_ns, info.st_ctime_ns) < _SETTLED_NS:
                return None
            values += (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
        return tuple(values)

    def identity(self) -> bytes:
        """(device, inode) of the Maildir and of ``new/`` and ``cur/`` (zeros for a folder
        not open here), packed: a session keeps it for its whole life, and a dict of
        tuples of large ints would be half a kilobyte of every idle session."""
        values: list[int] = []
        for name in _IDENTITY_ORDER:
            fd = self.fds.get(name) if name else self.root
            values += _identity(fd) if fd is not None else (0, 0)
        return _IDENTITY.pack(*values)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        if self.root >= 0:
            os.close(self.root)
            self.root = -1


# The folders a session's identity records, in order: the Maildir itself, new/, cur/.
_IDENTITY_ORDER = ("", *_SUBDIRS)
_IDENTITY = struct.Struct(f"={2 * len(_IDENTITY_ORDER)}Q")


def _identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


class _Reopened:
    """A session's Maildir directories opened again for one command, each only when first
    needed, and each refused unless it is the very directory the listing read (its device
    and inode): a Maildir or folder renamed away and replaced since, by a link (through any
    component of the path, not only the last, which O_NOFOLLOW covers) or by a real
    directory, is another directory and fails the command (StorageError). A folder that was
    missing at the listing, or is gone now, is None."""

    __slots__ = ("_identity", "_open", "_path")

    def __init__(self, path: str, identity: bytes) -> None:
        self._path = path
        self._identity = identity
        self._open: dict[str, int | None] = {}

    def get(self, name: str) -> int | None:
        """The folder ``name`` ("" for the Maildir itself)."""
        if name in self._open:
            return self._open[name]
        wanted: tuple[int, ...] | None = None
        if name in _IDENTITY_ORDER:
            slot = _IDENTITY_ORDER.index(name)
            wanted = _IDENTITY.unpack(self._identity)[2 * slot : 2 * slot + 2]
        fd = None
        if wanted is not None and wanted != (0, 0):
            path = os.path.join(self._path, name) if name else self._path
            try:
                fd = _open_directory(path)
            except FileNotFoundError:
                if not name:
                    raise StorageError(f"{path} is gone") from None
            except OSError as exc:
                raise StorageError(f"cannot open {path}: {exc.strerror}") from exc
            if fd is not None and _identity(fd) != wanted:
                os.close(fd)
                raise StorageError(f"{path} was replaced during the session")
        self._open[name] = fd
        return fd

    def sync(self) -> None:
        """fsync the folders opened (the ones this command changed). Raises OSError."""
        for name, fd in self._open.items():
            if name and fd is not None:
                os.fsync(fd)

    def close(self) -> None:
        for fd in self._open.values():
            if fd is not None:
                os.close(fd)
        self._open.clear()


def _inode_of(entry: _Entry, folders: _Folders) -> int | None:
    fd = folders.fds.get(entry.subdir)
    try:
        info = os.stat(entry.name, dir_fd=fd, follow_symlinks=False) if fd is not None else None
    except OSError:
        return None  # gone since the listing: its twins are not pinned this time
    return info.st_ino if info is not None and stat.S_ISREG(info.st_mode) else None


def _spare_uidl(entry: _Entry, inode: int | None, taken: set[str]) -> str:
    """A UIDL for the file ``inode`` of a unique part whose own UIDL another file has: of
    the unique part and the inode, which flag changes and the move to ``cur/`` keep (the
    name, flags and all, without an inode; some other if that is taken too)."""
    base = f"{entry.unique}/{inode}" if inode is not None else f"{entry.subdir}/{entry.name}"
    uid = uidl_for(base)
    for count in itertools.count(2):
        if uid not in taken:
            break
        uid = uidl_for(f"{base}/{count}")
    return uid


def _twin_uidls(
    entries: list[_Entry], kept: dict[str, str], folders: _Folders
) -> tuple[list[str], dict[int, int | None], dict[str, str]]:
    """The UIDLs of a listing in which two files or more claim one unique part (another
    agent's mistake, a restore, a copy), or a unique part has pins: (UIDLs, the inode of
    each such file by index, the pins to record). The files of one unique part are put in
    a fixed order in ``entries`` (their place in the directory is not one).

    Each of them is told apart by its inode, and its UIDL is pinned in ``pop3d-uidl``
    under :func:`pin_key` the first time it is given: the unique part's own UIDL to the
    first listed (the one a lone file has), a spare one (:func:`_spare_uidl`) to the
    others. A file whose pin is found keeps its UIDL whatever became of the other (deleted:
    the one left does not take over the unique part's UIDL, which a client that leaves
    mail on the server holds for the message deleted) and whatever its flags are now
    (RFC 1939 §7: the same unique-id across sessions). The files of a unique part are
    pinned only when each could be looked up and has an inode of its own: a file gone
    since the listing, or seen twice (moved from new/ to cur/ while they were listed, or
    hard linked), keeps the rule without pins."""
    uids: list[str] = []
    inodes: dict[int, int | None] = {}
    pins: dict[str, str] = {}
    taken: set[str] = set()
    start = 0
    while start < len(entries):
        unique = entries[start].unique
        end = start + 1
        while end < len(entries) and entries[end].unique == unique:
            end += 1
        own = kept.get(unique) or uidl_for(unique)
        lone = end - start == 1
        if not lone:  # new/ first, as listed, then by name, not as the directory has them
            entries[start:end] = sorted(entries[start:end], key=_twin_order)
        if lone and own not in taken and not _has_pins(unique, kept):
            uids.append(own)
            taken.add(own)
            start = end
            continue
        run = range(start, end)
        found = {index: _inode_of(entries[index], folders) for index in run}
        inodes.update(found)
        given: dict[int, str] = {}
        for index, inode in found.items():  # pinned first: they keep what they had
            pinned = kept.get(pin_key(unique, inode)) if inode is not None else None
            if pinned is not None and pinned not in taken:
                given[index] = pinned
                taken.add(pinned)
        for index, inode in found.items():
            if index not in given:
                uid = own if own not in taken else _spare_uidl(entries[index], inode, taken)
                given[index] = uid
                taken.add(uid)
        known = {inode: index for index, inode in found.items() if inode is not None}
        if not lone and len(known) == len(found):
            for inode, index in known.items():
                key = pin_key(unique, inode)
                if kept.get(key) != given[index]:
                    pins[key] = given[index]
        uids += (given[index] for index in run)
        start = end
    return uids, inodes, pins


def _twin_order(entry: _Entry) -> tuple[bool, str]:
    return entry.subdir != "new", entry.name


def _has_pins(unique: str, kept: dict[str, str]) -> bool:
    return isinstance(kept, UidlMap) and uidl_for(unique) in kept.pinned


def _pin(root: int, kept: dict[str, str], pins: dict[str, str]) -> dict[str, str]:
    """``kept`` with ``pins``, written to ``pop3d-uidl`` (durably: a lost pin is a UIDL
    that changes) before any session gives these UIDLs; the caller holds the maildrop
    lock. Best effort: a Maildir that cannot be written (read-only, full) gives the same
    UIDLs for as long as the twins are all there, as without pins."""
    updated = UidlMap()
    updated.update(kept)
    updated.update(pins)
    updated.pinned = (kept.pinned if isinstance(kept, UidlMap) else set()) | {
        key.rpartition("/")[0] for key in pins
    }
    with contextlib.suppress(OSError):
        write_uidl_map(root, updated)
    return updated


class MaildirMaildrop:
    """One locked, listed Maildir. Not thread-safe; one session owns it.

    Between commands it holds only its lock: the Maildir's directories are opened for each
    operation that needs them (:class:`_Reopened`) and checked to be the very directories the
    listing read. An idle logged-in session so costs its socket and its lock, not five
    descriptors, which is what lets one worker hold ten thousand of them
    (server/fdlimit.py); opening three directories again is a few microseconds beside the
    command that needs them."""

    __slots__ = (
        "_entries",
        "_identity",
        "_inodes",
        "_kept_any",
        "_lock",
        "last_login",
        "path",
        "sizes",
        "uids",
        "use_flags",
    )

    def __init__(
        self,
        path: str | Path,
        lock: MaildropLock,
        entries: list[_Entry],
        folders: _Folders,
        *,
        use_flags: bool = False,
        kept: dict[str, str] | None = None,
        shadowed: frozenset[str] = frozenset(),
    ) -> None:
        """``shadowed``: the unique parts of files left out of ``entries`` (trashed, with
        popuseimapflags) that may share one with a listed message."""
        # A string, not the Path: a Path and the parts it caches are 360 octets more in
        # every idle session (bench/RESULTS.md, section 14); it only names the Maildir.
        self.path = os.fspath(path)
        self.use_flags = use_flags
        kept = kept or {}
        self._identity: bytes | None = folders.identity()
        self._lock: MaildropLock | None = lock
        self._entries = entries
        uids = [kept.get(entry.unique) or uidl_for(entry.unique) for entry in entries]
        # Two files claiming one unique part have one UIDL so far.
        odd = len(set(uids)) < len(uids)
        if not odd and isinstance(kept, UidlMap) and kept.pinned:
            odd = any(uidl_for(entry.unique) in kept.pinned for entry in entries)
        # Message index -> its file's inode, for the files of a unique part that two or
        # more files claim (or claimed), None for any other maildrop: _locate() tells them
        # apart by it.
        self._inodes: dict[int, int | None] | None = None
        if odd:
            uids, self._inodes, pins = _twin_uidls(entries, kept, folders)
            if pins:
                kept = _pin(folders.root, kept, pins)
        # A listed message whose unique part a trashed file (left out) claims too is that
        # file's twin all the same: only its own inode is it. Found probing: with the
        # listed file removed by another agent, RETR served the trashed twin and DELE
        # unlinked it.
        for index, entry in enumerate(entries) if shadowed else ():
            if entry.unique in shadowed:
                if self._inodes is None:
                    self._inodes = {}
                self._inodes.setdefault(index, _inode_of(entry, folders))
        self.uids = tuple(uids)
        self._kept_any = bool(kept)  # pop3d-uidl has lines: UPDATE prunes the deleted's
        self.sizes = tuple(size_hint(entry.name) for entry in entries)
        self.last_login = _read_last_login(folders.root)

    @contextlib.contextmanager
    def _opened(self) -> Iterator[_Reopened]:
        if self._identity is None:
            raise StorageError(f"{self.path} is closed")
        folders = _Reopened(self.path, self._identity)
        try:
            yield folders
        finally:
            folders.close()

    def _locate(self, index: int, folders: _Reopened) -> tuple[int, str]:
        """The message's folder descriptor and current name. Another agent may have
        renamed it (flags, or the move from new/ to cur/) since the listing: find it again
        by its unique part. A name that is there but no longer a regular file (a link or
        a directory put in its place) is not followed: StorageError.

        The search never takes a file another listed message names, nor one of two
        files claiming the unique part: serving or, at UPDATE, unlinking it would be
        another message's (found probing: with a twin of the message listed, RETR served
        the twin and DELE removed it). A message whose unique part two files claimed at
        the listing (``_inodes``) is the file with its inode, under its name or renamed."""
        entry = self._entries[index]
        inode = self._inodes.get(index, -1) if self._inodes is not None else -1
        fd = folders.get(entry.subdir)
        if fd is not None:
            try:
                info = os.stat(entry.name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISREG(info.st_mode):
                    raise StorageError(f"{entry.subdir}/{entry.name} is no longer a regular file")
                if inode in (-1, info.st_ino):
                    return fd, entry.name
        if inode is None:  # a twin that could not be told apart at the listing
            raise MessageGone(f"{entry.unique} is no longer in {self.path}")
        others: set[tuple[str, str]] = set()
        if inode != -1:
            others = {
                (other.subdir, other.name)
                for position, other in enumerate(self._entries)
                if other.unique == entry.unique and position != index
            }
        found: list[tuple[str, int, str]] = []
        for subdir in ("cur", "new"):
            fd = folders.get(subdir)
            if fd is None:
                continue
            with os.scandir(fd) as listing:
                found += (
                    (subdir, fd, item.name)
                    for item in listing
                    if unique_part(item.name) == entry.unique
                    and (subdir, item.name) not in others
                    and item.is_file(follow_symlinks=False)
                    and inode in (-1, item.stat(follow_symlinks=False).st_ino)
                )
        if len(found) != 1:  # gone, or a twin appeared since the listing: which is it?
            raise MessageGone(f"{entry.unique} is no longer in {self.path}")
        entry.subdir, fd, entry.name = found[0]
        return fd, entry.name

    def open_message(self, index: int) -> BinaryIO:
        with self._opened() as folders:
            return self._open_message(index, folders)

    def _open_message(self, index: int, folders: _Reopened) -> BinaryIO:
        for _attempt in range(3):
            fd, name = self._locate(index, folders)
            try:
                return _open_message(name, fd)
            except FileNotFoundError:
                continue  # renamed between locate and open: look again
            except OSError as exc:
                # ELOOP: a link swapped in after the listing; refused, not followed.
                raise StorageError(f"cannot open {name} in {self.path}: {exc.strerror}") from exc
        raise MessageGone(f"message {index} keeps moving in {self.path}")

    def measure(self, indexes: tuple[int, ...]) -> list[int | StorageError]:
        """The CRLF sizes of ``indexes``: from ``pop3d-sizes`` where the file is still
        the one measured there (one ``stat``), else by reading it; what was read is
        written back for the next session (best effort). One message (``LIST n``) is
        just read: a client listing a big maildrop one message at a time would otherwise
        read and parse the whole of ``pop3d-sizes`` for each.

        A message that cannot be measured (gone since the listing: :class:`MessageGone`;
        unreadable) has its error in its place: it must not cost the others their sizes.
        Raises :class:`StorageError` only for the maildrop itself (a folder replaced)."""
        sizes: list[int | StorageError] = []
        with self._opened() as folders:
            root = folders.get("")
            assert root is not None  # get("") raises rather than miss the Maildir
            for subdir in _SUBDIRS:  # a folder replaced fails the command, not a message
                folders.get(subdir)
            if len(indexes) == 1:
                return [self._measure_or_error(indexes[0], folders, {})]
            kept = read_size_cache(root, len(self._entries))
            learned = False
            for index in indexes:
                size: int | StorageError | None = self._kept_size(index, folders, kept)
                if size is None:
                    size = self._measure_or_error(index, folders, kept)
                    # a name that cannot be a line (a space in it) is measured each time
                    measured = not isinstance(size, StorageError)
                    key = _size_key(self._entries[index].name)
                    learned = learned or (measured and key is not None)
                sizes.append(size)
            if learned:
                self._keep_sizes(root, kept)
        return sizes

    def _measure_or_error(
        self, index: int, folders: _Reopened, kept: dict[str, _SizeRecord]
    ) -> int | StorageError:
        try:
            return self._measure_one(index, folders, kept)
        except StorageError as exc:  # MessageGone among them
            return exc
        except OSError as exc:
            entry = self._entries[index]
            return StorageError(f"cannot read {entry.subdir}/{entry.name}: {exc.strerror}")

    def _kept_size(
        self, index: int, folders: _Reopened, kept: dict[str, _SizeRecord]
    ) -> int | None:
        entry = self._entries[index]
        key = _size_key(entry.name)
        record = kept.get(key) if key is not None else None
        fd = folders.get(entry.subdir) if record is not None else None
        if record is None or fd is None:
            return None
        try:
            info = os.stat(entry.name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None  # moved or gone: measuring finds it again, or fails as it would
        if not stat.S_ISREG(info.st_mode) or _size_record(info, record[3]) != record:
            return None
        return record[3]

    def correct_size_hint(self, index: int, inode: int, size: int) -> tuple[str, str] | None:
        """The message ``index``, whose file (``inode``) the caller read and found ``size``
        octets in canonical form, renamed so that its ``,W=`` says ``size``, as Dovecot
        renames a file whose ``W=`` proved wrong: the name is what every later session
        lists, so a wrong one would be listed, and its RETR refused, for ever. The rename
        stays in the message's folder, keeps the unique part (so the UIDL) and the flags,
        never replaces another name, and is synced before this returns. The caller holds
        the maildrop lock, as for every change a session makes.

        -> (old name, new name); (name, name) if the name says ``size`` already (corrected
        since the listing); None if the name has no ``W=``, or the file cannot be the
        message delivered. Raises :class:`StorageError` (also when the file is no longer
        the one measured) or OSError."""
        entry = self._entries[index]
        with self._opened() as folders:
            fd, name = self._locate(index, folders)
            hint = size_hint(name)
            if hint is None:
                return None
            if hint == size:
                return name, name
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if info.st_ino != inode:
                raise StorageError(f"{entry.subdir}/{name} is no longer the file measured")
            # A file smaller than its S= says, or empty, was cut short (a crash's ext4
            # artefact), and renaming it would serve the rest as a whole message (found
            # probing): it stays refused, as a message changed on disk. One larger was
            # rewritten in place (a filter adding a header): both sizes are corrected, as
            # Dovecot corrects them, where it stayed refused for ever (found probing).
            delivered = stored_size(name)
            if info.st_size == 0 or (delivered is not None and delivered > info.st_size):
                return None
            grown = delivered is not None and delivered < info.st_size
            target = with_size_hint(name, size, info.st_size if grown else None)
            if _kind(target, fd) != "missing":
                raise StorageError(f"{entry.subdir}/{target} exists already")
            os.rename(name, target, src_dir_fd=fd, dst_dir_fd=fd)
            entry.name = target
            os.fsync(fd)
        return name, target

    def _measure_one(self, index: int, folders: _Reopened, kept: dict[str, _SizeRecord]) -> int:
        with self._open_message(index, folders) as handle:
            info = os.fstat(handle.fileno())  # before the read: a change after shows later
            size = canonical_size(_chunks(handle))
        key = _size_key(self._entries[index].name)  # the name _open_message found
        if key is not None:
            kept[key] = _size_record(info, size)
        return size

    def _keep_sizes(self, root: int, kept: dict[str, _SizeRecord]) -> None:
        """Write ``kept`` back, without the messages this listing no longer has."""
        listed = {key for entry in self._entries if (key := _size_key(entry.name))}
        with contextlib.suppress(OSError):  # a read-only Maildir, a full disk: measure again
            write_size_cache(root, {key: kept[key] for key in kept if key in listed})

    def commit(
        self,
        deleted: tuple[int, ...],
        record_login: float | None,
        seen: tuple[int, ...] = (),
    ) -> tuple[int, int]:
        removed = failed = 0
        with self._opened() as folders:
            try:
                root = folders.get("")
            except StorageError:
                root = None  # the Maildir itself gone or replaced: nothing here is ours
            if root is None or (self._lock is not None and not self._lock.reassert(root)):
                # Or our lock file was removed or replaced and another session now holds
                # the one in its place: its UPDATE, not ours (storage/locks.py).
                return 0, len(deleted)
            if self.use_flags and seen:
                gone = set(deleted)
                self._mark_seen(folders, tuple(index for index in seen if index not in gone))
            unlinked: list[int] = []
            for index in deleted:
                try:
                    fd, name = self._locate(index, folders)
                    os.unlink(name, dir_fd=fd)
                    removed += 1
                    unlinked.append(index)
                except (MessageGone, FileNotFoundError):
                    removed += 1  # already gone: the client's wish is fulfilled
                    unlinked.append(index)
                except (StorageError, OSError):
                    failed += 1
            if deleted:
                try:
                    folders.sync()
                except OSError:
                    # Without the fsync the unlinks may not survive a crash: say so.
                    return 0, len(deleted)
            if unlinked and self._kept_any:
                self._prune_kept(folders, unlinked)
            if record_login is not None:
                with contextlib.suppress(StorageError):  # as a failed write: see there
                    root = folders.get("")
                    assert root is not None
                    _write_last_login(root, record_login)
        return removed, failed

    def _prune_kept(self, folders: _Reopened, gone: list[int]) -> None:
        """Drop the lines of the messages just removed from ``pop3d-uidl``, which every
        open reads whole: a migrated maildrop's file shrinks as its client deletes, and
        goes once the last imported message has. After the unlinks are on disk: a crash
        between leaves lines for files that are gone, which the reader ignores. Best
        effort: a line left costs reading it, never a wrong UIDL."""
        unlinked = set(gone)
        # A unique part another listed file still has (two files claiming one) keeps
        # its line: that file's UIDL must not change.
        staying = {e.unique for i, e in enumerate(self._entries) if i not in unlinked}
        removed = {self._entries[index].unique for index in unlinked} - staying
        # A pin goes with its file, and all of a unique part's with the last of its files.
        # A file left alone keeps its pin even when it is the unique part's own UIDL: a
        # copy restored beside it later must not take that UIDL from it.
        unpinned = {uidl_for(unique) for unique in removed}
        inodes = self._inodes or {}
        dropped = {
            pin_key(self._entries[index].unique, inode)
            for index in unlinked
            if (inode := inodes.get(index)) is not None
        }
        with contextlib.suppress(StorageError, OSError):
            root = folders.get("")
            assert root is not None
            kept = read_uidl_map(root)
            left = {
                key: uidl
                for key, uidl in kept.items()
                if key not in removed
                and key not in dropped
                and not ("/" in key and key.rpartition("/")[0] in unpinned)
            }
            if len(left) < len(kept):
                write_uidl_map(root, left)

    def _mark_seen(self, folders: _Reopened, indexes: tuple[int, ...]) -> None:
        """Add S to each message (moving it from new/ to cur/); best effort, then fsync."""
        try:
            cur = folders.get("cur")
        except StorageError:
            return
        if cur is None:
            return
        touched = False
        for index in indexes:
            try:
                fd, name = self._locate(index, folders)
                target = seen_name(name)
                if target is None:
                    continue
                if _kind(target, cur) != "missing":
                    continue  # never replace another file
                os.rename(name, target, src_dir_fd=fd, dst_dir_fd=cur)
                entry = self._entries[index]
                entry.subdir, entry.name = "cur", target
                touched = True
            except (StorageError, OSError):
                continue
        if touched:
            with contextlib.suppress(OSError):
                folders.sync()

    def close(self) -> None:
        self._identity = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __del__(self) -> None:
        self.close()


def _read_last_login(root: int) -> float | None:
    try:
        info = os.stat(LAST_LOGIN_NAME, dir_fd=root, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return info.st_mtime if stat.S_ISREG(info.st_mode) else None


def _write_last_login(root: int, when: float) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(LAST_LOGIN_NAME, flags, 0o600, dir_fd=root)
    except OSError:
        return  # losing LOGIN-DELAY bookkeeping must not fail a QUIT whose mail is safe
    try:
        os.utime(fd, (when, when))
    except OSError:
        pass
    finally:
        os.close(fd)


def _servable(chunk: bytes) -> bytes:
    """A delivered message's octets, unless no client should be served them: NUL, which
    RFC 5322 forbids and Cyrus's lmtpd refuses (554 5.6.0)."""
    if b"\0" in chunk:
        raise UnacceptableMessage("the message contains NUL octets")
    return chunk


def _not_empty(size: int) -> None:
    if size == 0:
        raise UnacceptableMessage("the message is empty")


class MaildirStore:
    """Where each user's Maildir is: ``template`` with ``%u`` (user), ``%n`` (local part),
    ``%d`` (domain), ``%p`` (``partition-default``) and ``%%``."""

    def __init__(
        self,
        template: str,
        partition: str = "",
        create: bool = True,
        use_flags: bool = False,
        lock_table: Path | None = None,
    ) -> None:
        self.template = template
        # The template split once where it first names the user (location()): a session's
        # open splits no template and runs no expression over it (it cost a plain session
        # 3 % of its CPU, bench/RESULTS.md section 31)
        components = template.split("/")
        first = next(
            (
                index
                for index, component in enumerate(components)
                if _PER_USER_ESCAPE.search(component.replace("%%", ""))
            ),
            len(components) - 1,  # no per-user folder: the last is not followed, as before
        )
        self._head = "/".join(components[:first])
        self._tail = "/".join(components[first:])
        self.partition = partition
        self.create = create
        self.use_flags = use_flags  # popuseimapflags
        # maildrop_lock: the table's file, or None for pop3d.lock in each Maildir
        self.lock_table = lock_table
        # (user, folder) -> when this process last opened that Maildir (time.monotonic())
        # within WARM_OPEN_CPU, oldest first; at most WARM_USERS (recently_opened()).
        self._opened: dict[tuple[str, str | None], float] = {}
        # Maildir folder path -> (its listing_stamp(), its listing as (subdir, name, unique)
        # triples), oldest first; see _listing(). Opens run on the event loop and in I/O
        # threads: the lock keeps the bookkeeping whole.
        self._listings: dict[str, tuple[tuple[int, ...] | None, tuple[tuple[str, str, str], ...]]]
        self._listings = {}
        self._listed = 0  # names held in _listings
        self._listings_lock = threading.Lock()

    def recently_opened(self, user: str, folder: str | None = None) -> bool:
        """Whether this process opened ``user``'s Maildir (``folder``: that popsubfolders
        folder of it) in the last :data:`WARM_SECONDS`, for at most :data:`WARM_OPEN_CPU` of
        CPU: its folders' entries and inodes are then almost surely in the kernel's caches,
        so opening it again waits for no disk, and it is small enough to open between two
        other sessions' commands (a maildrop of thousands of messages, or a big
        ``pop3d-uidl``, is not, however recently it was opened)."""
        when = self._opened.get((user, folder))
        return when is not None and time.monotonic() - when < WARM_SECONDS

    def _note_opened(self, user: str, folder: str | None, cpu: float) -> None:
        opened = self._opened
        key = (user, folder)
        opened.pop(key, None)
        if cpu > WARM_OPEN_CPU:
            return
        opened[key] = time.monotonic()
        if len(opened) > WARM_USERS:
            del opened[next(iter(opened))]

    def lock(self, root: int, path: str | Path) -> MaildropLock:
        """The maildrop lock of the Maildir ``path``, open as ``root``, the one every POP3
        session and every ``pop3d-admin import`` takes (storage/locks.py):
        :class:`MaildropInUse` if another holder has it, :class:`StorageError` otherwise."""
        if self.lock_table is None:
            return lock_in_maildir(root, path)
        return table_at(self.lock_table).lock(root, path)

    def path_for(self, user: str) -> Path:
        return self.location(user).path

    def _expand(self, text: str, user: str) -> str:
        if "%" not in text:
            return text
        local, _, domain = user.partition("@")
        values = {"u": user, "n": local, "d": domain, "p": self.partition, "%": "%"}

        def value(match: re.Match[str]) -> str:
            key = match.group(1)
            if key not in values:
                raise StorageError(f"maildir template {self.template!r}: unknown %{key}")
            return values[key]

        return _ESCAPE.sub(value, text)

    def location(self, user: str, folder: str | None = None) -> MaildirLocation:
        """The user's Maildir (with ``folder``: its Maildir++ folder ``.<folder>``,
        popsubfolders), split where the template first fills in a per-user value."""
        head = self._expand(self._head, user)
        # (an empty %d leaves "/spool/", as if it were "/spool")
        followed = head.rstrip("/") or ("/" if self.template.startswith("/") else ".")
        # An empty value (%d of a user without a domain) leaves no folder of its own
        parts = tuple(part for part in self._expand(self._tail, user).split("/") if part)
        if folder is not None:
            # The login already took only a valid folder name; this refuses anything that
            # would not be one entry inside the Maildir all the same.
            if not folder or folder.startswith(".") or "/" in folder or "\0" in folder:
                raise StorageError(f"folder name {folder!r} refused")
            parts += (f".{folder}",)
        if any(part in (".", "..") for part in parts):
            raise StorageError(f"maildrop path {os.path.join(followed, *parts)} refused")
        return MaildirLocation(followed, parts)

    def folder_path(self, user: str, folder: str) -> Path:
        """The Maildir++ folder ``.<folder>`` of the user's Maildir (popsubfolders)."""
        return self.location(user, folder).path

    def open(self, user: str, folder: str | None = None) -> MaildirMaildrop:
        """The user's Maildir, or with ``folder`` (popsubfolders) that folder of it, which
        must exist (:class:`NoSuchFolder`; a folder is never created). Each is a maildrop
        of its own: its own lock, listing and kept UIDLs."""
        started = time.thread_time()  # this thread's CPU: not the GIL's waits, not a disk's
        where = self.location(user, folder)
        path = where.text
        try:
            folders = _Folders(where)
        except FileNotFoundError:
            if folder is not None:
                raise NoSuchFolder(f"{path} does not exist") from None
            if not self.create:
                raise StorageError(f"{path} does not exist") from None
            # First login: make the Maildir (only now, not on every login).
            where.make()
            try:
                folders = _Folders(where)
            except OSError as exc:
                raise StorageError(f"cannot open {path}: {exc.strerror}") from exc
        except OSError as exc:
            # ELOOP/ENOTDIR: the Maildir, a user's folder above it, or new/, cur/ is a
            # symbolic link: refused.
            raise StorageError(f"cannot open {path}: {exc.strerror}") from exc
        try:
            lock = self.lock(folders.root, path)
        except StorageError:
            folders.close()
            raise
        try:
            entries = self._listing(path, folders)
            shadowed: frozenset[str] = frozenset()
            if self.use_flags:
                shadowed = frozenset(e.unique for e in entries if "T" in flags_of(e.name))
                if shadowed:
                    entries = [entry for entry in entries if "T" not in flags_of(entry.name)]
            kept = read_uidl_map(folders.root)
            drop = MaildirMaildrop(
                path,
                lock,
                entries,
                folders,
                use_flags=self.use_flags,
                kept=kept,
                shadowed=shadowed,
            )
        except BaseException:
            lock.release()
            raise
        finally:
            folders.close()  # opened again per command (MaildirMaildrop._opened)
        self._note_opened(user, folder, time.thread_time() - started)
        return drop

    def _listing(self, path: str, folders: _Folders) -> list[_Entry]:
        """``new/`` and ``cur/`` listed in delivery order. A big folder (LISTING_KEPT_FROM
        names or more, seen once) whose two directories are the same and unchanged since
        this process last listed them (listing_stamp()) is not read again: a client polling
        a maildrop of thousands of messages with nothing new costs two fstat calls instead
        of reading and parsing every name. The stamp is taken before the directories are
        read, so a change while they are read makes the kept listing newer than its stamp,
        never older: the next open sees another stamp and reads them again."""
        key = os.fspath(path)
        known = key in self._listings
        stamp = folders.listing_stamp() if known else None
        if stamp is not None:
            with self._listings_lock:
                kept = self._listings.pop(key, None)
                if kept is not None:
                    self._listings[key] = kept  # the newest now
            if kept is not None and kept[0] == stamp:
                return [_Entry(subdir, name, unique) for subdir, name, unique in kept[1]]
        entries = sorted(self._scan(path, folders), key=_order_key)
        big = len(entries) >= LISTING_KEPT_FROM
        if big or known:
            self._keep_listing(key, stamp, entries if big else None)
        return entries

    def _keep_listing(
        self, key: str, stamp: tuple[int, ...] | None, entries: list[_Entry] | None
    ) -> None:
        """Keep ``key``'s listing (newest last), or without a stamp only that the folder is
        big, so that its next open takes a stamp first; None: forget the folder."""
        fields = tuple((e.subdir, e.name, e.unique) for e in entries or ()) if stamp else ()
        with self._listings_lock:
            old = self._listings.pop(key, None)
            if old is not None:
                self._listed -= len(old[1])
            if entries is None or len(fields) > LISTING_KEPT_ENTRIES:
                return
            self._listings[key] = (stamp, fields)  # no stamp: no fields
            self._listed += len(fields)
            while self._listed > LISTING_KEPT_ENTRIES:  # never the one just kept
                oldest = next(iter(self._listings))
                self._listed -= len(self._listings.pop(oldest)[1])

    @staticmethod
    def _scan(path: str, folders: _Folders) -> Iterator[_Entry]:
        for subdir in _SUBDIRS:
            if subdir not in folders.fds:
                continue
            try:
                with os.scandir(folders.fds[subdir]) as listing:
                    for item in listing:
                        if item.name.startswith(".") or not item.is_file(follow_symlinks=False):
                            continue
                        yield _Entry(subdir, item.name, unique_part(item.name))
            except OSError as exc:
                raise StorageError(f"cannot list {path}/{subdir}: {exc.strerror}") from exc

    def deliver(self, user: str, source: BinaryIO) -> Path:
        """Store one message durably in ``new/``; returns its path. On any error nothing is
        left in ``new/`` and the exception propagates (the MTA keeps the message)."""
        where = self.location(user)
        where.make()
        try:
            folders = _Folders(where, ("tmp", "new"))
        except OSError as exc:
            raise StorageError(f"cannot open {where.path}: {exc.strerror}") from exc
        try:
            return self._deliver(where.path, folders, source)
        finally:
            folders.close()

    @staticmethod
    def _deliver(path: Path, folders: _Folders, source: BinaryIO) -> Path:
        tmp, new = folders.fds["tmp"], folders.fds["new"]
        unique = _new_unique_name()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(unique, flags, 0o600, dir_fd=tmp)
        except OSError as exc:
            raise StorageError(f"cannot create tmp/{unique} in {path}: {exc.strerror}") from exc
        final: str | None = None
        doing = f"write tmp/{unique}"  # for the error: which step failed
        try:
            counter = SizeCounter()
            size = 0
            with os.fdopen(fd, "wb") as handle:
                while chunk := _read(source):
                    handle.write(_servable(chunk))
                    counter.feed(chunk)
                    size += len(chunk)
                _not_empty(size)
                handle.flush()
                doing = f"sync tmp/{unique}"
                os.fsync(handle.fileno())
            linked = f"{unique},S={size},W={counter.finish()}"
            doing = f"link tmp/{unique} into new/"
            os.link(unique, linked, src_dir_fd=tmp, dst_dir_fd=new, follow_symlinks=False)
            final = linked
            doing = "sync new/"
            os.fsync(new)
        except BaseException as exc:
            # The MTA will deliver again: a link whose directory could not be synced
            # must not stay behind as a duplicate.
            if final is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(final, dir_fd=new)
            with contextlib.suppress(OSError):  # a leftover in tmp/ is never listed
                os.unlink(unique, dir_fd=tmp)
            if isinstance(exc, OSError):
                raise StorageError(f"cannot {doing} in {path}: {exc.strerror}") from exc
            raise
        # The message is in new/ and synced: failing now would make the MTA deliver it
        # again. A name left in tmp/ is a second link to the same file (no space lost),
        # and tmp/ is never listed.
        with contextlib.suppress(OSError):
            os.unlink(unique, dir_fd=tmp)
        _clean_tmp(tmp)
        return path / "new" / final


# A file in tmp/ older than this is a delivery that died (killed, the machine down): the
# Maildir convention (cr.yp.to/proto/maildir.html) removes it after 36 hours, as Dovecot
# does. Nothing else ever would (found probing: killed deliveries stayed for good).
TMP_ABANDONED_AFTER = 36 * 3600


def _clean_tmp(tmp: int) -> None:
    """Remove abandoned deliveries from tmp/ (a directory fd): regular files not changed
    for TMP_ABANDONED_AFTER, never following a link. Best effort, after a delivery."""
    cutoff = time.time() - TMP_ABANDONED_AFTER
    with contextlib.suppress(OSError), os.scandir(tmp) as listing:
        for item in listing:
            with contextlib.suppress(OSError):
                info = item.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    os.unlink(item.name, dir_fd=tmp)


def _read(source: BinaryIO) -> bytes:
    """A chunk of the message to deliver (the MTA's pipe): its error is not the Maildir's."""
    try:
        return source.read(_CHUNK)
    except OSError as exc:
        raise StorageError(f"cannot read the message: {exc.strerror}") from exc


def _new_unique_name() -> str:
    """``time.MusecPpidQcountRrandom.host``: unique across processes, hosts and restarts."""
    now = time.time()
    seconds = int(now)
    micro = int((now - seconds) * 1_000_000)
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")
    return (
        f"{seconds}.M{micro}P{os.getpid()}Q{next(_delivery_counter)}R{secrets.token_hex(4)}.{host}"
    )


def store_from_config(config: Config, service: str | None = None) -> MaildirStore:
    template = config.string("maildir_path", service) or ""
    partition = config.string("partition-default", service) or ""
    if "%p" in template and not partition:
        raise ConfigError(
            [
                Problem(
                    config.path,
                    0,
                    f"maildir_path {template!r} uses %p but partition-default is not set",
                )
            ]
        )
    if "%p" in template and (trouble := _partition_problem(partition)):
        # Found probing: a partition-default that is a file checked clean, and every
        # login and delivery then failed. A missing one is made at the first delivery.
        message = f"partition-default {partition}: {trouble}"
        raise ConfigError([config.problem_with("partition-default", service, message)])
    return MaildirStore(
        template,
        partition,
        create=config.switch("maildir_create", service),
        use_flags=config.switch("popuseimapflags", service),
        lock_table=lock_table_from_config(config, service),
    )


def _partition_problem(partition: str) -> str | None:
    try:
        info = os.stat(partition)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    return None if stat.S_ISDIR(info.st_mode) else "not a folder"


def lock_table_from_config(config: Config, service: str | None = None) -> Path | None:
    """``maildrop_lock: table``: the table's file in the configuration directory (which it
    then needs); ``maildir``: None (storage/locks.py)."""
    if config.string("maildrop_lock", service) != "table":
        return None
    configdirectory = config.string("configdirectory", service)
    if not configdirectory:
        raise ConfigError(
            [Problem(config.path, 0, "maildrop_lock: table needs configdirectory to be set")]
        )
    return Path(configdirectory) / "lock" / TABLE_NAME
