"""Import a user's INBOX from a running IMAP server (Cyrus) into their Maildir, keeping the
UIDL the old server's POP3 service gave each message (issue 14).

* **Connection**: stdlib ``imaplib``, in clear (loopback or a trusted network), STARTTLS or
  IMAPS, the certificate checked against the system's CAs or a given CA file.
* **Login**: as an administrator acting for the user (``AUTHENTICATE PLAIN`` with the user
  as authorization identity: Cyrus lets its ``admins`` do this, and the user's own \\Seen
  state is what the session then sees), or as the user with their password. The password is
  never logged, never part of an error text.
* **Read only**: ``EXAMINE INBOX``; ``BODY.PEEK[]``: nothing is set on the source, not even
  \\Seen.
* **UIDL**: what Cyrus's pop3d serves (pop3d.c ``uidl_msg``). A mailbox with the
  ``pop3newuidl`` option (the annotation ``/vendor/cmu/cyrus-imapd/pop3newuidl`` "true",
  every mailbox Cyrus 2.2 and later created) gets the site's ``uidl_format``: ``uidonly``
  ``<uid>``, ``cyrus`` ``<uidvalidity>.<uid>``, ``dovecot`` ``%08x%08x`` of uid and
  uidvalidity, ``courier`` ``<uidvalidity>-<uid>``; one without it the bare ``<uid>``. The
  annotation is read with GETMETADATA; a server without METADATA (not Cyrus) is taken to
  serve ``uidl_format``, the same path for any server whose POP3 UIDLs derive from IMAP
  UIDs.
* **Bytes**: each message is fetched whole and its length compared with RFC822.SIZE (what
  Cyrus's LIST reports, and what pop3d's LIST then reports from the ``W=`` of the file
  name: Cyrus stores CRLF, so the two agree). A message that cannot be fetched whole is
  reported and skipped, never half imported.
* **Order, flags**: UID order (the unique part ``<uidvalidity>.I<uid>V<uidvalidity>.imap``,
  UID zero-padded, lists before later deliveries); \\Seen S, \\Answered R, \\Flagged F,
  \\Draft D, \\Deleted T (not listed by pop3d with ``popuseimapflags``, as Cyrus's pop3d
  hides \\Deleted with it); a message with a flag goes to ``cur/``, else to ``new/``.
* **Resumable, idempotent**: the unique part is a function of UIDVALIDITY and UID, and the
  write order is that of :mod:`pop3d.storage.importing`: a message ``pop3d-imported``
  names (by UIDVALIDITY and UID) or already there is skipped, so nothing deleted since
  comes back, and a killed run resumes. A mailbox whose UIDVALIDITY changed is a new mailbox: its
  messages come again, with the new UIDLs the old server would also have served.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import re
import socket
import ssl
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pop3d.security.secret import Secret
from pop3d.storage.importing import (
    ImportedRecord,
    ImportFailed,
    ImportReport,
    locked_target,
    source_key,
    write_message,
)
from pop3d.storage.maildir import MaildirStore, _Folders, unique_part, valid_uidl

UIDL_FORMATS = ("uidonly", "cyrus", "dovecot", "courier")
DEFAULT_UIDL_FORMAT = "cyrus"  # Cyrus's own default
TLS_MODES = ("none", "starttls", "imaps")
DEFAULT_TIMEOUT = 60.0
POP3NEWUIDL = "/shared/vendor/cmu/cyrus-imapd/pop3newuidl"
_BATCH_COUNT = 64
_BATCH_BYTES = 16 * 1024 * 1024
# --cyrus-config and its @include files are the administrator's (followed, a pipe allowed:
# "<(ssh old cat /etc/imapd.conf)"), but never read whole past this: an imapd.conf is a
# few kilobytes, /dev/zero is not.
_CONFIG_MAX = 16 * 1024 * 1024
# The IMAP system flags a Maildir name can carry (\Recent is not stored; keywords are lost).
_FLAGS = {"\\draft": "D", "\\flagged": "F", "\\answered": "R", "\\seen": "S", "\\deleted": "T"}
_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_FLAG_LIST = re.compile(rb"\bFLAGS \(([^)]*)\)")
_LIST_LINE = re.compile(rb'\((?P<flags>[^)]*)\) (?P<sep>NIL|"(?:[^"\\]|\\.)*") (?P<name>.+)')


class ServerUnreachable(ImportFailed):
    """No connection (refused, no route, timeout, TLS handshake failed)."""


class LoginRefused(ImportFailed):
    """The server refused the credentials (or the administrator acting for the user)."""


class NoSuchMailbox(ImportFailed):
    """The user has no INBOX there."""


class CertificatesUnreadable(ImportFailed):
    """The CA file is missing, cannot be read, or is not a regular file."""


class CertificatesRefused(ImportFailed):
    """The CA file holds nothing OpenSSL loads as a certificate."""


@dataclass(frozen=True, slots=True)
class Server:
    host: str
    port: int
    tls: str = "none"  # TLS_MODES
    ca_file: str | None = None  # None: the system's CAs
    timeout: float = DEFAULT_TIMEOUT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Login:
    password: Secret
    admin: str | None = None  # None: log in as the user


@dataclass(frozen=True, slots=True)
class Message:
    uid: int
    size: int
    flags: str  # Maildir letters, sorted


def parse_address(text: str, tls: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[V6]:PORT``; the port defaults to 993 for IMAPS, else
    143. ValueError when it does not parse."""
    default = 993 if tls == "imaps" else 143
    host, port = text, ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [ADDRESS]:PORT")
        port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"{text!r}: no host")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{text!r}: port {port!r} is not a number from 1 to 65535")
    return host, int(port) if port else default


def uidl(uidl_format: str, pop3newuidl: bool, uidvalidity: int, uid: int) -> str:
    """The UIDL Cyrus's pop3d serves for this message (pop3d.c ``uidl_msg``)."""
    if not pop3newuidl or uidl_format == "uidonly":
        return str(uid)
    if uidl_format == "cyrus":
        return f"{uidvalidity}.{uid}"
    if uidl_format == "dovecot":
        return f"{uid:08x}{uidvalidity:08x}"
    if uidl_format == "courier":
        return f"{uidvalidity}-{uid}"
    raise ValueError(f"uidl_format {uidl_format!r}: expected one of {', '.join(UIDL_FORMATS)}")


def uidl_format_from_config(path: Path) -> str:
    """``uidl_format`` of an old site's imapd.conf (Cyrus's default ``cyrus`` if unset).
    Only that key is read (``@include`` is followed); Cyrus refuses a key set twice, so
    does this. ImportFailed with file:line when the value is not one of the four."""
    found = _find_option(path, "uidl_format", depth=0)
    if found is None:
        return DEFAULT_UIDL_FORMAT
    value, where = found
    if value.lower() not in UIDL_FORMATS:
        raise ImportFailed(
            f"{where}: uidl_format {value!r}: expected one of {', '.join(UIDL_FORMATS)}"
        )
    return value.lower()


def _find_option(path: Path, key: str, depth: int) -> tuple[str, str] | None:
    try:
        with path.open("rb") as handle:
            data = handle.read(_CONFIG_MAX + 1)
    except OSError as exc:
        raise ImportFailed(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > _CONFIG_MAX:
        raise ImportFailed(f"{path}: larger than {_CONFIG_MAX} bytes, not an imapd.conf")
    text = data.decode("utf-8", "replace")
    found: tuple[str, str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        name, sep, value = raw.strip().partition(":")
        name = name.strip().lower()
        if not sep or name.startswith("#"):
            continue
        here: tuple[str, str] | None = None
        if name == "@include" and depth < 8:
            target = Path(value.strip())
            here = _find_option(target if target.is_absolute() else path.parent / target, key, 1)
        elif name == key:
            here = (value.strip(), f"{path}:{number}")
        if here is not None:
            if found is not None:
                raise ImportFailed(f"{here[1]}: {key} set again (first at {found[1]})")
            found = here
    return found


# --- the IMAP session --------------------------------------------------------------------


def _text(data: Sequence[object]) -> str:
    """A server's response text, for an error message."""
    parts = [item.decode("utf-8", "replace") for item in data if isinstance(item, bytes)]
    return " ".join(parts) or "(no text)"


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """What a TLS connection checks the server's certificate with: the system's CAs, or
    those of ``ca_file``. CertificatesUnreadable or CertificatesRefused, one line each:
    a missing file, a folder or text that holds no certificate was OpenSSL's error with a
    traceback, exit 70, and a FIFO would have it wait for ever (found probing)."""
    if ca_file is not None:
        try:
            fd = os.open(ca_file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                regular = stat.S_ISREG(os.fstat(fd).st_mode)
            finally:
                os.close(fd)
        except OSError as exc:
            raise CertificatesUnreadable(f"{ca_file}: {exc.strerror or exc}") from None
        if not regular:
            raise CertificatesUnreadable(f"{ca_file}: not a regular file")
    try:
        return ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError as exc:  # its text ends in OpenSSL's source line: of no use here
        said = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc))
        raise CertificatesRefused(f"{ca_file}: no CA certificate in it ({said})") from None
    except OSError as exc:  # changed since it was looked at
        raise CertificatesUnreadable(f"{ca_file}: {exc.strerror or exc}") from None


def connect(server: Server) -> imaplib.IMAP4:
    """A connection, TLS as asked; ServerUnreachable when there is none."""
    context = None
    if server.tls != "none":
        context = tls_context(server.ca_file)
    try:
        if server.tls == "imaps":
            return imaplib.IMAP4_SSL(
                server.host, server.port, ssl_context=context, timeout=server.timeout
            )
        connection = imaplib.IMAP4(server.host, server.port, timeout=server.timeout)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise ServerUnreachable(f"cannot connect to {server}: {_reason(exc)}") from None
    if server.tls == "starttls":
        try:
            connection.starttls(context)
        except (OSError, imaplib.IMAP4.error) as exc:
            _close(connection)
            raise ServerUnreachable(f"STARTTLS with {server} failed: {_reason(exc)}") from None
    return connection


@contextlib.contextmanager
def _session(server: Server) -> Iterator[imaplib.IMAP4]:
    """A connection to ``server`` for the block, logged out and closed after it; a lost
    connection or a refusal from the server becomes one ImportFailed line."""
    connection = connect(server)
    try:
        yield connection
    except (OSError, imaplib.IMAP4.abort) as exc:
        raise ImportFailed(f"connection to {server} lost: {_reason(exc)}") from None
    except imaplib.IMAP4.error as exc:
        raise ImportFailed(f"{server}: {_server_words(exc)}") from None
    finally:
        _close(connection)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return exc.strerror or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _close(connection: imaplib.IMAP4) -> None:
    try:
        connection.logout()
    except (OSError, imaplib.IMAP4.error):
        connection.shutdown()


def login(connection: imaplib.IMAP4, server: Server, credentials: Login, user: str) -> None:
    """Log in as the user: with their password, or as the administrator with the user as
    authorization identity (``user=""``: the administrator alone, to list users)."""
    who = credentials.admin if credentials.admin is not None else user
    authzid = user if credentials.admin is not None else ""
    password = credentials.password.reveal()
    if "AUTH=PLAIN" in connection.capabilities:
        response = b"\0".join((authzid.encode(), who.encode(), password))
        try:
            connection.authenticate("PLAIN", lambda _challenge: response)
        except imaplib.IMAP4.error as exc:
            acting = f" for {authzid}" if authzid else ""
            raise LoginRefused(
                f"{server}: login as {who}{acting} refused: {_server_words(exc)}"
            ) from None
        return
    if authzid or "LOGINDISABLED" in connection.capabilities:
        why = "an administrator needs AUTHENTICATE PLAIN" if authzid else "LOGIN is disabled"
        raise LoginRefused(f"{server} offers no AUTHENTICATE PLAIN ({why}; try --imap-tls)")
    try:
        connection.login(who, password.decode("utf-8", "replace"))
    except imaplib.IMAP4.error as exc:
        raise LoginRefused(f"{server}: login as {who} refused: {_server_words(exc)}") from None


def _server_words(exc: imaplib.IMAP4.error) -> str:
    """What the server said, from imaplib's "<COMMAND> command error: NO [b'text']"."""
    text = str(exc)
    match = re.search(r"\[b'(.*)'\]$", text)
    return match.group(1) if match else text


def list_users(server: Server, credentials: Login) -> list[str]:
    """The users with an INBOX, as the administrator sees them (``LIST "" user.%``, or
    ``user/%`` under ``unixhierarchysep``); ``^`` in a name under ``.`` is Cyrus's
    stand-in for a dot."""
    with _session(server) as connection:
        login(connection, server, credentials, "")
        separator = _separator(connection)
        status, data = connection.list('""', f"user{separator}%")
        if status != "OK":
            raise ImportFailed(f"{server}: LIST refused: {_text(data)}")
        users = []
        for item in data:
            # a name sent as a literal comes as (b'(flags) "." {n}', b'name')
            line = item[0] if isinstance(item, tuple) else item
            if not isinstance(line, bytes):
                continue
            match = _LIST_LINE.match(line)
            if match is None or b"\\noselect" in match.group("flags").lower():
                continue
            raw = item[1] if isinstance(item, tuple) else _unquote(match.group("name"))
            name = raw.decode("utf-8", "replace")
            user = name[len("user") + len(separator) :]
            users.append(user.replace("^", ".") if separator == "." else user)
        return sorted(users)


def _separator(connection: imaplib.IMAP4) -> str:
    status, data = connection.list('""', '""')
    line = data[0] if status == "OK" and data else None
    match = _LIST_LINE.match(line) if isinstance(line, bytes) else None
    if match is None or match.group("sep") == b"NIL":
        return "."
    return _unquote(match.group("sep")).decode()


def _unquote(word: bytes) -> bytes:
    if len(word) >= 2 and word[:1] == b'"' and word[-1:] == b'"':
        return re.sub(rb"\\(.)", rb"\1", word[1:-1])
    return word


def _pop3newuidl(connection: imaplib.IMAP4, server: Server) -> bool | None:
    """The INBOX's pop3newuidl annotation: True, False, or None when the server has no
    METADATA (then not Cyrus, and ``uidl_format`` applies)."""
    if "METADATA" not in connection.capabilities:
        return None
    status, data = connection.xatom("GETMETADATA", "INBOX", POP3NEWUIDL)
    if status != "OK":
        raise ImportFailed(f"{server}: cannot read {POP3NEWUIDL}: {_text(data)}")
    _, answers = connection.response("METADATA")
    for answer in answers:
        if isinstance(answer, bytes) and POP3NEWUIDL.encode() in answer:
            value = answer.rsplit(b" ", 1)[-1].strip(b'")').lower()
            return value == b"true"
    return False  # NIL: the option is not set


def _examine(connection: imaplib.IMAP4, server: Server, user: str) -> tuple[int, int]:
    """EXAMINE INBOX (read-only); (UIDVALIDITY, EXISTS)."""
    status, data = connection.select("INBOX", readonly=True)
    if status != "OK":
        raise NoSuchMailbox(f"{server}: no INBOX for {user}: {_text(data)}")
    _, validity = connection.response("UIDVALIDITY")
    if not validity or not isinstance(validity[-1], bytes) or not validity[-1].isdigit():
        raise ImportFailed(f"{server}: no UIDVALIDITY for {user}'s INBOX")
    return int(validity[-1]), int(data[0]) if data and isinstance(data[0], bytes) else 0


def _messages(connection: imaplib.IMAP4, server: Server) -> list[Message]:
    status, data = connection.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE)")
    if status != "OK":
        raise ImportFailed(f"{server}: FETCH refused: {_text(data)}")
    found: dict[int, Message] = {}
    for item in data:
        line = item[0] if isinstance(item, tuple) else item
        if not isinstance(line, bytes):
            continue
        uid, size, flags = _UID.search(line), _SIZE.search(line), _FLAG_LIST.search(line)
        if uid is None or size is None:
            continue
        names = flags.group(1).decode("ascii", "replace").lower().split() if flags else []
        letters = "".join(sorted({_FLAGS[name] for name in names if name in _FLAGS}))
        found[int(uid.group(1))] = Message(int(uid.group(1)), int(size.group(1)), letters)
    return [found[uid] for uid in sorted(found)]


def _batches(messages: list[Message]) -> Iterator[list[Message]]:
    """Runs of at most _BATCH_COUNT messages and _BATCH_BYTES (a bigger message alone): one
    FETCH per run, not one per message, which costs a round trip (and, against Cyrus's
    small writes, a delayed ACK) each."""
    batch: list[Message] = []
    size = 0
    for message in messages:
        if batch and (len(batch) >= _BATCH_COUNT or size + message.size > _BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(message)
        size += message.size
    if batch:
        yield batch


def _fetch_bodies(connection: imaplib.IMAP4, batch: list[Message]) -> dict[int, bytes | str]:
    """Each message's bytes, or why they could not be read whole. A batch the server
    refuses is asked again one message at a time, so one bad message costs only itself."""
    wanted = {message.uid: message for message in batch}
    status, data = connection.uid(
        "FETCH", ",".join(str(uid) for uid in wanted), "(UID BODY.PEEK[])"
    )
    if status != "OK":
        if len(batch) > 1:
            found: dict[int, bytes | str] = {}
            for message in batch:
                found.update(_fetch_bodies(connection, [message]))
            return found
        return {batch[0].uid: f"FETCH refused: {_text(data)}"}
    bodies: dict[int, bytes] = {}
    for index, item in enumerate(data):
        if not isinstance(item, tuple) or b"BODY[]" not in item[0]:
            continue
        # UID before the literal (as asked), or in the line after it
        after = data[index + 1] if index + 1 < len(data) else b""
        match = _UID.search(item[0]) or (_UID.search(after) if isinstance(after, bytes) else None)
        if match is not None:
            bodies[int(match.group(1))] = bytes(item[1])
    result: dict[int, bytes | str] = {}
    for uid, message in wanted.items():
        body = bodies.get(uid)
        if body is None:
            result[uid] = "no longer there, or the server sent no body"
        elif len(body) != message.size:
            result[uid] = f"{len(body)} bytes read, RFC822.SIZE says {message.size}"
        else:
            result[uid] = body
    return result


def import_imap(
    server: Server,
    credentials: Login,
    user: str,
    store: MaildirStore,
    target: str,
    *,
    uidl_format: str = DEFAULT_UIDL_FORMAT,
    report: Callable[[str], None] = lambda _line: None,
) -> ImportReport:
    """Copy ``user``'s INBOX on ``server`` into the Maildir of ``target`` (pop3d's name for
    them), each message with the UIDL the old site's POP3 served."""
    if uidl_format not in UIDL_FORMATS:
        raise ImportFailed(
            f"uidl_format {uidl_format!r}: expected one of {', '.join(UIDL_FORMATS)}"
        )
    with _session(server) as connection:
        login(connection, server, credentials, user)
        uidvalidity, exists = _examine(connection, server, user)
        newuidl = _pop3newuidl(connection, server)
        messages = _messages(connection, server) if exists else []
        if newuidl is None:
            report(f"{server}: no METADATA: taking uidl_format {uidl_format} for every message")
        with locked_target(store, target) as folders:
            return _copy_all(
                connection,
                messages,
                folders,
                unique_of=lambda uid: f"{uidvalidity}.I{uid:010d}V{uidvalidity}.imap",
                key_of=lambda uid: source_key("imap", f"{uidvalidity}.{uid}"),
                uidl_of=lambda uid: uidl(uidl_format, newuidl is not False, uidvalidity, uid),
                report=report,
                where=f"{server} {user}",
            )


def _copy_all(
    connection: imaplib.IMAP4,
    messages: list[Message],
    folders: _Folders,
    *,
    unique_of: Callable[[int], str],
    key_of: Callable[[int], str],
    uidl_of: Callable[[int], str],
    report: Callable[[str], None],
    where: str,
) -> ImportReport:
    result = ImportReport()
    record = ImportedRecord(folders.root)
    present = {
        unique_part(name) for subdir in ("new", "cur") for name in os.listdir(folders.fds[subdir])
    }
    missing = [
        message
        for message in messages
        if not record.has(key_of(message.uid), in_target=unique_of(message.uid) in present)
    ]
    result.present = len(messages) - len(missing)
    for batch in _batches(missing):
        bodies = _fetch_bodies(connection, batch)
        for message in batch:
            kept = uidl_of(message.uid)
            body = bodies[message.uid]
            if isinstance(body, str) or not valid_uidl(kept):
                reason = body if isinstance(body, str) else f"UIDL {kept!r} is not valid"
                result.skipped.append(f"{where}: UID {message.uid}: {reason}")
                report(f"{where}: UID {message.uid}: skipped: {reason}")
                continue
            write_message(
                folders,
                unique_of(message.uid),
                kept,
                body,
                destination="cur" if message.flags else "new",
                info=f":2,{message.flags}" if message.flags else "",
            )
            record.add(key_of(message.uid))
            result.imported += 1
    return result
