"""Session-level regression tests for what fuzz/session_core.py and fuzz/sasl_mechanisms.py
found (SECURITY.md, "Fuzzing"): each input that broke an invariant, replayed through a
real session against the lab's Maildir and credential file."""

from __future__ import annotations

import base64
import re

import pytest
import scramp

from pop3d.protocol import events as ev
from tests.support.drive import drive, settings_for_lab
from tests.support.lab import Lab

# What fuzz/support.check_responses demands of a status line.
STATUS_LINE = re.compile(rb"(\+OK|-ERR)( [\x20-\x7e]*)?")


def status_lines(out: bytes) -> list[bytes]:
    return [line for line in out.split(b"\r\n") if line.startswith((b"+OK", b"-ERR"))]


def test_scram_authzid_that_is_not_utf8_is_an_invalid_login(lab: Lab) -> None:
    # UnicodeDecodeError escaped from the SCRAM exchange through next_event().
    driven = drive(lab, settings_for_lab(sasl_mechanisms=("SCRAM-SHA-256",)))
    driven.feed()
    first = base64.b64encode(b"n,a=user\xc0x,n=alice,r=abc")
    assert driven.feed(b"AUTH SCRAM-SHA-256 " + first + b"\r\n") == (
        b"-ERR [AUTH] Invalid login\r\n"
    )
    assert driven.feed(b"NOOP\r\n").startswith(b"-ERR")  # the session goes on


@pytest.mark.parametrize(
    "name",
    [b"X\x1b[2J", b"\xff\xfe", b"A" * 600, b"PLAIN\rINJECTED"],
    ids=["escape-sequence", "not-ascii", "600-octets", "bare-cr"],
)
def test_auth_with_an_unknown_mechanism_echoes_nothing_unsafe(lab: Lab, name: bytes) -> None:
    # The -ERR line carried control characters, U+FFFD or kilobytes of client input.
    driven = drive(lab)
    driven.feed()
    out = driven.feed(b"AUTH " + name + b"\r\n")
    for line in status_lines(out):
        assert STATUS_LINE.fullmatch(line), line
        assert len(line) + 2 <= 512


def test_scram_proven_then_a_wrong_final_answer_is_refused_not_a_bad_password(lab: Lab) -> None:
    """The server-final message proves the password was right; a client that answers it
    with anything but an empty line is refused (RFC 5034 §4), but was logged as a failed
    password, which fail2ban counts (found probing)."""
    driven = drive(lab, settings_for_lab(sasl_mechanisms=("SCRAM-SHA-256",)))
    driven.feed()
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", lab.users["alice"])
    first = base64.b64encode(client.get_client_first().encode())
    challenge = driven.feed(b"AUTH SCRAM-SHA-256 " + first + b"\r\n")
    client.set_server_first(base64.b64decode(challenge.removeprefix(b"+ ").strip()).decode())
    final = base64.b64encode(client.get_client_final().encode())
    server_final = driven.feed(final + b"\r\n")
    client.set_server_final(base64.b64decode(server_final.removeprefix(b"+ ").strip()).decode())
    assert driven.feed(base64.b64encode(b"abc") + b"\r\n") == b"-ERR [AUTH] Invalid login\r\n"
    (failed,) = driven.notices
    assert isinstance(failed, ev.LoginFailed)
    assert (failed.user, failed.authenticated) == ("alice", True)
