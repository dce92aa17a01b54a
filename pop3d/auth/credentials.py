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

import fcntl
import os
import stat
import threading
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


def _check_mode(path: Path, st: os.stat_result) -> None:
    if st.st_mode & _FORBIDDEN_MODE & ~(stat.S_IXGRP | stat.S_IXOTH):
        raise CredentialFileError(
            f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others read or write "
            "it; refusing to use it (chmod 600)"
        )


def parse(text: str, path: Path) -> tuple[list[str | UserRecord], dict[str, UserRecord]]:
    lines: list[str | UserRecord] = []
    users: dict[str, UserRecord] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            lines.append(raw)
            continue
        record = _parse_line(line, f"{path}:{number}")
        if record.name in users:
            raise CredentialFileError(f"{path}:{number}: user {record.name!r} appears twice")
        users[record.name] = record
        lines.append(record)
    return lines, users


class CredentialFile:
    """Read side, shared by the worker threads that verify passwords."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._signature: tuple[int, ...] | None = None
        self._users: dict[str, UserRecord] = {}
        self._generation = 0

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._signature is not None or self._users:
                self._generation += 1
            self._signature, self._users = None, {}
            return
        signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if signature == self._signature:
            return
        _check_mode(self.path, st)
        text = self.path.read_text(encoding="utf-8")
        _, self._users = parse(text, self.path)
        self._signature = signature
        self._generation += 1

    def lookup(self, user: str) -> UserRecord | None:
        with self._lock:
            self._refresh()
            return self._users.get(user)

    def users(self) -> list[UserRecord]:
        with self._lock:
            self._refresh()
            return list(self._users.values())

    def generation(self) -> int:
        """A number that changes whenever the users read from the file do, so callers can
        cache what they derive from :meth:`users` (the authenticator's decoys)."""
        with self._lock:
            self._refresh()
            return self._generation

    def check(self) -> None:
        """Raise :class:`CredentialFileError` if the file is unusable (mode, syntax)."""
        with self._lock:
            self._signature = None
            self._refresh()


@contextmanager
def _exclusive(path: Path, owner: tuple[int, int] | None = None) -> Iterator[None]:
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if owner is not None and os.fstat(fd).st_uid != owner[0]:
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
            info = os.stat(path)
            owner = (info.st_uid, info.st_gid)
        except FileNotFoundError:
            owner = new_owner
    with _exclusive(path, owner):
        try:
            st = os.stat(path)
            _check_mode(path, st)
            lines, users = parse(path.read_text(encoding="utf-8"), path)
        except FileNotFoundError:
            lines, users = ["# pop3d credentials: see pop3d/auth/credentials.py"], {}
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
            os.chown(made, *owner)


def _write_atomically(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
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
