"""The audit trail: one record per authentication attempt and one per session end.

Each record goes to the ``pop3d.audit`` logger as the line Cyrus writes to syslog, so the
parsers sites already run (fail2ban's ``cyrus-imap`` filter, logwatch) keep working:

    login: 192.0.2.7 [192.0.2.7] alice PLAIN+TLS User logged in SESSIONID=<...>
    badlogin: 192.0.2.7 [192.0.2.7] plaintext (alice) [SASL(-13): authentication failure: ...]
    counts: retr=<2> top=<0> dele=<1>

followed by every field of the record as ``key=<value>`` (Cyrus's ``auditlog:`` style), and,
with ``audit_jsonl_file``, to a JSON-lines file as one object per line.

Cyrus writes the client as ``name [address]`` from a reverse lookup; pop3d does no lookups
(a blocking resolver call per connection buys an attacker-chosen name) and writes the
address in both places. A peer that is not an IP address (a unix socket, stdio) is
``[local]``, as in Cyrus.

Escaping: every field that can carry a client's bytes (user names, reasons, the peer, the
session id) is escaped before it is written, so no value can end a line, open a field or
pass for another one. Characters that are not printable (controls, line and paragraph
separators, bidirectional overrides), the backslash, and the delimiters of the field's
position become ``\\xHH``/``\\uHHHH``: a positional word loses spaces too, a
``<value>`` or a ``[reason]`` keeps its spaces and loses angle brackets, brackets and
parentheses (so no user name or reason can spell ``[SASL(-13): ...`` for fail2ban). In the JSON file
``json.dumps`` escapes, ASCII only. A user name that the identity rules refuse still
reaches the record (as a failed attempt): the escaping, not the rules, protects the log.

Length: a client chooses how long its name is. An AUTH PLAIN identity of 48,000 ``\\x01``
octets made a badlogin line of 384,000 characters (the name twice, escaped), which syslog
refused (the record lost there) and which a daemon that cuts long lines would cut before
fail2ban's ``SASL(-13)``. So a field is cut once escaped past :data:`FIELD_LIMIT`
characters (a reason past :data:`REASON_LIMIT`), never inside one character's escape, and
ends in ``...(+N)``, N the characters left out; no field can spell that marker, its
parentheses are escaped. A name of up to 255 characters with nothing to escape, what the
identity rules accept unless it holds spaces or brackets, is never cut. In the JSON file a
name is cut past :data:`FIELD_LIMIT` characters before escaping, so every name the rules
accept (at most 255 octets) is kept whole there.
"""

from __future__ import annotations

import datetime
import enum
import errno
import functools
import ipaddress
import json
import logging
import os
import stat
from dataclasses import dataclass

from pop3d.security.value import Security
from pop3d.server import loglines
from pop3d.storage.importing import not_what_was_wanted

audit_log = logging.getLogger("pop3d.audit")
log = logging.getLogger("pop3d")


class Result(enum.StrEnum):
    OK = "ok"
    FAIL = "fail"  # the credentials (or the identity they name) were refused
    REFUSED = "refused"  # authenticated, then not let in: maildrop locked, LOGIN-DELAY
    UNAVAILABLE = "unavailable"  # no verdict: the server could not check (checker, keytab)
    # no verdict: the client ended the exchange before its credentials were judged (a
    # cancel, an answer that is not base64 or is too long), or the policy refused the
    # attempt before any was looked at (USER/PASS, AUTH or APOP in clear)
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class Login:
    """One authentication attempt."""

    time: float
    service: str
    session: str
    peer: str  # the channel's: the PROXY header's source under -H
    security: Security | None
    mechanism: str  # USER, APOP, KPOP or a SASL mechanism's name
    user: str
    result: Result
    reason: str = ""
    # Who authenticated when ``user`` alone does not say it (an admin acting as the user,
    # the Kerberos principal); "" otherwise, and then the lines carry no such field.
    authid: str = ""


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """One connection, from accept to close."""

    time: float
    service: str
    session: str
    peer: str
    security: Security | None
    mechanism: str  # of the login; "" if nobody logged in
    user: str
    reason: str
    retrieved: int  # RETR that went out whole
    top: int
    deleted: int  # removed at UPDATE
    bytes_in: int  # on the wire: TLS and SASL framing included
    bytes_out: int
    duration: float


Record = Login | SessionEnd

# --- escaping --------------------------------------------------------------------------

_WORD = frozenset(' \\<>[]()"')
# Brackets and parentheses too: no value may spell "[SASL(-13): ..." for fail2ban.
_VALUE = _REASON = frozenset("\\<>[]()")

# Escaped characters per field. The badlogin line puts the name before "SASL(-13)": with
# names this short, fail2ban's part of the line stays within the first kilobyte, which
# even a syslog daemon that keeps RFC 3164's 1,024 octets passes on.
FIELD_LIMIT = 256
# A reason comes after it, and can quote a name (OAUTHBEARER's "token is for ..., not ...").
REASON_LIMIT = 1024


def _escape(text: str, special: frozenset[str], limit: int = FIELD_LIMIT) -> str:
    if len(text) <= limit and text.isprintable() and special.isdisjoint(text) and text.isascii():
        return text  # the common case, without a loop
    out: list[str] = []
    size = 0
    for index, ch in enumerate(text):
        code = ord(ch)
        if ch in special or not ch.isprintable():
            if code < 0x100:
                piece = f"\\x{code:02x}"
            elif code < 0x10000:
                piece = f"\\u{code:04x}"
            else:
                piece = f"\\U{code:08x}"
        else:
            piece = ch
        size += len(piece)
        if size > limit:
            return "".join(out) + _cut_marker(len(text) - index)
        out.append(piece)
    return "".join(out)


def _cut_marker(left_out: int) -> str:
    """What ends a field cut short: ``left_out`` characters of it are not written."""
    return f"...(+{left_out})"


def word(text: str) -> str:
    """A positional field of a Cyrus line: no spaces, brackets or parentheses."""
    return _escape(text, _WORD) if text else "-"


def value(text: object, limit: int = FIELD_LIMIT) -> str:
    """The inside of ``key=<value>``."""
    return _escape(str(text), _VALUE, limit)


def reason_text(text: str) -> str:
    return _escape(text, _REASON, REASON_LIMIT)


# --- the client's address --------------------------------------------------------------


def client_address(peer: str) -> str | None:
    """The IP address in a channel's peer (``192.0.2.7:110``, ``[2001:db8::1]:110``),
    None if it is not one (``[unix socket]``, ``[stdio]``)."""
    host = peer
    if peer.startswith("["):
        host = peer[1 : peer.find("]")] if "]" in peer else ""
    elif peer.count(":") == 1:
        host = peer.partition(":")[0]
    return _canonical_address(host)


# Keyed by the host, not the peer: a client's sessions come from new ports each time, and
# parsing an address is most of what a record's client field costs.
@functools.lru_cache(maxsize=4096)
def _canonical_address(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def client_host(peer: str) -> str:
    """Cyrus's ``popd_clienthost``: ``name [address]``; the address stands for the name
    (no reverse lookups), ``[local]`` when there is no address."""
    address = client_address(peer)
    if address is None:
        return "[local]"
    # Escaped like every field: an IPv6 scope ("%eth0") is free text to ip_address().
    shown = word(address)
    return f"{shown} [{shown}]"


# --- the syslog line -------------------------------------------------------------------

_CYRUS_MECHANISM = {"USER": "plaintext"}


def _tls_fields(security: Security | None) -> str:
    tls = security.tls if security is not None else None
    ssf = security.ssf if security is not None else 0
    layer = security.layer if security is not None else None
    kpop = security.kpop_principal if security is not None else None
    return (
        f"tls=<{value(tls.version) if tls else '-'}> "
        f"cipher=<{value(tls.cipher) if tls else '-'}> "
        f"ssf=<{ssf}> layer=<{value(f'{layer.mechanism}/{layer.ssf}') if layer else '-'}>"
        + (f" kpop=<{value(kpop)}>" if kpop else "")
    )


def syslog_line(record: Record) -> str:
    host = client_host(record.peer)
    common = (
        f"SESSIONID=<{value(record.session)}> service=<{value(record.service)}> "
        f"peer=<{value(record.peer)}> user=<{value(record.user)}> "
        f"mech=<{value(record.mechanism)}> {_tls_fields(record.security)}"
    )
    if isinstance(record, SessionEnd):
        return (
            f"counts: retr=<{record.retrieved}> top=<{record.top}> dele=<{record.deleted}> "
            f"{common} bytes_in=<{record.bytes_in}> bytes_out=<{record.bytes_out}> "
            f"duration=<{record.duration:.3f}> reason=<{value(record.reason, REASON_LIMIT)}>"
        )
    mechanism = word(_CYRUS_MECHANISM.get(record.mechanism, record.mechanism))
    authid = f" authid=<{value(record.authid)}>" if record.authid else ""
    reason = value(record.reason, REASON_LIMIT)
    tail = f"{common}{authid} result=<{record.result}> reason=<{reason}>"
    if record.result is Result.OK:
        tls = "+TLS" if record.security is not None and record.security.tls_active else ""
        # Cyrus has SESSIONID=<> at the end of its line: the common fields repeat it.
        return f"login: {host} {word(record.user)} {mechanism}{tls} User logged in {tail}"
    if record.result is Result.FAIL:
        # fail2ban's cyrus-imap filter: badlogin: \S+ ?\[<HOST>\] \S+ .*?SASL\(-13\): ...
        why = f"SASL(-13): authentication failure: {reason_text(record.reason)}"
    else:
        why = reason_text(record.reason)  # not a wrong password (nor the client's): no SASL(-13)
    return f"badlogin: {host} {mechanism} ({word(record.user)}) [{why}] {tail}"


# --- the JSON line ---------------------------------------------------------------------


def _cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters before JSON's escaping (at most six characters
    each, twelve for one beyond the BMP, so bounded too)."""
    if len(text) <= limit:
        return text
    return text[:limit] + _cut_marker(len(text) - limit)


def json_line(record: Record) -> str:
    security = record.security
    tls = security.tls if security is not None else None
    layer = security.layer if security is not None else None
    fields: dict[str, object] = {
        "time": datetime.datetime.fromtimestamp(record.time, datetime.UTC).isoformat(
            timespec="milliseconds"
        ),
        "event": "login" if isinstance(record, Login) else "session",
        "service": record.service,
        "session": record.session,
        "client": client_address(record.peer),
        "peer": record.peer,
        "tls": tls.version if tls else None,
        "cipher": tls.cipher if tls else None,
        "ssf": security.ssf if security is not None else 0,
        "layer": f"{layer.mechanism}/{layer.ssf}" if layer else None,
        "kpop_principal": security.kpop_principal if security is not None else None,
        "mechanism": record.mechanism or None,
        "user": _cut(record.user, FIELD_LIMIT) or None,
    }
    if isinstance(record, Login):
        fields["result"] = str(record.result)
        fields["reason"] = _cut(record.reason, REASON_LIMIT) or None
        if record.authid:
            fields["authid"] = _cut(record.authid, FIELD_LIMIT)
    else:
        fields.update(
            reason=_cut(record.reason, REASON_LIMIT),
            retrieved=record.retrieved,
            top=record.top,
            deleted=record.deleted,
            bytes_in=record.bytes_in,
            bytes_out=record.bytes_out,
            duration=round(record.duration, 3),
        )
    return json.dumps(fields, ensure_ascii=True, separators=(",", ":")) + "\n"


# Not through a link, and without waiting: a FIFO planted at the path (by whoever can write
# the log folder, once logrotate has moved the file away) blocked the worker in open() until
# a reader came, and every session of the worker with it (found probing).
_JSONL_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class JsonLines:
    """``audit_jsonl_file``: appended to by every worker. Each record is one ``write`` on
    an ``O_APPEND`` descriptor, so the lines of concurrent workers never interleave. The
    file is reopened when it was moved (logrotate), as ``WatchedFileHandler`` does. Only a
    regular file is written, never through a symbolic link. A record that cannot be
    written costs the session nothing: one log line, then silence until a write works
    again."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self._identity: tuple[int, int] | None = None
        self._failing = False
        self._open()

    def _open(self) -> None:
        try:
            fd = os.open(self.path, _JSONL_FLAGS, 0o640)
        except OSError as exc:
            # ELOOP: a link (O_NOFOLLOW); ENXIO: a FIFO with no reader, or a socket
            if exc.errno not in (errno.ELOOP, errno.ENXIO):
                raise
            try:
                mode = os.lstat(self.path).st_mode
            except OSError:
                raise exc from None
            raise OSError(exc.errno, not_what_was_wanted(mode, "a regular file")) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, not_what_was_wanted(info.st_mode, "a regular file"))
        os.set_blocking(fd, True)
        self._close()
        self._fd = fd
        self._identity = (info.st_dev, info.st_ino)

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def write(self, line: str) -> None:
        try:
            try:
                info = os.lstat(self.path)
                moved = (info.st_dev, info.st_ino) != self._identity
            except FileNotFoundError:
                moved = True
            if moved or self._fd < 0:
                self._open()
            os.write(self._fd, line.encode("ascii"))
        except OSError as exc:
            if not self._failing:
                log.error(
                    "audit_jsonl_file %s: cannot write: %s; records are not written to it "
                    "until it can be again",
                    self.path,
                    exc.strerror or exc,
                )
            self._failing = True
            return
        self._failing = False

    def close(self) -> None:
        self._close()


class AuditTrail:
    """Where a service's records go: the ``pop3d.audit`` logger (stderr, and syslog when
    ``syslog_socket`` is set) and the optional JSON-lines file."""

    def __init__(self, service: str, jsonl_path: str | None = None) -> None:
        self.service = service
        self.jsonl = JsonLines(jsonl_path) if jsonl_path else None

    def record(self, record: Record) -> None:
        failed = isinstance(record, Login) and record.result is not Result.OK
        loglines.line(audit_log, logging.WARNING if failed else logging.INFO, syslog_line(record))
        if self.jsonl is not None:
            self.jsonl.write(json_line(record))

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
