"""Drive a KPOP :class:`~pop3d.kpop.handshake.Handshake` synchronously: over a blocking
socket, or over canned bytes. The driver loop is the one the handshake's docstring
describes; Offload requests run inline (as the asyncio driver runs them in a thread), and
an exception becomes the result, as the Offload contract says. And the AP-REQ an attacker
can cut out of a GSSAPI client's first token (:func:`gssapi_ap_req`)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import gssapi

from pop3d.kpop.handshake import (
    NEED_DATA,
    Authenticated,
    Handshake,
    Refused,
    Send,
)
from pop3d.requests import Offload

# The head of a Kerberos initial context token (RFC 4121 §4.1) after its [APPLICATION 0]
# tag and length: the krb5 mechanism's OID, then TOK_ID 01 00; the AP-REQ follows.
KRB5_TOKEN_HEAD = bytes.fromhex("06092a864886f712010202") + b"\x01\x00"


@dataclass
class Outcome:
    result: Authenticated | Refused
    sent: bytes  # everything the handshake asked to write
    received: bytes  # everything read from the client during the handshake
    trailing: bytes
    offloads: int = 0
    events: list[object] = field(default_factory=list)


def _carry_out(event: Offload) -> object:
    try:
        return event.call()
    except Exception as exc:  # the Offload contract: the exception is the result
        return exc


def drive_socket(handshake: Handshake, sock: socket.socket, chunk: int = 4096) -> Outcome:
    sent = bytearray()
    received = bytearray()
    offloads = 0
    events: list[object] = []
    while True:
        event = handshake.next_event()
        events.append(event)
        if event is NEED_DATA:
            data = sock.recv(chunk)
            received += data
            handshake.receive_data(data)
        elif isinstance(event, Send):
            sock.sendall(event.data)
            sent += event.data
        elif isinstance(event, Offload):
            offloads += 1
            handshake.resolve(_carry_out(event))
        elif isinstance(event, Authenticated | Refused):
            return Outcome(
                event, bytes(sent), bytes(received), handshake.trailing_data, offloads, events
            )
        else:
            raise AssertionError(f"unexpected event {event!r}")


def drive_bytes(handshake: Handshake, data: bytes, chunk: int = 0, eof: bool = True) -> Outcome:
    """Feed ``data`` (whole, or ``chunk`` bytes at a time), then EOF if ``eof``. If the
    handshake still wants data at the end and ``eof`` is False, result is a Refused marker
    ``"(still waiting)"``."""
    pieces = [data] if not chunk else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    pieces = [p for p in pieces if p]
    sent = bytearray()
    offloads = 0
    events: list[object] = []
    while True:
        event = handshake.next_event()
        events.append(event)
        if event is NEED_DATA:
            if pieces:
                handshake.receive_data(pieces.pop(0))
            elif eof:
                handshake.receive_data(b"")
                eof = False
            else:
                return Outcome(Refused("(still waiting)"), bytes(sent), data, b"", offloads, events)
        elif isinstance(event, Send):
            sent += event.data
        elif isinstance(event, Offload):
            offloads += 1
            handshake.resolve(_carry_out(event))
        elif isinstance(event, Authenticated | Refused):
            return Outcome(event, bytes(sent), data, handshake.trailing_data, offloads, events)
        else:
            raise AssertionError(f"unexpected event {event!r}")


def gssapi_first_token(ccache: str, service: str = "pop@localhost") -> bytes:
    """A GSSAPI client's first token (what ``AUTH GSSAPI`` carries; the client asks for
    mutual authentication and a confidentiality layer). Needs KRB5_CONFIG in
    ``os.environ``."""
    flags = gssapi.RequirementFlag
    context = gssapi.SecurityContext(
        name=gssapi.Name(service, gssapi.NameType.hostbased_service),
        usage="initiate",
        mech=gssapi.MechType.kerberos,
        creds=gssapi.Credentials(usage="initiate", store={"ccache": ccache}),
        flags=flags.mutual_authentication | flags.integrity | flags.confidentiality,
    )
    token = context.step()
    assert token is not None
    return token


def gssapi_ap_req(ccache: str, service: str = "pop@localhost") -> bytes:
    """The AP-REQ of :func:`gssapi_first_token`, cut out of its header as an attacker on
    the path would."""
    token = gssapi_first_token(ccache, service)
    assert token[0] == 0x60
    start = 2 + (token[1] & 0x7F if token[1] & 0x80 else 0)
    assert token[start : start + len(KRB5_TOKEN_HEAD)] == KRB5_TOKEN_HEAD, token[:20].hex()
    return token[start + len(KRB5_TOKEN_HEAD) :]
