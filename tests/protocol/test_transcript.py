"""The session's transcript for telemetry (pop3d/protocol/transcript.py): every line it
consumes and every block it sends, in order, with the secrets hidden by the session, which
alone knows whether a line is a command or an answer to a challenge."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

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
        (b"RETR 1", b"RETR 1"),
        (b"wonderland", b"****"),
        (b"XTND secret", b"****"),
        (b"\x00junk", b"****"),
        (OVERLONG, b"**** (line over the length limit, not kept)"),
    ],
)
def test_command_lines_are_shown_without_secrets(line: object, shown: bytes) -> None:
    assert shown_command(line) == shown


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
