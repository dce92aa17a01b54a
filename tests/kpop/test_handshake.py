"""The handshake alone, with a stand-in verifier: framing, answers, caps, trailing data,
and the invariant that whatever a peer sends ends in Authenticated or Refused, never an
exception. The real AP-REQ check is in test_mit.py."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pop3d.kpop.handshake import (
    MAX_MESSAGE,
    NEED_DATA,
    Accepted,
    Authenticated,
    Handshake,
    Refused,
    Rejected,
    Send,
)
from pop3d.requests import Offload
from tests.support.kpop import drive_bytes

VERSIONS = bytes.fromhex("000000134b5242355f53454e44415554485f56312e3000000000094b504f5056312e3000")


def frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def fake_verify(ap_req: bytes) -> Accepted | Rejected:
    if ap_req == b"good":
        return Accepted("alice@EXAMPLE.COM", b"AP-REP", "EXAMPLE.COM")
    if ap_req == b"good-no-mutual":
        return Accepted("alice@EXAMPLE.COM", None, "EXAMPLE.COM")
    if ap_req == b"raise":
        raise OSError("libkrb5 went away")
    return Rejected("bad ticket", b"KRB-ERROR")


def test_versions_in_the_vector_are_mit_sendauth() -> None:
    assert frame(b"KRB5_SENDAUTH_V1.0\0") + frame(b"KPOPV1.0\0") == VERSIONS


@pytest.mark.parametrize("chunk", [0, 1, 3, 7])
def test_accepted_with_mutual_authentication(chunk: int) -> None:
    out = drive_bytes(Handshake(fake_verify), VERSIONS + frame(b"good"), chunk=chunk)
    assert out.result == Authenticated("alice@EXAMPLE.COM", "EXAMPLE.COM", mutual=True)
    assert out.sent == b"\x00" + b"\0\0\0\0" + frame(b"AP-REP")
    assert out.offloads == 1
    assert out.trailing == b""


def test_the_answer_byte_goes_out_before_the_ap_req_arrives() -> None:
    handshake = Handshake(fake_verify)
    handshake.receive_data(VERSIONS)
    assert handshake.next_event() == Send(b"\x00")
    assert handshake.next_event() is NEED_DATA
    handshake.receive_data(frame(b"good"))
    request = handshake.next_event()
    assert isinstance(request, Offload)
    assert handshake.next_event() is NEED_DATA  # nothing moves until resolve
    handshake.resolve(request.call())
    assert handshake.next_event() == Send(b"\0\0\0\0" + frame(b"AP-REP"))
    assert isinstance(handshake.next_event(), Authenticated)


def test_without_mutual_only_the_empty_message() -> None:
    out = drive_bytes(Handshake(fake_verify), VERSIONS + frame(b"good-no-mutual"))
    assert out.result == Authenticated("alice@EXAMPLE.COM", "EXAMPLE.COM", mutual=False)
    assert out.sent == b"\x00\0\0\0\0"


def test_trailing_data_goes_to_the_pop3_session() -> None:
    handshake = Handshake(fake_verify)
    handshake.receive_data(VERSIONS + frame(b"good") + b"CAPA\r\nUS")
    assert handshake.next_event() == Send(b"\x00")
    request = handshake.next_event()
    assert isinstance(request, Offload)
    handshake.receive_data(b"ER alice\r\n")  # arrives while the ticket is being checked
    handshake.resolve(request.call())
    assert isinstance(handshake.next_event(), Send)
    assert isinstance(handshake.next_event(), Authenticated)
    assert handshake.trailing_data == b"CAPA\r\nUSER alice\r\n"


def test_rejected_sends_the_krb_error_and_refuses() -> None:
    out = drive_bytes(Handshake(fake_verify), VERSIONS + frame(b"forged") + b"USER x\r\n")
    assert out.result == Refused("ticket refused: bad ticket", presented=True)
    assert out.sent == b"\x00" + frame(b"KRB-ERROR")
    assert out.trailing == b""  # nothing of a refused connection reaches POP3


def test_a_verifier_exception_is_a_refusal_not_a_crash() -> None:
    out = drive_bytes(Handshake(fake_verify), VERSIONS + frame(b"raise"))
    assert isinstance(out.result, Refused)
    assert "libkrb5 went away" in out.result.reason
    assert out.result.presented  # a ticket came: its refusal is a credential's
    assert out.sent == b"\x00"


def test_wrong_sendauth_version_answers_01() -> None:
    data = frame(b"KRB5_SENDAUTH_V2.0\0") + frame(b"KPOPV1.0\0") + frame(b"good")
    out = drive_bytes(Handshake(fake_verify), data)
    assert out.sent == b"\x01"
    assert isinstance(out.result, Refused)
    assert "sendauth version" in out.result.reason
    assert not out.result.presented
    assert out.offloads == 0


def test_wrong_application_version_answers_02() -> None:
    data = frame(b"KRB5_SENDAUTH_V1.0\0") + frame(b"KPOPV0.1\0") + frame(b"good")
    out = drive_bytes(Handshake(fake_verify), data)
    assert out.sent == b"\x02"
    assert isinstance(out.result, Refused)
    assert "application version" in out.result.reason
    assert not out.result.presented
    assert out.offloads == 0


def test_both_versions_wrong_answers_01_like_recvauth() -> None:
    out = drive_bytes(Handshake(fake_verify), frame(b"x") + frame(b"y"))
    assert out.sent == b"\x01"


def test_version_without_its_nul_is_wrong() -> None:
    out = drive_bytes(Handshake(fake_verify), frame(b"KRB5_SENDAUTH_V1.0") + frame(b"KPOPV1.0"))
    assert out.sent == b"\x01"


@pytest.mark.parametrize(
    "prefix",
    [
        b"",  # in the first message
        frame(b"KRB5_SENDAUTH_V1.0\0"),  # in the second
        VERSIONS,  # in the AP-REQ
    ],
    ids=["sendauth", "application", "ap-req"],
)
@pytest.mark.parametrize("length", [2**31, 2**32 - 1, MAX_MESSAGE + 1])
def test_a_length_prefix_over_the_cap_fails_at_once(prefix: bytes, length: int) -> None:
    """No waiting for the body (eof=False: the peer never closes), no buffering."""
    out = drive_bytes(Handshake(fake_verify), prefix + struct.pack(">I", length), eof=False)
    assert isinstance(out.result, Refused)
    assert "cap" in out.result.reason
    assert not out.result.presented
    assert out.sent == (b"\x00" if prefix == VERSIONS else b"")
    assert out.offloads == 0


def test_a_message_at_the_cap_is_read() -> None:
    out = drive_bytes(Handshake(fake_verify), VERSIONS + frame(b"\x6e" * MAX_MESSAGE))
    assert out.result == Refused("ticket refused: bad ticket", presented=True)
    assert out.offloads == 1


@pytest.mark.parametrize("cut", [1, 4, 5, 100])
def test_a_truncated_ap_req_is_refused_when_the_peer_closes(cut: int) -> None:
    whole = VERSIONS + frame(b"g" * 200)
    out = drive_bytes(Handshake(fake_verify), whole[: len(VERSIONS) + cut])
    assert isinstance(out.result, Refused)
    assert "closed" in out.result.reason
    assert not out.result.presented
    assert out.sent == b"\x00"
    assert out.offloads == 0


def test_a_truncated_ap_req_keeps_waiting_while_the_peer_is_open() -> None:
    """The driver's handshake time limit ends this one."""
    out = drive_bytes(Handshake(fake_verify), VERSIONS + frame(b"g" * 200)[:50], eof=False)
    assert out.result == Refused("(still waiting)")


def test_kerberos_4_is_refused_without_an_answer() -> None:
    # krb_sendauth: "AUTHV0.1" "KPOPV0.1" then a length and the K4 ticket (no acceptance byte)
    out = drive_bytes(Handshake(fake_verify), b"AUTHV0.1KPOPV0.1\x00\x00\x00\x10" + b"t" * 16)
    assert isinstance(out.result, Refused)
    assert "Kerberos 4" in out.result.reason
    assert not out.result.presented
    assert out.sent == b""


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00\x13KRB5"])
def test_silence_or_a_fragment_then_close(data: bytes) -> None:
    out = drive_bytes(Handshake(fake_verify), data)
    assert isinstance(out.result, Refused)
    assert not out.result.presented
    assert out.sent == b""


def test_resolve_without_a_request_is_a_caller_fault() -> None:
    with pytest.raises(RuntimeError):
        Handshake(fake_verify).resolve(None)


def test_after_the_result_only_need_data() -> None:
    handshake = Handshake(fake_verify)
    drive_bytes(handshake, frame(b"x") + frame(b"y"))
    assert handshake.next_event() is NEED_DATA
    assert isinstance(handshake.result, Refused)


def _terminal(data: bytes, chunk: int) -> None:
    out = drive_bytes(Handshake(fake_verify), data, chunk=chunk)
    assert isinstance(out.result, Authenticated | Refused)
    assert out.offloads <= 1
    assert out.sent[:1] in {b"", b"\x00", b"\x01", b"\x02"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=9))
def test_garbage_never_raises(data: bytes, chunk: int) -> None:
    _terminal(data, chunk)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=9))
def test_garbage_after_good_versions_never_raises(data: bytes, chunk: int) -> None:
    _terminal(VERSIONS + data, chunk)
