"""A KPOP connection's POP3 session (pop3d -k): the handshake before the greeting proved a
Kerberos principal; USER must name its user, PASS checks no password, APOP, AUTH and STLS
are refused, and CAPA says so. Driven without sockets against the real Maildir and
credential file (the handshake itself: tests/kpop/, the whole service: tests/kpop/
test_server.py)."""

from __future__ import annotations

import pytest

from pop3d.protocol import events as ev
from pop3d.protocol.states import State
from pop3d.security.policy import Action, Policy
from pop3d.security.value import Security
from tests.support.drive import Driven, drive, settings_for_lab
from tests.support.lab import Lab

ALICE = ("alice@KRBTEST.COM", "alice")
# The strictest password rules and every other login method on: none of it applies.
STRICT = settings_for_lab(
    policy=Policy(allow_plaintext=False, tls_required=True, starttls_offered=True, minimum_ssf=128),
    sasl_mechanisms=("SCRAM-SHA-256", "PLAIN"),
)


def kpop(lab: Lab, who: tuple[str, str] = ALICE) -> Driven:
    return drive(lab, STRICT, kpop=who)


def capa(driven: Driven) -> list[bytes]:
    return driven.feed(b"CAPA\r\n").split(b"\r\n")[1:-2]


def test_no_apop_challenge_in_the_greeting(lab: Lab) -> None:
    greeting = kpop(lab).feed()
    assert greeting.startswith(b"+OK ") and b"<" not in greeting


def test_capa_offers_user_only(lab: Lab) -> None:
    driven = kpop(lab)
    driven.feed()
    lines = capa(driven)
    assert b"USER" in lines
    assert not any(line.startswith((b"SASL", b"STLS")) for line in lines)


def test_the_same_settings_without_kpop_refuse_user(lab: Lab) -> None:
    """The control: these settings are strict, KPOP is what lets USER through."""
    driven = drive(lab, STRICT)
    driven.feed()
    assert b"USER" not in capa(driven)
    assert driven.feed(b"USER alice\r\n").startswith(b"-ERR [AUTH] ")


def test_the_tickets_user_logs_in_without_a_password(lab: Lab) -> None:
    driven = kpop(lab)
    driven.feed()
    assert driven.feed(b"USER alice\r\n").startswith(b"+OK ")
    answer = driven.feed(b"PASS krb_ticket\r\n")
    assert answer.startswith(b"+OK Mailbox locked and ready"), answer
    assert driven.session.state is State.TRANSACTION
    assert driven.notices == [ev.LoginSucceeded("alice", "KPOP")]
    assert driven.feed(b"STAT\r\n").startswith(b"+OK ")


def test_another_user_is_refused(lab: Lab) -> None:
    driven = kpop(lab)
    driven.feed()
    refused = driven.feed(b"USER bob\r\n")
    assert refused == b"-ERR [AUTH] The Kerberos ticket is not for this user\r\n"
    assert driven.session.state is State.AUTHORIZATION
    # Under the ticket's user, a refusal: not a failed login of bob's (found probing)
    reason = "may not act as bob: ticket is for alice@KRBTEST.COM"
    assert driven.notices == [ev.LoginFailed("alice", "KPOP", reason, authenticated=True)]
    # and bob's password does not help: PASS without an accepted USER
    assert driven.feed(b"PASS builder\r\n").startswith(b"-ERR [AUTH] Must give USER")


@pytest.mark.parametrize("user", [b"alice", b"ALICE"])
def test_a_principal_whose_name_differs_only_in_case_is_refused(lab: Lab, user: bytes) -> None:
    """ALICE@KRBTEST.COM is not alice: username_tolower (on here, the default) lowercases
    USER, and KPOP compares the ticket's user exactly, as Cyrus's strcmp did."""
    driven = kpop(lab, ("ALICE@KRBTEST.COM", "ALICE"))
    driven.feed()
    assert driven.feed(b"USER " + user + b"\r\n").startswith(b"-ERR [AUTH] ")
    assert driven.feed(b"PASS krb_ticket\r\n").startswith(b"-ERR [AUTH] Must give USER")
    assert driven.session.state is State.AUTHORIZATION
    reason = (
        f"may not act as {user.decode().lower()}: ticket is for ALICE@KRBTEST.COM, "
        "whose user ALICE is not the canonical name alice"
    )
    assert driven.notices == [ev.LoginFailed("ALICE", "KPOP", reason, authenticated=True)]


def test_a_user_unknown_to_pop3d_gets_no_maildrop(lab: Lab) -> None:
    driven = kpop(lab, ("carol@KRBTEST.COM", "carol"))
    driven.feed()
    assert driven.feed(b"USER carol\r\n").startswith(b"+OK ")
    assert driven.feed(b"PASS krb_ticket\r\n") == b"-ERR [AUTH] Invalid login\r\n"
    # The ticket proved carol: refused, not a failed login fail2ban counts (found probing)
    assert driven.notices == [ev.LoginFailed("carol", "KPOP", "unknown user", authenticated=True)]
    assert not lab.maildir("carol").exists()


@pytest.mark.parametrize(
    "command",
    [b"APOP alice 0123456789abcdef0123456789abcdef", b"AUTH PLAIN", b"AUTH", b"STLS"],
)
def test_other_logins_and_stls_are_refused(lab: Lab, command: bytes) -> None:
    driven = kpop(lab)
    driven.feed()
    answer = driven.feed(command + b"\r\n")
    assert answer.startswith(b"-ERR ") and b"not available on a KPOP connection" in answer
    assert driven.session.state is State.AUTHORIZATION


def test_policy_on_a_kpop_connection() -> None:
    policy = STRICT.policy
    security = Security(kpop_principal="alice@KRBTEST.COM")
    assert policy.permits(Action.PLAINTEXT_LOGIN, security).allowed
    for action in (Action.APOP, Action.SASL, Action.OFFER_STLS):
        assert not policy.permits(action, security).allowed
    assert not policy.offers_mechanism(security)
    assert "kpop=yes" in security.describe()
