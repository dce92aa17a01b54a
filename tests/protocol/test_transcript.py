"""The session's transcript for telemetry (pop3d/protocol/transcript.py): every line it
consumes and every block it sends, in order, with the secrets hidden by the session, which
alone knows whether a line is a command or an answer to a challenge."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from pop3d.protocol.states import State
from pop3d.protocol.transcript import shown_command, shown_response
from pop3d.protocol.wire import OVERLONG
from tests.support.drive import Driven, drive, settings_for_lab
from tests.support.lab import Lab


def _text(driven: Driven) -> bytes:
    assert driven.session.transcript is not None
    return b"".join(
        (b"C: " if client else b"S: ") + data for client, data in driven.session.transcript.take()
    )


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        (b"USER alice", b"USER alice"),
        (b"user alice", b"user alice"),
        (b"PASS wonderland", b"PASS ****"),
        (b"pass  two words", b"pass ****"),
        (b"PASS", b"PASS"),
        (b"PASS\twonderland", b"PASS ****"),  # a tab ends the keyword, as a space does
        (b"pass\x0b\twonderland", b"pass ****"),
        (b"APOP\talice c4c9334bac560ecc979e58001b3e22fb", b"APOP alice ****"),
        (b"AUTH\tPLAIN AGFsaWNlAHdvbmRlcmxhbmQ=", b"AUTH PLAIN ****"),
        (b"APOP alice c4c9334bac560ecc979e58001b3e22fb", b"APOP alice ****"),
        (b"APOP alice", b"APOP alice"),
        (b"AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=", b"AUTH PLAIN ****"),
        (b"AUTH PLAIN", b"AUTH PLAIN"),
        (b"AUTH", b"AUTH"),
        (b"AUTH  plain AGFsaWNlAHdvbmRlcmxhbmQ=", b"AUTH plain ****"),
        # The mechanism's name left out: its initial response where the name belongs
        (b"AUTH AGFsaWNlAHdvbmRlcmxhbmQ=", b"AUTH ****"),
        (b"AUTH AGFsaWNlAHdvbmRlcmxhbmRz", b"AUTH ****"),
        (b"wonderland", b"****"),
        (b"XTND secret", b"****"),
        (b"\x00junk", b"****"),
        (OVERLONG, b"**** (line over the length limit, not kept)"),
    ],
)
def test_command_lines_are_shown_without_secrets(line: object, shown: bytes) -> None:
    for state in (State.AUTHORIZATION, State.TRANSACTION):
        assert shown_command(line, state) == shown


A, U, T = State.AUTHORIZATION, State.AUTHORIZATION_USER, State.TRANSACTION


@pytest.mark.parametrize(
    ("state", "line", "shown"),
    [
        # Found probing: a password sent as a bare line at the PASS prompt was written
        # whole when its first word was a command's name.
        (U, b"List my Secret-2024", b"List ****"),
        (U, b"top secret", b"top ****"),
        (U, b"user friendly horse", b"user ****"),  # USER again is refused after USER
        (U, b"stat\tsecret", b"stat ****"),
        (U, b"Quit smoking 2024", b"Quit ****"),
        (U, b"Apop my secret", b"Apop ****"),
        (U, b"auth PLAIN secret", b"auth ****"),
        (A, b"Retr 1 secret", b"Retr ****"),
        (A, b"CAPA extra words", b"CAPA ****"),
        # What is valid there is shown as it was
        (A, b"USER alice", b"USER alice"),
        (A, b"CAPA", b"CAPA"),
        (U, b"CAPA", b"CAPA"),
        (U, b"STLS", b"STLS"),
        (U, b"QUIT", b"QUIT"),
        (U, b"LIST", b"LIST"),
        (U, b"PASS wonderland", b"PASS ****"),
        (A, b"APOP alice c4c9334bac560ecc979e58001b3e22fb", b"APOP alice ****"),
        (A, b"AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=", b"AUTH PLAIN ****"),
        # After login the arguments are message numbers and line counts
        (T, b"RETR 1", b"RETR 1"),
        (T, b"TOP 1 10", b"TOP 1 10"),
        (T, b"LIST my Secret-2024", b"LIST my Secret-2024"),
        (T, b"wonderland", b"****"),
    ],
)
def test_before_login_only_what_cannot_be_a_secret_is_shown(
    state: State, line: bytes, shown: bytes
) -> None:
    assert shown_command(line, state) == shown


def test_answers_during_an_exchange_are_hidden_but_the_cancel() -> None:
    assert shown_response(b"AGFsaWNlAHdvbmRlcmxhbmQ=") == b"****"
    assert shown_response(b"") == b"****"
    assert shown_response(b"*") == b"*"


def test_user_pass_session_in_order(lab: Lab) -> None:
    driven = drive(lab)
    driven.session.record()
    driven.feed()
    driven.feed(b"USER alice\r\nPASS wonderland\r\nSTAT\r\n")
    driven.feed(b"QUIT\r\n")
    text = _text(driven)
    assert b"wonderland" not in text
    assert text.startswith(b"S: +OK lab.test")
    # In the order the session consumed and answered: pipelined lines are consumed
    # before the answers that were waiting to go out with the next one.
    lines = text.split(b"\r\n")
    assert lines[1:4] == [
        b"C: USER alice",
        b"C: PASS ****",
        b"S: +OK User name accepted, password please",
    ]
    assert lines[4] == b"C: STAT"
    assert lines[5].startswith(b"S: +OK Mailbox locked and ready SESSIONID=<sid-1>")
    assert lines[6].startswith(b"S: +OK ") and lines[7] == b"C: QUIT"


SASL = settings_for_lab(sasl_mechanisms=("CRAM-MD5", "PLAIN"))


def test_auth_exchanges_hide_arguments_answers_and_challenges(lab: Lab) -> None:
    driven = drive(lab, SASL)
    driven.session.record()
    driven.feed()
    blob = base64.b64encode(b"\0alice\0wonderland")
    assert driven.feed(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert driven.feed(b"*\r\n").startswith(b"-ERR")
    out = driven.feed(b"AUTH CRAM-MD5\r\n")
    challenge = base64.b64decode(out[2:].strip())
    digest = hmac.new(b"wonderland", challenge, hashlib.md5).hexdigest()
    answer = base64.b64encode(b"alice " + digest.encode())
    assert driven.feed(answer + b"\r\n").startswith(b"+OK")
    driven.release()  # the maildrop lock, for the next session
    text = _text(driven)
    for secret in (blob, answer, out[2:].strip(), digest.encode(), b"wonderland"):
        assert secret not in text, secret
    lines = text.split(b"\r\n")
    assert lines[1:4] == [b"C: AUTH PLAIN", b"S: + ****", b"C: *"]
    assert lines[5:8] == [b"C: AUTH CRAM-MD5", b"S: + ****", b"C: ****"]

    other = drive(lab, SASL)
    other.session.record()
    other.feed()
    assert other.feed(b"AUTH PLAIN " + blob + b"\r\nNOOP\r\n").startswith(b"+OK")
    text = _text(other)
    assert blob not in text and b"C: AUTH PLAIN ****\r\n" in text and b"C: NOOP\r\n" in text


def test_a_password_at_the_pass_prompt_named_like_a_command_is_hidden(lab: Lab) -> None:
    driven = drive(lab)
    driven.session.record()
    driven.feed()
    assert driven.feed(b"USER alice\r\nList my wonderland\r\n").endswith(
        b"-ERR LIST is not valid in the AUTHORIZATION state\r\n"
    )
    assert driven.feed(b"PASS wonderland\r\n").startswith(b"+OK")
    driven.release()
    text = _text(driven)
    assert b"wonderland" not in text and b"C: List ****\r\n" in text


def test_apop_digest_is_hidden(lab: Lab) -> None:
    driven = drive(lab, token="1.2")
    driven.session.record()
    driven.feed()
    digest = hashlib.md5(b"<1.2@lab.test>wonderland", usedforsecurity=False).hexdigest().encode()
    assert driven.feed(b"APOP alice " + digest + b"\r\n").startswith(b"+OK")
    text = _text(driven)
    assert digest not in text and b"C: APOP alice ****\r\n" in text


def test_nothing_is_recorded_unless_asked(lab: Lab) -> None:
    driven = drive(lab)
    driven.feed()
    driven.feed(b"USER alice\r\nPASS wonderland\r\n")
    assert driven.session.transcript is None
    transcript = driven.session.record()
    driven.feed(b"NOOP\r\n")
    assert transcript.take() == [(True, b"NOOP\r\n"), (False, b"+OK\r\n")]
    driven.session.stop_recording()
    driven.feed(b"NOOP\r\n")
    assert transcript.take() == []


def test_an_initial_response_sent_without_its_mechanism_is_not_recorded(lab: Lab) -> None:
    """Found probing: "AUTH <base64 of the password>" (the name left out) was kept in the
    transcript twice, as the command and in the -ERR that echoed it."""
    driven = drive(lab, SASL)
    driven.session.record()
    driven.feed()
    blob = base64.b64encode(b"\0alice\0wonderlands")  # no padding, name-shaped
    assert driven.feed(b"AUTH " + blob + b"\r\n") == (
        b"-ERR [AUTH] That is not an available mechanism; see CAPA\r\n"
    )
    assert driven.feed(b"AUTH PLAIN " + blob + b"\r\n").startswith(b"-ERR")
    assert blob not in _text(driven)
