"""The credential file: one line per user, each secret tagged with its scheme.

Format (modelled on Dovecot's passwd-file with ``{SCHEME}`` prefixes)::

    # comments and blank lines are kept when the file is rewritten
    alice:{ARGON2ID}$argon2id$v=19$m=7168,t=5,p=1$<salt>$<hash>
    bob:{ARGON2ID}$argon2id$...:{PLAIN.B64}YnVpbGRlcg==

* ``ARGON2ID``: the password hash, PHC string form; used by USER/PASS.
* ``PLAIN.B64``: base64 of the password itself, a plaintext equivalent. Written only when
  the site enables APOP and the administrator asks for it for that user (APOP cannot work
  without it). Scheme names this build does not know are kept on rewrite and ignored.

The file must not be readable or writable by group or others; it is refused otherwise.
Readers re-read it when it changes (inode, size, mtime, ctime). Writers take an exclusive
lock on ``<file>.lock``, write a temporary file in the same directory, fsync it and rename
it over the old one, so concurrent ``pop3d-admin`` runs cannot lose an update and a reader
never sees half a file. The new file keeps the old one's owner: the server reads it as
``cyrus_user``, and a file that root rewrote as its own (mode 0600) would lock the server
out of every password; a file (and a folder) made anew goes to the owner the writer names.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SCHEME_ARGON2ID = "ARGON2ID"
SCHEME_PLAIN_B64 = "PLAIN.B64"
_FORBIDDEN_MODE = stat.S_IRWXG | stat.S_IRWXO


class CredentialFileError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class UserRecord:
    name: str
    secrets: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"UserRecord({self.name!r}, schemes={sorted(self.secrets)})"


def _parse_line(line: str, where: str) -> UserRecord:
    name, sep, rest = line.partition(":")
    if not sep or not name or not rest:
        raise CredentialFileError(f"{where}: expected user:{{SCHEME}}secret")
    record = UserRecord(name)
    for item in rest.split(":"):
        if not item.startswith("{") or "}" not in item:
            raise CredentialFileError(f"{where}: secret without a {{SCHEME}} prefix")
        scheme, _, value = item[1:].partition("}")
        if not scheme or scheme in record.secrets:
            raise CredentialFileError(f"{where}: empty or repeated scheme {scheme!r}")
        record.secrets[scheme.upper()] = value
    return record


def format_record(record: UserRecord) -> str:
    if ":" in record.name or "\n" in record.name:
        raise CredentialFileError(f"user name {record.name!r} cannot be stored")
    return record.name + "".join(f":{{{k}}}{v}" for k, v in record.secrets.items())


def _unusable(path: Path, reason: str) -> str:
    """An error about the file as a whole, named with the option that names it (its default
    is in configdirectory): whoever reads the message knows what to fix."""
    return f"credentials_file {path}: {reason}"


def _check_regular(path: Path, st: os.stat_result) -> None:
    # a directory would fail the first read, a FIFO would hang it
    if not stat.S_ISREG(st.st_mode):
        raise CredentialFileError(_unusable(path, "not a regular file"))


def _check_mode(path: Path, st: os.stat_result) -> None:
    if st.st_mode & _FORBIDDEN_MODE & ~(stat.S_IXGRP | stat.S_IXOTH):
        raise CredentialFileError(
            f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others read or write "
            "it; refusing to use it (chmod 600)"
        )


def _decode(line: bytes, where: str) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialFileError(f"{where}: not UTF-8") from None


def _lines(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(line number, offset, line without its newline). Only ``\n`` ends a line, on the
    read side and the write side alike (``str.splitlines`` would also split at \x85 or
    U+2028, which a user name may hold)."""
    start, number = 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            end = len(data)
        number += 1
        yield number, start, data[start:end]
        start = end + 1


def parse(data: bytes, path: Path) -> tuple[list[str | UserRecord], dict[str, UserRecord]]:
    lines: list[str | UserRecord] = []
    users: dict[str, UserRecord] = {}
    for number, _, raw in _lines(data):
        where = f"{path}:{number}"
        text = _decode(raw, where)
        line = text.strip()
        if not line or line.startswith("#"):
            lines.append(text)
            continue
        record = _parse_line(line, where)
        if record.name in users:
            raise CredentialFileError(f"{where}: user {record.name!r} appears twice")
        users[record.name] = record
        lines.append(record)
    return lines, users


def _index(data: bytes, path: Path) -> dict[str, int]:
    """Every line checked as :func:`parse` checks it; kept: where each user's line starts."""
    offsets: dict[str, int] = {}
    for number, start, raw in _lines(data):
        where = f"{path}:{number}"
        line = _decode(raw, where).strip()
        if not line or line.startswith("#"):
            continue
        name = _parse_line(line, where).name
        if name in offsets:
            raise CredentialFileError(f"{where}: user {name!r} appears twice")
        offsets[name] = start
    return offsets


def _read_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _read_line(fd: int, offset: int) -> bytes:
    """The line at ``offset``: a record is a few hundred octets, so one read nearly always."""
    data = b""
    while True:
        chunk = os.pread(fd, 1024, offset + len(data))
        end = chunk.find(b"\n")
        if end >= 0:
            return data + chunk[:end]
        data += chunk
        if not chunk:
            return data


# A file changed less than this long ago may be changed again in place within the file
# system's timestamp granularity, at the same size, and keep its signature.
_SETTLED_NS = 2_000_000_000


class _Version:
    """One version of the file as the reader opened it: the descriptor (closed when the
    version is dropped), where each user's line starts in it, and from when no edit in
    place can hide behind its signature."""

    __slots__ = ("__weakref__", "fd", "offsets", "settled_ns", "signature")

    def __init__(self, fd: int, st: os.stat_result, offsets: dict[str, int]) -> None:
        self.fd, self.signature, self.offsets = fd, _signature(st), offsets
        self.settled_ns = max(st.st_mtime_ns, st.st_ctime_ns) + _SETTLED_NS
        weakref.finalize(self, os.close, fd)


def _signature(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class CredentialFile:
    """Read side, shared by the worker threads that verify passwords.

    It keeps an index, not the records: for each user, where its line starts in the
    version of the file it last read, and that version open; a lookup reads the one line
    and parses it. A process then holds about 130 octets per user instead of the parsed
    records (1,060 octets each, and 1.7 KiB of a worker's RSS after the parse: RESULTS.md
    16.2), and no process keeps every user's secrets in its memory: a worker's core dump
    holds those it looked up, not the whole file. Writers replace the file by rename, so
    the open version never changes under its index; a file edited in place changes its
    signature, and a line that no longer names its user sends the reader to index the
    file again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._version: _Version | None = None
        self._generation = 0

    def _refresh(self, force: bool = False) -> None:
        try:
            st = os.stat(self.path)
            if not force and self._version and _signature(st) == self._version.signature:
                return
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            if self._version is not None:
                self._generation += 1
            self._version = None
            return
        except OSError as exc:
            raise CredentialFileError(_unusable(self.path, exc.strerror or str(exc))) from None
        try:
            st = os.fstat(fd)  # the version opened, should the file be replaced meanwhile
            _check_regular(self.path, st)
            _check_mode(self.path, st)
            offsets = _index(_read_all(fd), self.path)
        except OSError as exc:
            os.close(fd)
            raise CredentialFileError(_unusable(self.path, exc.strerror or str(exc))) from None
        except BaseException:
            os.close(fd)
            raise
        self._version = _Version(fd, st, offsets)
        self._generation += 1

    def _read(self, user: str) -> tuple[bool, UserRecord | None]:
        """(whether the index held for the line, the record)."""
        version = self._version
        offset = version.offsets.get(user) if version else None
        if version is None or offset is None:
            return True, None
        line = _read_line(version.fd, offset).decode("utf-8", "replace").strip()
        try:
            record = _parse_line(line, str(self.path))
        except CredentialFileError:
            return False, None
        if record.name != user:
            return False, None
        return True, record

    def lookup(self, user: str) -> UserRecord | None:
        return self.lookup_at(user)[1]

    def lookup_at(self, user: str) -> tuple[int | None, UserRecord | None]:
        """The record and the :meth:`settled_generation` of the file it was read from,
        together: a caller that remembers what it derived from the record can tell from
        that generation alone, later, that the record cannot have changed."""
        with self._lock:
            self._refresh()
            held, record = self._read(user)
            if not held:  # edited in place since it was indexed
                self._refresh(force=True)
                held, record = self._read(user)
                if not held:
                    raise CredentialFileError(f"{self.path}: changed while being read")
            return self._settled(), record

    def settled_generation(self) -> int | None:
        """:meth:`generation`, or None while the file was changed too recently for its
        signature to show a further edit in place (the same size, within one tick of the
        file system's clock): nothing may be concluded from the generation then."""
        with self._lock:
            self._refresh()
            return self._settled()

    def _settled(self) -> int | None:
        version = self._version
        if version is not None and time.time_ns() < version.settled_ns:
            return None
        return self._generation

    def users(self) -> list[UserRecord]:
        with self._lock:
            self._refresh()
            if self._version is None:
                return []
            _, users = parse(_read_all(self._version.fd), self.path)
            return list(users.values())

    def generation(self) -> int:
        """A number that changes whenever the users read from the file do, so callers can
        cache what they derive from :meth:`users` (the authenticator's decoys)."""
        with self._lock:
            self._refresh()
            return self._generation

    def check(self) -> None:
        """Raise :class:`CredentialFileError` if the file is unusable (mode, syntax)."""
        with self._lock:
            self._refresh(force=True)


# The credential file's folder belongs to the server's account (cyrus_user), and so does
# anything in it; the administrator runs ``pop3d-admin passwd`` as root. So nothing there
# is followed or trusted as root: a link planted as the lock file had its target (say
# /etc/shadow) given to the server's account, and the file itself could be a link to a
# file root reads (found probing). Opened without following links, regular files only,
# and a file with other names (a hard link) is never given away.
_NO_FOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _own_regular_file(fd: int, name: str) -> os.stat_result:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        raise CredentialFileError(
            f"{name} is not a regular file with one name (a link planted in its folder?); "
            "refusing to use it: remove it"
        )
    return info


def _open_no_follow(name: str, flags: int, mode: int = 0o600) -> int:
    try:
        return os.open(name, flags | _NO_FOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CredentialFileError(
                f"{name} is a symbolic link; refusing to follow it: remove it"
            ) from None
        raise


@contextmanager
def _exclusive(path: Path, owner: tuple[int, int] | None = None) -> Iterator[None]:
    lock = f"{path}.lock"
    fd = _open_no_follow(lock, os.O_RDWR | os.O_CREAT)
    try:
        info = _own_regular_file(fd, lock)
        if owner is not None and info.st_uid != owner[0]:
            os.fchown(fd, *owner)  # else the owner's own runs could not take the lock
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update(
    path: Path,
    user: str,
    change: Callable[[UserRecord | None], UserRecord | None],
    new_owner: tuple[int, int] | None = None,
) -> None:
    """Atomically replace (or with None, remove) one user's record. ``new_owner`` (uid,
    gid): who owns the file, and the folders made for it, if this makes them as root; an
    existing file keeps its owner and group. Anyone but root writes as itself."""
    root = os.geteuid() == 0
    _make_folders(path.parent, new_owner if root else None)
    owner: tuple[int, int] | None = None
    if root:
        try:
            info = os.stat(path, follow_symlinks=False)
            owner = (info.st_uid, info.st_gid)
        except FileNotFoundError:
            owner = new_owner
    with _exclusive(path, owner):
        lines: list[str | UserRecord]
        users: dict[str, UserRecord]
        try:
            fd = _open_no_follow(str(path), os.O_RDONLY)
        except FileNotFoundError:
            lines, users = ["# pop3d credentials: see pop3d/auth/credentials.py"], {}
        else:
            with os.fdopen(fd, "rb") as handle:
                _check_mode(path, _own_regular_file(fd, str(path)))
                lines, users = parse(handle.read(), path)
        new = change(users.get(user))
        out: list[str] = []
        replaced = False
        for item in lines:
            if isinstance(item, UserRecord) and item.name == user:
                replaced = True
                if new is not None:
                    out.append(format_record(new))
            else:
                out.append(item if isinstance(item, str) else format_record(item))
        if new is not None and not replaced:
            out.append(format_record(new))
        _write_atomically(path, "\n".join(out) + "\n", owner)


def _make_folders(folder: Path, owner: tuple[int, int] | None) -> None:
    """``folder`` and the parents it lacks, each given to ``owner``: the server must be
    able to walk down to the file."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir(exist_ok=True)
        if owner is not None:
            # the link itself if one took the folder's place meanwhile, never its target
            os.chown(made, *owner, follow_symlinks=False)


def _write_atomically(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    # An unpredictable name, made O_EXCL (mkstemp): a name planted in the folder can
    # neither be followed nor block the update.
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temporary = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
