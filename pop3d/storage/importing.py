"""What every ``pop3d-admin import`` shares (issue 14): the locked target Maildir and the
crash-safe write of one imported message with the UIDL it keeps.

Order of writes, for a run that can be killed anywhere: the ``pop3d-uidl`` line (fsync),
then the message in ``tmp/`` (fsync), linked into ``new/`` or ``cur/`` (fsync). A line
without its message is ignored by the reader (``maildir.read_uidl_map`` serves lines only
for files that exist); a message is present only whole and with its line. Then a line
naming the source message in ``pop3d-imported`` (fsync, :class:`ImportedRecord`): a second
run skips what it names, so mail deleted at pop3d since stays deleted. Each importer derives
a deterministic unique part per source message, so a run killed before that line finds the
message there, names it, and goes on: each message once.

The source belongs to a user (a Dovecot Maildir or an mbox in a home folder), and the
import runs with more rights than they have (root, or ``cyrus_user``, who can read every
Maildir and the credential file). So nothing of it is opened through a symbolic link: the
source folder and each folder between it and the part of the path the administrator wrote
out (:class:`SourcePath`), ``new/`` and ``cur/``, the uidlist, every message and the mbox
are opened relative to directory file descriptors with ``O_NOFOLLOW``, the way
``storage/maildir.py`` opens a spool; only directories and regular files are accepted, opened
``O_NONBLOCK`` (a FIFO cannot hang the import), and what is read whole has a size cap.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from pop3d.message import SizeCounter
from pop3d.storage.base import MaildropInUse, StorageError
from pop3d.storage.maildir import (
    UIDL_MAP_NAME,
    MaildirStore,
    _Folders,
    _open_directory,
    _open_message,
)

# The most an import reads of one message: it holds a message whole (copied complete or not
# at all), and a sparse file a user plants costs no disk, only the importer's memory.
MESSAGE_MAX = 256 * 1024 * 1024
# What earlier runs imported into a Maildir (ImportedRecord): a line a message, forever
IMPORTED_NAME = "pop3d-imported"
_IMPORTED_MAX = 64 * 1024 * 1024
_FOLLOWED_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_REGULAR_FILE = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
FOLDER = "a folder"
REGULAR_FILE = "a regular file"


class ImportFailed(Exception):
    """The import cannot start or go on (corrupt uidlist, target unusable)."""


class SourceRefused(ImportFailed):
    """The source, or a part of it the import needs whole, is not what an import reads: a
    symbolic link, a FIFO, a device, a file larger than its cap, a file that is not an mbox
    or a uidlist that does not parse. Nothing was imported; running again will not help."""


class SourceUnreadable(ImportFailed):
    """The source, or its uidlist, does not exist or may not be read. Nothing was
    imported."""


@dataclass(frozen=True, slots=True)
class SourcePath:
    """Where an import reads. ``followed`` is the administrator's part of the path, resolved
    as any path is (a link there is theirs: ``/var/mail`` is one on many systems); each of
    ``parts`` after it is opened in the one before without following a link. The source
    itself is always among ``parts``: even a path typed on the command line may end in a
    user's home folder, where that user can swap a link in between the typing and the run."""

    followed: Path
    parts: tuple[str, ...]

    def __str__(self) -> str:
        return str(self.followed.joinpath(*self.parts))

    @classmethod
    def given(cls, path: Path) -> SourcePath:
        """A path named on the command line: only its last component is not followed."""
        if path.name in ("", ".", ".."):
            return cls(path, ())  # "." or "/": a folder the administrator stands in or names
        return cls(path.parent, (path.name,))

    @classmethod
    def from_template(cls, template: str, user: str) -> SourcePath:
        """``template`` (``/home/%u/Maildir``) for ``user``: the folders before the first
        one holding a variable are the administrator's; from that one on, every folder is
        one a user may own, and none is followed (MaildirStore.path_for's variables; its
        StorageError for an unknown one)."""
        parts = Path(template).parts
        first = next((i for i, part in enumerate(parts) if "%" in part), len(parts) - 1)
        first = max(0, min(first, len(parts) - 1))
        expanded = MaildirStore(os.path.join(*parts[first:])).path_for(user)
        # Every part of the expansion is a folder under the administrator's part: an empty
        # %d ("%d/%n" for a user without a domain) gave "/bob" and the walk began at the
        # root (found probing); a name holding "/" is refused by the caller.
        inside = tuple(part for part in expanded.parts if part != "/")
        return cls(Path(*parts[:first]), inside)


def not_what_was_wanted(mode: int, wanted: str) -> str:
    """Why a file of ``mode`` is not read where ``wanted`` ("a folder", "a regular file")
    is: what it is, and that (the audit trail's JSON file says it the same way)."""
    if stat.S_ISLNK(mode):
        return "a symbolic link, not followed"
    if stat.S_ISDIR(mode):
        kind = "a folder"
    elif stat.S_ISREG(mode):
        kind = "a regular file"
    elif stat.S_ISFIFO(mode):
        kind = "a FIFO"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "a device"
    else:
        kind = "neither a file nor a folder"
    return f"{kind}, not {wanted}"


def refusal(name: str, dir_fd: int | None, exc: OSError, wanted: str) -> tuple[bool, str]:
    """Why ``name`` in ``dir_fd`` did not open as ``wanted`` ("a folder", "a regular file"):
    (True, what it is) when that is the reason (a link, a FIFO), else (False, the error)."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EINVAL, errno.EISDIR):
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            pass
        else:
            return True, not_what_was_wanted(info.st_mode, wanted)
    return False, exc.strerror or str(exc)


def source_error(
    shown: str, name: str, dir_fd: int | None, exc: OSError, wanted: str
) -> ImportFailed:
    refused, reason = refusal(name, dir_fd, exc, wanted)
    if refused:
        return SourceRefused(f"{shown}: {reason}")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM):
        return SourceUnreadable(f"{shown}: {reason}")
    return ImportFailed(f"{shown}: {reason}")


def _walk(followed: Path, parts: tuple[str, ...]) -> int:
    """The directory at ``followed`` (followed as any path) then ``parts`` in it, each opened
    without following a link: a directory fd."""
    try:
        fd = os.open(followed, _FOLLOWED_DIRECTORY)
    except OSError as exc:
        raise source_error(str(followed), str(followed), None, exc, FOLDER) from None
    where = followed
    for part in parts:
        where = where / part
        if part == "..":  # only a template's expansion can put it here (a user "..")
            os.close(fd)
            raise SourceRefused(f"{where}: '..' where no link is followed")
        try:
            inner = _open_directory(part, fd)
        except OSError as exc:
            raise source_error(str(where), part, fd, exc, FOLDER) from None
        finally:
            os.close(fd)
        fd = inner
    return fd


def open_source_directory(source: SourcePath) -> int:
    """The source folder (a Dovecot Maildir) as a directory fd; :class:`SourceRefused` when
    it, or a folder on the way that is not the administrator's, is a link or no folder."""
    return _walk(source.followed, source.parts)


def open_source_file(source: SourcePath) -> BinaryIO:
    """The source file (an mbox), buffered; :class:`SourceRefused` when it is a link, a
    FIFO, a device or a folder, or a folder on the way is a link."""
    if not source.parts:
        return open_regular_file(str(source.followed), None, str(source))
    folder = _walk(source.followed, source.parts[:-1])
    try:
        return open_regular_file(source.parts[-1], folder, str(source))
    finally:
        os.close(folder)


def open_regular_file(name: str, dir_fd: int | None, shown: str) -> BinaryIO:
    """``name`` in ``dir_fd`` (without one: the administrator's path, followed), buffered:
    not through a link, and only a regular file (``O_NONBLOCK``, then ``fstat``: a FIFO
    opens without waiting for a writer, and is refused)."""
    flags = _REGULAR_FILE if dir_fd is None else _REGULAR_FILE | os.O_NOFOLLOW
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise source_error(shown, name, dir_fd, exc, REGULAR_FILE) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    raise SourceRefused(f"{shown}: {not_what_was_wanted(mode, REGULAR_FILE)}")


def source_exists(source: SourcePath) -> bool:
    """Whether there is anything at ``source``, a link too (the import then says it refuses
    it). Only for ``--all``'s "nothing at": the import opens it again, as above."""
    return os.path.lexists(str(source))


def read_capped(handle: BinaryIO, limit: int, shown: str) -> bytes:
    """The whole of ``handle``, at most ``limit`` bytes (SourceRefused beyond)."""
    if os.fstat(handle.fileno()).st_size > limit:
        raise SourceRefused(f"{shown}: larger than {limit} bytes")
    data = handle.read(limit + 1)
    if len(data) > limit:  # grew since the fstat
        raise SourceRefused(f"{shown}: larger than {limit} bytes")
    return data


@dataclass
class ImportReport:
    imported: int = 0
    present: int = 0  # already in the target: skipped
    unlisted: int = 0  # of those imported, files the source's index did not name
    skipped: list[str] = field(default_factory=list)  # "file: reason"


class ImportedRecord:
    """``pop3d-imported`` in the target Maildir: a line for each source message an import
    copied there, ``<source kind> <its identity there>`` (:func:`source_key`), appended and
    fsynced once the message is in. A message it names is not copied again. The target's
    files and ``pop3d-uidl`` cannot say it: UPDATE removes both, and judging by them a
    second run brought back what the user had deleted at pop3d since (found probing).

    A message found in the target but not named here (a run killed between the message and
    its line, or a Maildir imported before there was a record) is named when a run finds
    it, so a killed run, run again, copies each message once. Read like ``pop3d-uidl``: not
    through a link, a regular file only, capped; a last line without its line end was
    never written whole and is not taken."""

    def __init__(self, root: int) -> None:
        self._root = root
        self._keys: set[str] = set()
        try:
            handle = _open_message(IMPORTED_NAME, root)
        except FileNotFoundError:
            return
        with handle:
            data = handle.read(_IMPORTED_MAX + 1)
        if len(data) > _IMPORTED_MAX:
            raise StorageError(f"{IMPORTED_NAME} is larger than {_IMPORTED_MAX} bytes")
        self._keys.update(data.decode("ascii", "replace").split("\n")[:-1])

    def has(self, key: str, *, in_target: bool) -> bool:
        """Whether the message ``key`` was imported before: named here, or ``in_target``
        (its file or UIDL is there), and named now."""
        if key in self._keys:
            return True
        if in_target:
            self.add(key)
        return in_target

    def add(self, key: str) -> None:
        if key not in self._keys:
            append_line(self._root, IMPORTED_NAME, f"{key}\n".encode("ascii"))
            self._keys.add(key)


def source_key(kind: str, identity: str) -> str:
    """A line of :class:`ImportedRecord`: ``identity`` (a file name, a UIDL) escaped to
    printable ASCII without spaces, so no name can span two lines or read as another."""
    return f"{kind} {quote(identity.encode('utf-8', 'surrogateescape'), safe='')}"


@contextlib.contextmanager
def locked_target(store: MaildirStore, user: str) -> Iterator[_Folders]:
    """The user's Maildir (made if missing), its maildrop lock held for the block; any
    storage error opening or writing it becomes ImportFailed."""
    where = store.location(user)
    target = where.path
    try:
        where.make()
        folders = _Folders(where, ("tmp", "new", "cur"))
    except (OSError, StorageError) as exc:
        raise ImportFailed(f"cannot open {target}: {exc}") from exc
    try:
        try:
            lock = store.lock(folders.root, target)
        except MaildropInUse as exc:
            raise MaildropInUse(f"{target} is in use (a POP3 session?)") from exc
        try:
            yield folders
        finally:
            lock.release()
    except (OSError, StorageError) as exc:
        raise ImportFailed(f"{target}: {exc}") from exc
    finally:
        folders.close()


def write_message(
    folders: _Folders,
    unique: str,
    uidl: str,
    data: bytes,
    *,
    destination: str,
    info: str,
    listed: int | None = None,
) -> None:
    """The ``pop3d-uidl`` line (fsync), then ``data`` in tmp/ (fsync), linked as
    ``<unique>,S=,W=<info>`` into ``destination`` (new or cur; fsync). ``listed``: the size
    the old server's LIST gave, kept as W= where it is the size or 2 short of it (Dovecot's
    W= leaves out the line end sent after a message without a final one; pop3d's RETR
    allows for that, DESIGN.md, Storage)."""
    counter = SizeCounter()
    counter.feed(data)
    size = counter.finish()
    if listed is not None and listed in (size, size - 2):
        size = listed
    final = f"{unique},S={len(data)},W={size}{info}"
    _append_uidl(folders.root, unique, uidl)
    tmp = folders.fds["tmp"]
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(unique, flags, 0o600, dir_fd=tmp)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.link(
            unique,
            final,
            src_dir_fd=tmp,
            dst_dir_fd=folders.fds[destination],
            follow_symlinks=False,
        )
        os.fsync(folders.fds[destination])
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(unique, dir_fd=tmp)


def _append_uidl(root: int, unique: str, uidl: str) -> None:
    append_line(root, UIDL_MAP_NAME, f"{unique} {uidl}\n".encode("ascii"))


def append_line(root: int, name: str, line: bytes) -> None:
    """``line`` appended to ``name`` in the Maildir ``root`` and fsynced: whole, or not at
    all. A write cut short (ENOSPC part-way through a line) is cut back to the old size: a
    torn line left there had the next run's line glued to it, the two read as one line that
    does not parse, and that run's message was served under a UIDL no client knew (found
    probing). A torn last line found there (a crash of the machine mid-write) is cut off
    first: it was never whole, and a part of a line may read as another whole one."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o600, dir_fd=root)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            size = os.pread(fd, size, 0).rfind(b"\n") + 1
            os.ftruncate(fd, size)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
                os.fsync(fd)
            raise
    finally:
        os.close(fd)
