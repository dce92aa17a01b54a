"""Per-user telemetry logs, Cyrus's layout and format (imap/telemetry.c, lib/prot.c).

If ``<configdirectory>/log/<user>/`` exists, a session that logs in as ``<user>`` is
written to a file in it; the directory is never created (creating it is how an
administrator turns telemetry on for a user, without a restart). The file is named as
Cyrus names it, ``<service>-<pid>``, plus the session id, because one worker serves many
sessions (at once, where a Cyrus process serves one after another and appends to the same
file); with ``telemetry_bysessionid`` the name is ``<service>-<session id>``, as in Cyrus.

Content as Cyrus writes it: a header ``---------- <user> <ctime>`` followed by a blank line
(ctime's own newline, then Cyrus's), then the client's bytes as ``<unixtime<...`` and the
server's as ``>unixtime>...``, in time order, without added newlines. The bytes are the
plaintext the session sees (under TLS and any SASL layer): what the session consumed, line
by line, and what it sent, taken from the session's transcript
(:mod:`pop3d.protocol.transcript`), plus the messages the driver streams for RETR and TOP.

Recording starts at login, as in Cyrus: the file begins with the login's own ``+OK``. With
``telemetry_prelogin`` the part before login is recorded too, secrets hidden by the
session; it is held in memory (at most :data:`PRELOGIN_LIMIT` octets; past that the rest
of it is counted, not kept) until the login succeeds, and then written after the header.
A session that never logs in, or logs in as a user without a directory, writes nothing.

A file that cannot be opened or written (permissions, a read-only or full file system)
costs the session nothing: one log line, and the session goes on unrecorded.

Writes are buffered (:data:`WRITE_AT`) and made on the event loop, like Cyrus's own
``write()`` from ``prot_flush``; telemetry is a diagnostic for a few users at a time.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("pop3d")

PRELOGIN_LIMIT = 64 * 1024
WRITE_AT = 256 * 1024
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
MODE = 0o600  # Cyrus uses 0644; these files hold mail (SECURITY.md)


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    directory: Path  # <configdirectory>/log
    service: str
    by_session_id: bool = False
    prelogin: bool = False


def _file_name_part(text: str) -> str:
    return text.replace("/", "_").replace("\0", "_")


class Telemetry:
    """One session's record. Until :meth:`login` it only buffers (pre-login, bounded);
    afterwards it writes to the user's file, or is closed."""

    __slots__ = (
        "_buffer",
        "_dropped",
        "_fd",
        "_last",
        "_path",
        "_session_id",
        "_stopped",
        "settings",
    )

    def __init__(self, settings: TelemetrySettings, session_id: str) -> None:
        self.settings = settings
        self._session_id = session_id
        self._buffer = bytearray()
        self._fd: int | None = None
        self._path: Path | None = None
        self._dropped = 0
        self._stopped = False  # not recorded (no directory), or the file failed
        # The last marker written: (from the client?, unix time); a new one is written when
        # either changes (Cyrus writes one per read and per flush of its 4 KiB buffer).
        self._last: tuple[bool, bytes] | None = None

    @property
    def writing(self) -> bool:
        return self._fd is not None

    def path_for(self, user: str) -> Path | None:
        """The file for ``user``, or None for a name that is not one path component."""
        names = self._names(user)
        return None if names is None else Path(names[0], names[1])

    def _names(self, user: str) -> tuple[str, str] | None:
        """(the user's directory, the file's name in it). Strings, not Paths: every login
        of a busy worker asks, and nearly every answer is "no directory" (pathlib's joins
        cost more than the failed open)."""
        if not user or user in (".", "..") or "/" in user or "\0" in user:
            return None
        settings = self.settings
        if settings.by_session_id:
            name = f"{settings.service}-{self._session_id}"
        else:
            name = f"{settings.service}-{os.getpid()}-{self._session_id}"
        return f"{settings.directory}/{user}", _file_name_part(name)

    def login(self, user: str) -> bool:
        """Open the user's file if their directory exists; write the header and what was
        recorded before login. False (and nothing kept) when this session is not
        recorded."""
        names = self._names(user)
        if names is None:
            self._discard()
            return False
        directory, name = names
        text = f"{directory}/{name}"
        try:
            # Neither name is followed if it is a symbolic link: the file holds the user's
            # mail, and O_NOFOLLOW on the file alone let a link at log/<user> send it
            # wherever the link pointed (found probing).
            directory_fd = os.open(directory, _DIRECTORY_FLAGS)
        except FileNotFoundError:
            self._discard()  # no log/<user>/: telemetry is off for this user
            return False
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                reason = "not a directory; a symbolic link is not followed"
            return self._not_opened(directory, reason)
        try:
            fd = os.open(name, _FLAGS, MODE, dir_fd=directory_fd)
        except OSError as exc:
            return self._not_opened(text, exc.strerror or str(exc))
        finally:
            os.close(directory_fd)
        self._fd = fd
        self._path = Path(text)
        prelogin = bytes(self._buffer)
        self._buffer.clear()
        # ctime() ends in no newline in Python; Cyrus's has one and adds one more.
        self._buffer += f"---------- {user} {time.ctime()}\n\n".encode()
        self._buffer += prelogin
        if self._dropped:
            self._buffer += (
                f"\n---------- {self._dropped} octets before login not recorded "
                f"(telemetry_prelogin keeps {PRELOGIN_LIMIT})\n"
            ).encode()
            self._last = None
        self._write()
        return self._fd is not None

    def _not_opened(self, text: str, reason: str) -> bool:
        log.warning(
            "session %s: telemetry log %s cannot be opened (%s); not recording",
            self._session_id,
            text,
            reason,
        )
        self._discard()
        return False

    def pieces(self, pieces: list[tuple[bool, bytes]]) -> None:
        """Pieces from the session's transcript: (from the client?, bytes)."""
        now = b"%d" % time.time()
        for from_client, data in pieces:
            self._add(from_client, data, now)

    def server(self, data: bytes) -> None:
        """Bytes the driver sends itself (a message for RETR/TOP)."""
        self._add(False, data, b"%d" % time.time())

    def _add(self, from_client: bool, data: bytes, now: bytes) -> None:
        if self._stopped:
            return
        buffer = self._buffer
        if self._fd is None and (self._dropped or len(buffer) + len(data) > PRELOGIN_LIMIT):
            self._dropped += len(data)  # from here to login, counted and not kept
            return
        marker = (from_client, now)
        if marker != self._last:
            buffer += (b"<" + now + b"<") if from_client else (b">" + now + b">")
            self._last = marker
        buffer += data
        if self._fd is not None and len(buffer) >= WRITE_AT:
            self._write()

    def flush(self) -> None:
        """Write what is buffered (the driver calls this when it waits for the client)."""
        if self._fd is not None and self._buffer:
            self._write()

    def _write(self) -> None:
        fd = self._fd
        assert fd is not None
        view = memoryview(self._buffer)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError as exc:
            log.warning(
                "session %s: telemetry log %s cannot be written (%s); not recording the "
                "rest of the session",
                self._session_id,
                self._path,
                exc.strerror or exc,
            )
            view.release()
            self._close_fd()
            self._discard()
            return
        view.release()
        self._buffer.clear()

    def close(self) -> None:
        self.flush()
        self._close_fd()
        self._discard()

    def _discard(self) -> None:
        self._stopped = True
        self._buffer = bytearray()
        self._dropped = 0

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError as exc:
                log.warning("session %s: telemetry log %s: %s", self._session_id, self._path, exc)
