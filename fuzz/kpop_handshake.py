"""Fuzz target: the KPOP handshake (pop3d/kpop/handshake.py), driven as
``pop3d/server/connection.py`` drives it: ``next_event`` until NEED_DATA, then the next
piece of the client's bytes (b"" once they run out, when the input says the client closes),
the ``Offload`` carried out and its result (or the exception it raised) handed to
``resolve``. The verifier is a stand-in that answers as byte 0 says: no real Kerberos is
needed for the framing (tests/kpop/ checks the real ``Acceptor``).

Invariant: nothing escapes ``receive_data``/``next_event``/``resolve``; the events equal
those of a one-shot reference parser of the whole stream, in any chunking (so ``Send``
carries only the one answer byte, the zero-length "accepted" message with an AP-REP framed
after it, a framed KRB-ERROR, or nothing); the verifier sees exactly the AP-REQ; after
``Authenticated`` or ``Refused`` there is no other event (only NEED_DATA, however much more
arrives); ``trailing_data`` is exactly the bytes received after the AP-REQ (b"" after
``Refused``); at every NEED_DATA the buffer holds less than the messages still to come may
take (two capped messages while reading the versions, one while reading the AP-REQ), and no
more is ever buffered than that plus one read.

Input: byte 0 flags: bits 0-2 the verifier's answer (0 Accepted without AP-REP, 1 Accepted
with one, 2 Rejected with a KRB-ERROR, 3 Rejected without, 4 the verifier raises, else
Accepted with AP-REP), bits 3-4 the message cap (64 KiB as configured, or 19, 64, 700 so
the cap is reached with real bytes), bit 5 the client closes after its bytes; byte 1 the
chunking; then the client's bytes.

    python fuzz/kpop_handshake.py [libFuzzer flags] [corpus dir ...]
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, not fuzz/

import atheris

with atheris.instrument_imports(include=["pop3d"]):
    from fuzz.support import InvariantBroken, check, chunks
    from pop3d.kerberos.mit import Accepted, Rejected
    from pop3d.kpop import handshake as hs
    from pop3d.kpop.handshake import Authenticated, Handshake, Refused
    from pop3d.requests import NEED_DATA, Offload, Send

HEADER = 2
CAPS = (hs.MAX_MESSAGE, 19, 64, 700)
CLOSES = 0x20
PRINCIPAL = "alice@KRBTEST.COM"
REALM = "KRBTEST.COM"
# The AP-REP and KRB-ERROR bytes are opaque to the handshake: any will do.
AP_REP = bytes.fromhex("6f533051a003020105a10302010fa2453043a003020112a23c043a") + bytes(58)
KRB_ERROR = bytes.fromhex("7e5c305aa003020105a10302011e") + b"KPOP authentication failed"
MAX_EVENTS = 64  # a handshake has at most four events besides NEED_DATA


class VerifierFailed(Exception):
    """What the stand-in raises when byte 0 asks it to (a broken keytab, say)."""


def verdict(choice: int) -> Accepted | Rejected | None:
    """The verifier's answer; None: it raises."""
    if choice == 0:
        return Accepted(PRINCIPAL, None, REALM)
    if choice == 2:
        return Rejected("Ticket expired", KRB_ERROR)
    if choice == 3:
        return Rejected("Ticket expired", b"")
    if choice == 4:
        return None
    return Accepted(PRINCIPAL, AP_REP, REALM)


def frame(message: bytes) -> bytes:
    return struct.pack(">I", len(message)) + message


@dataclass
class Expected:
    """What the reference parser says the handshake does with the whole stream."""

    events: list[object]  # Send(...), Authenticated(...) or the Refused class itself
    ap_req: bytes | None  # what the verifier must be given
    ap_req_end: int  # where the bytes after the AP-REQ start


def _message(stream: bytes, offset: int, cap: int) -> bytes | str:
    """The framed message at ``offset``, or "cap" / "short"."""
    if len(stream) < offset + 4:
        return "short"
    (length,) = struct.unpack_from(">I", stream, offset)
    if length > cap:
        return "cap"
    if len(stream) < offset + 4 + length:
        return "short"
    return stream[offset + 4 : offset + 4 + length]


def reference(
    stream: bytes, cap: int, closes: bool, answer: Accepted | Rejected | None
) -> Expected:
    """The whole stream at once. A "short" message is a Refused when the client closes,
    else the handshake is still waiting (no terminal event)."""
    refused = Expected([Refused], None, -1)
    waiting = Expected([], None, -1)
    if stream[:4] == hs.KERBEROS4_PREFIX:
        return refused
    first = _message(stream, 0, cap)
    if isinstance(first, str):
        return refused if first == "cap" or closes else waiting
    second = _message(stream, 4 + len(first), cap)
    if isinstance(second, str):
        return refused if second == "cap" or closes else waiting
    if first != hs.SENDAUTH_VERSION:
        return Expected([Send(hs.ANSWER_BAD_SENDAUTH_VERSION), Refused], None, -1)
    if second != hs.APPLICATION_VERSION:
        return Expected([Send(hs.ANSWER_BAD_APPLICATION_VERSION), Refused], None, -1)
    start = 8 + len(first) + len(second)
    ap_req = _message(stream, start, cap)
    if isinstance(ap_req, str):
        ending: list[object] = [Refused] if ap_req == "cap" or closes else []
        return Expected([Send(hs.ANSWER_OK), *ending], None, -1)
    end = start + 4 + len(ap_req)
    events: list[object] = [Send(hs.ANSWER_OK)]
    if isinstance(answer, Accepted):
        reply = hs.ACCEPTED + (frame(answer.ap_rep) if answer.ap_rep is not None else b"")
        mutual = answer.ap_rep is not None
        events += [Send(reply), Authenticated(answer.client, answer.default_realm, mutual)]
    elif isinstance(answer, Rejected) and answer.krb_error:
        events += [Send(frame(answer.krb_error)), Refused]
    else:
        events.append(Refused)
    return Expected(events, ap_req, end)


def _bound(handshake: Handshake, cap: int) -> int:
    """What the buffer may hold at a NEED_DATA: less than the messages still to come."""
    phase = handshake._phase
    if phase is hs._Phase.VERSIONS:
        return 2 * (4 + cap)
    if phase is hs._Phase.AP_REQ:
        return 4 + cap
    return 0  # verifying or done: the driver reads nothing more here


def test_one_input(data: bytes) -> None:
    if len(data) < HEADER:
        return
    flags, seed, stream = data[0], data[1], data[HEADER:]
    cap = CAPS[(flags >> 3) & 3]
    closes = bool(flags & CLOSES)
    answer = verdict(flags & 7)
    expected = reference(stream, cap, closes, answer)
    verified: list[bytes] = []

    def verify(ap_req: bytes) -> Accepted | Rejected:
        verified.append(ap_req)
        if answer is None:
            raise VerifierFailed("keytab unreadable")
        return answer

    handshake = Handshake(verify, max_message=cap)
    pieces = [*chunks(stream, seed)]
    if closes:
        pieces.append(b"")
    received = bytearray()
    events: list[object] = []
    terminal: Authenticated | Refused | None = None
    largest_read = max((len(p) for p in pieces), default=0)
    for _ in range(len(pieces) + MAX_EVENTS):
        event = handshake.next_event()
        if event is NEED_DATA:
            if terminal is not None:
                break
            check(
                len(handshake._buffer) < max(_bound(handshake, cap), 1),
                f"{len(handshake._buffer)} bytes buffered at NEED_DATA in {handshake._phase}",
            )
            if not pieces:
                break
            piece = pieces.pop(0)
            handshake.receive_data(piece)
            received += piece
            continue
        check(terminal is None, f"{event!r} after the terminal {terminal!r}")
        if isinstance(event, Offload):
            check(not verified, "a second Offload")
            try:
                result: object = event.call()
            except Exception as exc:  # the Offload contract: the exception is the result
                result = exc
            handshake.resolve(result)
            continue
        if isinstance(event, Send):
            check(isinstance(event.data, bytes) and event.data, f"Send of {event.data!r}")
            events.append(event)
        elif isinstance(event, Authenticated):
            events.append(event)
            terminal = event
        elif isinstance(event, Refused):
            check(isinstance(event.reason, str) and event.reason, "Refused without a reason")
            events.append(Refused)
            terminal = event
        else:
            raise InvariantBroken(f"unknown event {event!r}")
    else:
        raise InvariantBroken("the handshake never settles")
    check(events == expected.events, f"events {events!r}, expected {expected.events!r}")
    check(
        verified == ([expected.ap_req] if expected.ap_req is not None else []),
        f"verifier given {verified!r}, expected {expected.ap_req!r}",
    )
    check(handshake.result is terminal, f"result {handshake.result!r}, event {terminal!r}")
    bound = 2 * (4 + cap) + largest_read
    check(len(handshake._buffer) <= bound, f"{len(handshake._buffer)} bytes buffered")
    if isinstance(terminal, Authenticated):
        trailing = bytes(received[expected.ap_req_end :])
        check(handshake.trailing_data == trailing, f"trailing {handshake.trailing_data!r}")
    else:
        check(handshake.trailing_data == b"", f"trailing {handshake.trailing_data!r}")
    if terminal is not None:
        # More bytes after the end change nothing: still no event but NEED_DATA.
        handshake.receive_data(b"+OK\r\n" * 3)
        handshake.receive_data(b"")
        for _ in range(3):
            event = handshake.next_event()
            check(event is NEED_DATA, f"{event!r} after the terminal {terminal!r}")
        try:
            handshake.resolve(None)
        except RuntimeError:
            pass
        else:
            raise InvariantBroken("resolve() accepted after the end")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
