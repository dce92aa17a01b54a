"""The KPOP handshake (MIT ``krb5_recvauth``, application version ``KPOPV1.0``), sans I/O.

The wire, as MIT's recvauth.c speaks it and fetchmail expects it (reference: kpop.md §1.2)::

    C->S  len32 "KRB5_SENDAUTH_V1.0\\0"      len32 "KPOPV1.0\\0"     (one writev)
    S->C  one raw byte: 00 accepted, 01 bad sendauth version, 02 bad application version
    C->S  len32 AP-REQ
    S->C  len32=0 (accepted), then len32 AP-REP if the client asked for mutual auth
      or  len32 KRB-ERROR, then the connection closes
    ...   POP3, starting with our greeting

Like recvauth we read both version messages before answering, so the one answer byte
says which was wrong. Unlike recvauth we cap every length prefix (MIT's read_msg has no
cap): a prefix over :data:`MAX_MESSAGE` ends the handshake at once, without reading the
body. A Kerberos 4 client (``"AUTHV0.1"`` where a length should be) is refused without an
answer, as is a client that closes early.

The driver's loop::

    handshake.receive_data(bytes)           # b"" means the peer closed
    event = handshake.next_event()
      Send(data)      -> write it
      NEED_DATA       -> read more (the whole handshake within TIME_LIMIT seconds)
      Offload(...)    -> run event.call() in a thread; handshake.resolve(its result)
      Authenticated   -> done: greet, and give handshake.trailing_data to the POP3 session
      Refused         -> done: close (after writing any Send that came before)

Nothing here blocks, reads a clock or touches a file: the AP-REQ check is the
:class:`~pop3d.requests.Offload` the handshake yields, whose ``call`` is the verifier the
driver gave it (normally :meth:`pop3d.kerberos.mit.Acceptor.verify`). The handshake never raises
for anything the peer sends; a peer fault is a :class:`Refused`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from pop3d.kerberos.mit import Accepted, Rejected
from pop3d.requests import NEED_DATA, Offload, Send, _NeedData

SENDAUTH_VERSION: Final = b"KRB5_SENDAUTH_V1.0\0"
APPLICATION_VERSION: Final = b"KPOPV1.0\0"
KERBEROS4_PREFIX: Final = b"AUTH"  # krb_sendauth's "AUTHV0.1": no length prefix at all
MAX_MESSAGE: Final = 64 * 1024  # a real AP-REQ is about 600 bytes; with a PAC a few KiB
# The whole handshake, first byte to result, must fit in this many seconds (the driver
# enforces it, as for a TLS handshake): fetchmail sends everything at once, so it is generous.
TIME_LIMIT: Final = 30.0

ANSWER_OK: Final = b"\x00"
ANSWER_BAD_SENDAUTH_VERSION: Final = b"\x01"
ANSWER_BAD_APPLICATION_VERSION: Final = b"\x02"
ACCEPTED: Final = b"\0\0\0\0"  # the zero-length "no error" message

# --- what the verifier returns (the Offload's result) ------------------------------------


Verifier = Callable[[bytes], Accepted | Rejected]

# --- events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The handshake succeeded. ``principal`` is proven by the ticket; which local user it
    may log in as is :func:`pop3d.kerberos.names.local_user`'s to say."""

    principal: str
    default_realm: str | None
    mutual: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """The handshake failed: close the connection. ``reason`` is for the log only;
    ``unavailable``: the server's own keytab failed, not the client. ``presented``: an
    AP-REQ came whole and was checked, so a credential was refused; otherwise the peer
    never offered one (it closed, spoke another protocol, sent an oversized length)."""

    reason: str
    unavailable: bool = False
    presented: bool = False


Event = Send | Offload | Authenticated | Refused | _NeedData


class _Phase(enum.Enum):
    VERSIONS = "versions"
    AP_REQ = "ap-req"
    VERIFYING = "verifying"
    DONE = "done"


class Handshake:
    def __init__(self, verify: Verifier, max_message: int = MAX_MESSAGE) -> None:
        self._verify = verify
        self._max = max_message
        self._buffer = bytearray()
        self._closed = False
        self._phase = _Phase.VERSIONS
        self._pending: list[Event] = []
        self._waiting = False  # an Offload is out; next_event answers NEED_DATA until resolve
        self.result: Authenticated | Refused | None = None

    @property
    def checking(self) -> bool:
        """An AP-REQ is being checked (its Offload is out): a time limit now leaves a
        presented credential without a verdict."""
        return self._waiting

    @property
    def trailing_data(self) -> bytes:
        """Bytes the client sent after its AP-REQ: the start of the POP3 session. Only
        meaningful after :class:`Authenticated`."""
        return bytes(self._buffer) if self._phase is _Phase.DONE else b""

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; b"" when it closed its side."""
        if data:
            self._buffer += data
        else:
            self._closed = True

    def resolve(self, result: object) -> None:
        """The Offload's result: :class:`Accepted`, :class:`Rejected`, or the exception the
        verifier raised (the Offload contract hands it over instead of raising)."""
        if not self._waiting:
            raise RuntimeError("resolve() without an outstanding Offload")
        self._waiting = False
        if isinstance(result, Accepted):
            reply = ACCEPTED
            if result.ap_rep is not None:
                reply += _frame(result.ap_rep)
            self._finish(
                Authenticated(result.client, result.default_realm, result.ap_rep is not None),
                reply,
            )
        elif isinstance(result, Rejected):
            self._finish(
                Refused(f"ticket refused: {result.reason}", result.unavailable, presented=True),
                _frame(result.krb_error) if result.krb_error else b"",
            )
        else:
            self._finish(Refused(f"ticket check failed: {result!r}", presented=True), b"")

    def next_event(self) -> Event:
        if self._pending:
            return self._pending.pop(0)
        if self._waiting or self._phase is _Phase.DONE:
            return NEED_DATA
        if self._phase is _Phase.VERSIONS:
            self._versions()
        elif self._phase is _Phase.AP_REQ:
            self._ap_req()
        if self._pending:
            return self._pending.pop(0)
        if self._closed:  # (a finished step would have left its result pending)
            self._finish(Refused(f"peer closed during the handshake ({self._phase.value})"))
            return self._pending.pop(0)
        return NEED_DATA

    # --- the steps ------------------------------------------------------------------------

    def _versions(self) -> None:
        if self._buffer[:4] == KERBEROS4_PREFIX:
            self._finish(Refused("Kerberos 4 KPOP (krb_sendauth) is not supported"))
            return
        first = self._message(0)
        if first is None:
            return
        second = self._message(4 + len(first))
        if second is None:
            return
        del self._buffer[: 8 + len(first) + len(second)]
        if first != SENDAUTH_VERSION:
            self._finish(
                Refused(f"bad sendauth version {first[:40]!r}"), ANSWER_BAD_SENDAUTH_VERSION
            )
        elif second != APPLICATION_VERSION:
            self._finish(
                Refused(f"bad application version {second[:40]!r}"), ANSWER_BAD_APPLICATION_VERSION
            )
        else:
            self._pending.append(Send(ANSWER_OK))
            self._phase = _Phase.AP_REQ

    def _ap_req(self) -> None:
        ap_req = self._message(0)
        if ap_req is None:
            return
        del self._buffer[: 4 + len(ap_req)]
        self._phase = _Phase.VERIFYING
        self._waiting = True
        verify = self._verify
        self._pending.append(Offload(lambda: verify(ap_req), "KPOP AP-REQ check"))

    def _message(self, offset: int) -> bytes | None:
        """The length-prefixed message at ``offset`` of the buffer, None until it is all
        there. A prefix over the cap refuses at once (and nothing more is parsed)."""
        if len(self._buffer) < offset + 4:
            return None
        (length,) = struct.unpack_from(">I", self._buffer, offset)
        if length > self._max:
            self._finish(Refused(f"message length {length} over the {self._max}-byte cap"))
            return None
        if len(self._buffer) < offset + 4 + length:
            return None
        return bytes(self._buffer[offset + 4 : offset + 4 + length])

    def _finish(self, result: Authenticated | Refused, reply: bytes = b"") -> None:
        self._phase = _Phase.DONE
        self.result = result
        if isinstance(result, Refused):
            self._buffer.clear()
        if reply:
            self._pending.append(Send(reply))
        self._pending.append(result)


def _frame(message: bytes) -> bytes:
    return struct.pack(">I", len(message)) + message
