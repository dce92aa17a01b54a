"""What every ``pop3d-admin import`` shares (issue 14): the locked target Maildir and the
crash-safe write of one imported message with the UIDL it keeps.

Order of writes, for a run that can be killed anywhere: the ``pop3d-uidl`` line (fsync),
then the message in ``tmp/`` (fsync), linked into ``new/`` or ``cur/`` (fsync). A line
without its message is ignored by the reader (``maildir.read_uidl_map`` serves lines only
for files that exist); a message is present only whole and with its line. Each importer
derives a deterministic unique part per source message, so a second run recognises what is
there and an interrupted one resumes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from pop3d.message import SizeCounter
from pop3d.storage.base import MaildropInUse, StorageError
from pop3d.storage.maildir import (
    UIDL_MAP_NAME,
    MaildirStore,
    _ensure_maildir,
    _Folders,
)


class ImportFailed(Exception):
    """The import cannot start or go on (corrupt uidlist, target unusable)."""


@dataclass
class ImportReport:
    imported: int = 0
    present: int = 0  # already in the target: skipped
    skipped: list[str] = field(default_factory=list)  # "file: reason"


@contextlib.contextmanager
def locked_target(store: MaildirStore, user: str) -> Iterator[_Folders]:
    """The user's Maildir (made if missing), its maildrop lock held for the block; any
    storage error opening or writing it becomes ImportFailed."""
    target = store.path_for(user)
    try:
        _ensure_maildir(target)
        folders = _Folders(target, ("tmp", "new", "cur"))
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
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(UIDL_MAP_NAME, flags, 0o600, dir_fd=root)
    try:
        os.write(fd, f"{unique} {uidl}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
