"""A client for Cyrus SASL's ``saslauthd``, so sites that check passwords against PAM, LDAP
or Kerberos through it (``sasl_pwcheck_method: saslauthd``) can keep doing so.

The protocol (saslauthd/saslauthd-main.c and ipc_unix.c in Cyrus SASL 2.1.28; the client
side is ``saslauthd_verify_password`` in lib/checkpw.c): connect to the unix socket
(``<run dir>/mux``, by default /var/run/saslauthd/mux), send four counted strings, each a
16-bit big-endian length followed by that many octets and no NUL::

    login  password  service  realm

and read one counted string back, which begins with ``OK`` or ``NO``, optionally followed
by a space and a text. The daemon then closes the connection.

* saslauthd refuses a field longer than ``MAX_REQ_LEN`` (256 octets) with a bare ``NO``;
  this client refuses such a request before connecting, and says why.
* saslauthd treats every field as a C string, so a NUL inside one would silently cut it
  (``alice\\0x`` would be checked as ``alice``): refused here too, as are an empty login
  and an empty password (saslauthd answers ``NO NULL login received``).
* The realm is split off the login at its last ``@`` when there is one, as lib/checkpw.c
  does; otherwise the realm given (or none) is sent.

The calls block (the daemon may take seconds for PAM or LDAP) and are meant for the
driver's thread pool. Every failure comes back as a :class:`SaslauthdResult`, never as an
exception, and distinguishes a daemon that said no from one that could not be asked. The
password is never part of a result or of anything this module logs (it logs nothing).
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import time
from dataclasses import dataclass

from pop3d.security.secret import Secret

DEFAULT_PATH = "/var/run/saslauthd/mux"
# Cyrus pop3d creates its SASL connection as sasl_server_new("pop", ...): PAM sites have
# /etc/pam.d/pop, which keeps working with this default.
DEFAULT_SERVICE = "pop"
DEFAULT_TIMEOUT = 10.0
MAX_FIELD = 256  # saslauthd's MAX_REQ_LEN: a longer field is answered with a bare "NO"
MAX_REPLY = 1024  # lib/checkpw.c reads at most 1023 octets of the reply; so do we (+1)
_REASON_MAX = 200  # of the daemon's text, in the log


@dataclass(frozen=True, slots=True)
class SaslauthdResult:
    """``ok``: the daemon answered OK. ``unavailable``: there was no verdict (no daemon,
    not a socket, timeout, broken reply), as opposed to a refusal. ``reason`` is for the
    log: the daemon's reply (``NO ...``) or what went wrong; it never holds the password."""

    ok: bool
    reason: str
    unavailable: bool = False


def _unavailable(why: str) -> SaslauthdResult:
    return SaslauthdResult(False, f"saslauthd unavailable: {why}", unavailable=True)


def _not_sent(why: str) -> SaslauthdResult:
    return SaslauthdResult(False, f"saslauthd request not sent: {why}")


def _printable(data: bytes) -> str:
    text = data[:_REASON_MAX].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)


def split_realm(login: str, realm: str) -> tuple[str, str]:
    """``user@realm`` -> (user, realm) at the last ``@``, as lib/checkpw.c does; a login
    without ``@`` keeps the realm given."""
    user, at, suffix = login.rpartition("@")
    if at:
        return user, suffix
    return login, realm


def _utf8(name: str, value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid UTF-8") from None


def encode_request(fields: list[tuple[str, bytes]]) -> bytearray:
    """The request as saslauthd reads it; raises ValueError (naming the field, never its
    value) if one cannot be sent faithfully."""
    request = bytearray()
    for name, value in fields:
        if len(value) > MAX_FIELD:
            raise ValueError(f"{name} longer than {MAX_FIELD} octets")
        if b"\0" in value:
            raise ValueError(f"{name} contains a NUL octet")
        request += struct.pack("!H", len(value))
        request += value
    return request


class SaslauthdClient:
    """Asks one saslauthd. Thread-safe: every call opens its own connection."""

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_PATH,
        *,
        service: str = DEFAULT_SERVICE,
        realm: str = "",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.path = os.fspath(path)
        self.service = service
        self.realm = realm
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"SaslauthdClient({self.path!r}, service={self.service!r})"

    def verify(
        self, login: str, password: Secret, *, service: str | None = None, realm: str | None = None
    ) -> SaslauthdResult:
        user, user_realm = split_realm(login, self.realm if realm is None else realm)
        if not user:
            return _not_sent("empty login")
        if not password:
            return _not_sent("empty password")
        try:
            request = encode_request(
                [
                    ("login", _utf8("login", user)),
                    ("password", password.reveal()),
                    ("service", _utf8("service", self.service if service is None else service)),
                    ("realm", _utf8("realm", user_realm)),
                ]
            )
        except ValueError as exc:
            return _not_sent(str(exc))
        try:
            return self._exchange(request)
        finally:
            request[:] = bytes(len(request))  # best effort: no copy of the password lingers

    def __call__(self, login: str, password: Secret, /, realm: str = "") -> SaslauthdResult:
        # ``realm`` (a loginrealms realm the identity rules dropped) is not sent: saslauthd
        # is asked about the canonical name, as it always was.
        return self.verify(login, password)

    def _exchange(self, request: bytearray) -> SaslauthdResult:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            return _unavailable(f"{self.path}: {exc.strerror or exc}")
        if not stat.S_ISSOCK(st.st_mode):
            return _unavailable(f"{self.path} is not a unix socket")
        deadline = time.monotonic() + self.timeout
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                sock.settimeout(_remaining(deadline))
                sock.sendall(request)
                (count,) = struct.unpack("!H", _read(sock, 2, deadline))
                if count < 2:  # lib/checkpw.c: MUST have at least "OK" or "NO"
                    return _unavailable(f"reply of {count} octets")
                # A longer reply is cut, as lib/checkpw.c cuts it; the verdict is in front.
                reply = _read(sock, min(count, MAX_REPLY), deadline)
        except TimeoutError:
            return _unavailable(f"no answer within {self.timeout:g} s")
        except _ShortRead as exc:
            return _unavailable(str(exc))
        except OSError as exc:
            return _unavailable(f"{self.path}: {exc.strerror or exc}")
        return _verdict(reply)


class _ShortRead(Exception):
    pass


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _read(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < size:
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise _ShortRead(f"connection closed after {len(data)} of {size} octets")
        data += chunk
    return bytes(data)


def _verdict(reply: bytes) -> SaslauthdResult:
    text = _printable(reply)
    if reply == b"OK" or reply.startswith(b"OK "):
        return SaslauthdResult(True, text)
    if reply == b"NO" or reply.startswith(b"NO "):
        return SaslauthdResult(False, text)
    return _unavailable(f"unexpected reply {text!r}")
