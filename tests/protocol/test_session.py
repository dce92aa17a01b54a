"""The session core, driven without sockets against a real Maildir and credential file."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from pathlib import Path

import pytest

import pop3d
from pop3d.auth.authenticator import Authenticator
from pop3d.auth.credentials import CredentialFile
from pop3d.auth.identity import IdentityRules
from pop3d.protocol import events as ev
from pop3d.protocol import login_delay
from pop3d.protocol.states import State
from pop3d.security.policy import Policy
from pop3d.security.secret import Secret
from pop3d.security.value import TLSInfo
from tests.support.drive import Driven, drive, settings_for_lab
from tests.support.lab import FAST_ARGON2, Lab

STATUS = re.compile(rb"^[+-](OK|ERR)", re.MULTILINE)


def login(driven, user: str = "alice", password: str = "wonderland") -> bytes:  # type: ignore[no-untyped-def]
    driven.feed()
    return driven.feed(f"USER {user}\r\nPASS {password}\r\n".encode())


def test_greeting_carries_the_apop_challenge(lab: Lab) -> None:
    driven = drive(lab, token="1896.697170952")
    assert (
        driven.feed()
        == (
            f"+OK lab.test pop3d {pop3d.__version__} server ready <1896.697170952@lab.test>\r\n"
        ).encode()
    )


def test_rfc1939_apop_example_digest(lab: Lab) -> None:
    """RFC 1939 §7: challenge <1896.697170952@dbc.mtview.ca.us>, secret tanstaaf."""
    lab.set_password("mrose", "tanstaaf", apop=True)
    driven = drive(lab, settings_for_lab(servername="dbc.mtview.ca.us"), token="1896.697170952")
    driven.feed()
    out = driven.feed(b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n")
    assert out.startswith(b"+OK Mailbox locked and ready")
    assert driven.session.state is State.TRANSACTION
    # the digest with its challenge would let a reader of a traceback guess the secret
    assert "c4c9334bac560ecc979e58001b3e22fb" not in repr(driven.requests)


def test_list_sizes_equal_the_octets_retr_sends(lab: Lab) -> None:
    driven = drive(lab)
    login(driven)
    listing = driven.feed(b"LIST\r\n").split(b"\r\n")[1:-2]
    for entry in listing:
        number, size = entry.split()
        out = driven.feed(b"RETR " + number + b"\r\n")
        body = out.split(b"\r\n", 1)[1]
        assert body.endswith(b"\r\n.\r\n")
        unstuffed = re.sub(rb"(^|\r\n)\.\.", rb"\1.", body[: -len(b".\r\n")])
        assert len(unstuffed) == int(size), number


def test_sizes_without_hints_are_measured_only_when_needed(lab: Lab) -> None:
    driven = drive(lab)
    login(driven)
    assert not any(isinstance(r, ev.MeasureMessages) for r in driven.requests)
    driven.feed(b"LIST 1\r\n")  # message 1 carries a W= hint
    assert not any(isinstance(r, ev.MeasureMessages) for r in driven.requests)
    driven.feed(b"STAT\r\n")
    measured = [r for r in driven.requests if isinstance(r, ev.MeasureMessages)]
    assert measured == [ev.MeasureMessages((1, 3, 5))]  # messages 2, 4, 6 have no hint
    driven.feed(b"LIST\r\n")
    assert len([r for r in driven.requests if isinstance(r, ev.MeasureMessages)]) == 1


def test_deletions_only_at_quit(lab: Lab) -> None:
    driven = drive(lab)
    login(driven, "bob", "builder")
    before = lab.messages("bob")
    driven.feed(b"DELE 1\r\nDELE 2\r\nNOOP\r\n")
    assert lab.messages("bob") == before
    assert driven.feed(b"QUIT\r\n") == b"+OK Logging out, 2 messages deleted\r\n"
    assert len(lab.messages("bob")) == 1
    assert driven.closed == "QUIT"


def test_stls_discards_pipelined_input(lab: Lab) -> None:
    driven = drive(lab, settings_for_lab(policy=Policy(starttls_offered=True)))
    driven.feed()
    out = driven.feed(b"STLS\r\nCAPA\r\nUSER alice\r\n")
    assert out == b"+OK Begin TLS negotiation now\r\n"
    assert isinstance(driven.requests[-1], ev.StartTLS)
    assert driven.session.security.tls_active
    assert driven.feed() == b""  # CAPA and USER were dropped, not executed inside TLS
    capa = driven.feed(b"CAPA\r\n")
    assert b"STLS" not in capa and b"USER\r\n" in capa
    assert driven.feed(b"STLS\r\n") == b"-ERR TLS is already active\r\n"


def test_stls_forgets_a_user_given_before_it(lab: Lab) -> None:
    driven = drive(
        lab, settings_for_lab(policy=Policy(starttls_offered=True, allow_plaintext=True))
    )
    driven.feed()
    driven.feed(b"USER alice\r\n")
    driven.feed(b"STLS\r\n")
    assert driven.feed(b"PASS wonderland\r\n") == b"-ERR [AUTH] Must give USER command first\r\n"


@pytest.mark.parametrize(
    ("policy", "external_ssf", "tls_ssf", "allowed"),
    [
        (Policy(), 0, None, False),
        (Policy(allow_plaintext=True), 0, None, True),
        (Policy(), 2, None, True),  # -p 2: an external layer counts as protected
        (Policy(), 1, None, False),  # ssf 1 is integrity only
        (Policy(), 0, 256, True),
        (Policy(allow_plaintext=True, tls_required=True), 56, None, False),
        (Policy(tls_required=True), 0, 256, True),
        # TLS with a NULL cipher (found probing): integrity at most, as -p 0 or -p 1 is;
        # TLS replaces -p once negotiated, so a NULL cipher inside -p 256 is no better
        (Policy(), 0, 0, False),
        (Policy(tls_required=True), 0, 0, False),
        (Policy(), 256, 0, False),
        (Policy(allow_plaintext=True), 0, 0, True),
    ],
)
def test_plaintext_login_policy(
    lab: Lab, policy: Policy, external_ssf: int, tls_ssf: int | None, allowed: bool
) -> None:
    started = None if tls_ssf is None else TLSInfo("TLSv1.2", "x", tls_ssf)
    driven = drive(lab, settings_for_lab(policy=policy), tls=started, external_ssf=external_ssf)
    driven.feed()
    out = driven.feed(b"USER alice\r\n")
    capa = driven.feed(b"CAPA\r\n")
    if allowed:
        assert out.startswith(b"+OK")
        assert b"USER" in capa.split(b"\r\n")
    else:
        assert out.startswith(b"-ERR [AUTH] USER/PASS is only permitted on an encrypted")
        assert b"USER" not in capa.split(b"\r\n")


@pytest.mark.parametrize(("tls_ssf", "paused"), [(None, True), (0, True), (128, False)])
def test_plaintextloginpause_counts_a_null_cipher_as_clear(
    lab: Lab, tls_ssf: int | None, paused: bool
) -> None:
    """A password sent inside TLS with a NULL cipher crossed in clear: it pays the pause."""
    started = None if tls_ssf is None else TLSInfo("TLSv1.2", "x", tls_ssf)
    policy = Policy(allow_plaintext=True)
    settings = settings_for_lab(policy=policy, plaintext_login_pause=5.0)
    driven = drive(lab, settings, tls=started)
    assert b"+OK Mailbox locked and ready" in login(driven)
    pauses = [r for r in driven.requests if isinstance(r, ev.Pause)]
    assert pauses == ([ev.Pause(5.0)] if paused else [])


def test_failed_login_pauses_and_hides_the_reason(lab: Lab) -> None:
    driven = drive(lab, settings_for_lab(failed_login_pause=3.0))
    driven.feed()
    unknown = driven.feed(b"USER nobody\r\nPASS x\r\n")
    wrong = driven.feed(b"USER alice\r\nPASS x\r\n")
    assert unknown == wrong
    pauses = [r for r in driven.requests if isinstance(r, ev.Pause)]
    assert pauses == [ev.Pause(3.0), ev.Pause(3.0)]
    reasons = [n.reason for n in driven.notices if isinstance(n, ev.LoginFailed)]
    assert reasons == ["unknown user", "wrong password"]
    driven.feed(b"USER alice\r\nPASS wonderland\r\n")
    assert len([r for r in driven.requests if isinstance(r, ev.Pause)]) == 2


def test_password_never_appears_in_requests_repr(lab: Lab) -> None:
    driven = drive(lab)
    login(driven)
    text = repr(driven.requests) + repr(driven.notices)
    assert "wonderland" not in text and "redacted" in text


def test_bad_command_budget_closes_the_session(lab: Lab) -> None:
    driven = drive(lab, settings_for_lab(bad_command_limit=2))
    driven.feed()
    out = driven.feed(b"A\r\nB\r\nC\r\nNOOP\r\n")
    assert out == (
        b"-ERR Unrecognized command\r\n-ERR Unrecognized command\r\n"
        b"-ERR Too many bad commands, closing connection\r\n"
    )
    assert driven.closed == "too many bad commands"


def test_an_overlong_line_is_answered_once_and_counted_per_limit(lab: Lab) -> None:
    """One line, one answer (RFC 1939): a 100 KB line was twelve "Line too long" answers,
    and a client counting answers took the second for its NOOP's (found probing). Its
    12 x 8,192 octets still count as bad commands: a second such line meets the limit."""
    driven = drive(lab, settings_for_lab(bad_command_limit=20))
    login(driven)
    line = b"NOOP " + b"x" * 100_000 + b"\r\n"
    out = driven.feed(line + b"NOOP\r\n")
    assert out == b"-ERR Line too long (limit 8192 octets)\r\n+OK\r\n"
    out = driven.feed(line)
    assert out == (
        b"-ERR Line too long (limit 8192 octets)\r\n"
        b"-ERR Too many bad commands, closing connection\r\n"
    )
    assert driven.closed == "too many bad commands"


def test_answers_come_back_one_per_command_in_order(lab: Lab) -> None:
    driven = drive(lab)
    driven.feed()
    script = b"CAPA\r\nUSER alice\r\nPASS wonderland\r\nSTAT\r\nLIST\r\nUIDL\r\nTOP 1 0\r\n"
    script += b"RETR 2\r\nDELE 1\r\nLIST 1\r\nRSET\r\nNOOP\r\nQUIT\r\n"
    out = driven.feed(script)
    statuses = [line for line in out.split(b"\r\n") if STATUS.match(line)]
    assert len(statuses) == script.count(b"\r\n")


def test_login_delay_and_poll_padding(lab: Lab) -> None:
    settings = settings_for_lab(min_poll_seconds=60)
    first = drive(lab, settings)
    first.now = 1000.0
    login(first, "bob", "builder")
    first.feed(b"QUIT\r\n")
    second = drive(lab, settings)
    second.now = 1030.0
    assert login(second, "bob", "builder").endswith(
        b"-ERR [LOGIN-DELAY] Logins must be at least 1 minute apart\r\n"
    )
    assert second.maildrop is None  # released: the next attempt is not [IN-USE]
    third = drive(lab, settings)
    third.now = 1061.0
    assert login(third, "bob", "builder").startswith(b"+OK")


def test_poll_padding_banks_early_logins(lab: Lab) -> None:
    settings = settings_for_lab(min_poll_seconds=60, poll_padding=3)
    results = []
    for second in range(5):
        driven = drive(lab, settings)
        driven.now = 10_000.0 + second
        out = login(driven, "bob", "builder")
        results.append(out.split(b"\r\n")[-2][:3])
        driven.feed(b"QUIT\r\n")
    # padding 3 banks two early logins after a quiet spell (the stored time starts 3
    # intervals back and advances one interval per login), then LOGIN-DELAY applies.
    # Without the padding arithmetic the second login would already be refused.
    assert results == [b"+OK", b"+OK", b"+OK", b"-ER", b"-ER"]


@pytest.mark.parametrize(
    ("padding", "last", "expected"),
    [
        (1, None, 10_000.0),  # no padding: the login time itself
        (1, 9_000.0, 10_000.0),
        (3, None, 9_880.0),  # first login: 3 intervals back, plus one
        (3, 9_000.0, 9_880.0),  # a long quiet spell banks at most 3 intervals
        (3, 9_900.0, 9_960.0),  # inside the bank: one interval per login
    ],
)
def test_login_delay_record(padding: int, last: float | None, expected: float) -> None:
    assert login_delay.next_record(60, padding, 10_000.0, last) == expected
    assert login_delay.next_record(0, padding, 10_000.0, last) is None


def test_a_maildrop_opened_by_another_session_is_in_use(lab: Lab) -> None:
    first = drive(lab)
    login(first, "bob", "builder")
    second = drive(lab)
    out = login(second, "bob", "builder")
    assert out.endswith(b"-ERR [IN-USE] Maildrop is locked by another session\r\n")
    assert second.session.state is State.AUTHORIZATION
    first.feed(b"QUIT\r\n")
    assert login(drive(lab), "bob", "builder").endswith(b"SESSIONID=<sid-1>\r\n")


def test_messages_delivered_during_the_session_are_untouched(lab: Lab, tmp_path: Path) -> None:
    driven = drive(lab)
    login(driven, "bob", "builder")
    late = lab.maildir("bob") / "new" / "1800000000.M9P9.lab"
    late.write_bytes(b"Subject: late\n\nhello\n")
    assert driven.feed(b"STAT\r\n") == b"+OK 3 6000\r\n"
    driven.feed(b"DELE 1\r\nDELE 2\r\nDELE 3\r\nQUIT\r\n")
    assert lab.messages("bob") == [late]


def test_message_renamed_by_another_agent_is_still_found(lab: Lab) -> None:
    driven = drive(lab)
    login(driven, "bob", "builder")
    original = lab.messages("bob")[0]
    renamed = lab.maildir("bob") / "cur" / (original.name + ":2,S")
    original.rename(renamed)
    assert driven.feed(b"RETR 1\r\n").startswith(b"+OK Message follows")
    driven.feed(b"DELE 1\r\nQUIT\r\n")
    assert not renamed.exists()


def test_message_removed_by_another_agent(lab: Lab) -> None:
    driven = drive(lab)
    login(driven, "bob", "builder")
    lab.messages("bob")[0].unlink()
    assert driven.feed(b"RETR 1\r\n") == b"-ERR Message 1 is no longer in the maildrop\r\n"
    assert driven.feed(b"DELE 1\r\nQUIT\r\n") == (
        b"+OK Message 1 deleted\r\n+OK Logging out, 1 message deleted\r\n"
    )


def test_apop_digest_is_checked_against_the_challenge(lab: Lab) -> None:
    driven = drive(lab, token="42.42")
    driven.feed()
    good = hashlib.md5(b"<42.42@lab.test>wonderland", usedforsecurity=False).hexdigest()
    wrong = hashlib.md5(b"<42.43@lab.test>wonderland", usedforsecurity=False).hexdigest()
    assert driven.feed(f"APOP alice {wrong}\r\n".encode()) == b"-ERR [AUTH] Invalid login\r\n"
    assert driven.feed(f"APOP alice {good.upper()}\r\n".encode()).startswith(b"+OK")


def test_resolve_out_of_turn_is_a_driver_bug(lab: Lab) -> None:
    driven = drive(lab)
    with pytest.raises(RuntimeError):
        driven.session.resolve(None)


# --- an external password checker (sasl_pwcheck_method: saslauthd, kerberos5) -----------


@dataclasses.dataclass(frozen=True)
class _Check:
    ok: bool
    reason: str
    unavailable: bool = False


class _Checker:
    """Knows carol/kdc-secret (in no credential file); "down" means the backend is."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.asked: list[tuple[str, str]] = []

    def __call__(self, user: str, password: Secret, /, realm: str = "") -> _Check:
        self.asked.append((user, realm))
        if self.down:
            return _Check(False, "backend down", unavailable=True)
        good = user == "carol" and password.reveal() == b"kdc-secret"
        return _Check(good, "verified" if good else "wrong password")


def _checked(lab: Lab, checker: _Checker, **settings: object) -> Driven:
    authenticator = Authenticator(
        CredentialFile(lab.credentials), FAST_ARGON2, password_checker=checker
    )
    settings.setdefault("sasl_mechanisms", ("PLAIN", "LOGIN"))
    driven = drive(lab, settings_for_lab(**settings), authenticator=authenticator)
    driven.feed()
    return driven


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def test_no_verdict_from_the_checker_is_a_temporary_failure(lab: Lab) -> None:
    """USER/PASS, PLAIN and LOGIN: -ERR [SYS/TEMP], no failed-login pause, an audit line."""
    driven = _checked(lab, _Checker(down=True), failed_login_pause=3.0)
    temp = b"-ERR [SYS/TEMP] Unable to check the password now, try again later\r\n"
    assert driven.feed(b"USER alice\r\nPASS wonderland\r\n").endswith(temp)
    assert driven.feed(b"AUTH PLAIN " + _b64("\0alice\0wonderland") + b"\r\n") == temp
    out = driven.feed(b"AUTH LOGIN " + _b64("alice") + b"\r\n" + _b64("wonderland") + b"\r\n")
    assert out.endswith(temp)
    assert not [r for r in driven.requests if isinstance(r, ev.Pause)]
    reasons = [n.reason for n in driven.notices if isinstance(n, ev.LoginFailed)]
    assert reasons == ["backend down"] * 3


def test_a_keytab_that_cannot_check_tickets_costs_the_failed_login_pause(
    lab: Lab, tmp_path: Path
) -> None:
    """-ERR [SYS/TEMP] and no verdict, as for a checker that is down, but after the pause a
    refused ticket costs: any client can have this answer at will (a ticket sealed under a
    kvno the keytab lacks; here the keytab is gone), and without the pause it made a record
    and an error line as fast as it could send tickets."""
    settings = settings_for_lab(
        sasl_mechanisms=("GSSAPI",),
        keytab=str(tmp_path / "gone.keytab"),
        failed_login_pause=3.0,
    )
    driven = drive(lab, settings)
    driven.feed()
    out = driven.feed(b"AUTH GSSAPI " + base64.b64encode(b"\x60\x03any") + b"\r\n")
    assert out == b"-ERR [SYS/TEMP] Unable to check the credentials now, try again later\r\n"
    assert [r for r in driven.requests if isinstance(r, ev.Pause)] == [ev.Pause(3.0)]
    failed = [n for n in driven.notices if isinstance(n, ev.LoginFailed)]
    assert len(failed) == 1 and failed[0].unavailable, failed


def test_a_user_the_checker_vouches_for_needs_no_credential_file_entry(lab: Lab) -> None:
    lab.reset_maildrop("carol")
    for login in (
        b"USER carol\r\nPASS kdc-secret\r\n",
        b"AUTH PLAIN " + _b64("\0carol\0kdc-secret") + b"\r\n",
    ):
        driven = _checked(lab, _Checker())
        assert b"+OK Mailbox locked and ready" in driven.feed(login)
        driven.feed(b"QUIT\r\n")
    driven = _checked(lab, _Checker())
    assert driven.feed(b"USER carol\r\nPASS wrong\r\n").endswith(b"-ERR [AUTH] Invalid login\r\n")


def test_the_login_realm_reaches_the_checker(lab: Lab) -> None:
    """loginrealms drops the realm from the user name; the checker still learns it, as the
    client spelled it (kerberos5 asks that realm's KDC)."""
    checker = _Checker()
    rules = IdentityRules(loginrealms=frozenset({"example.org"}))
    driven = _checked(lab, checker, identity=rules)
    driven.feed(b"USER Carol@EXAMPLE.ORG\r\nPASS x\r\n")
    driven.feed(b"AUTH PLAIN " + _b64("\0carol@Example.Org\0x") + b"\r\n")
    driven.feed(b"USER carol@other.org\r\nPASS x\r\n")
    assert checker.asked == [
        ("carol", "EXAMPLE.ORG"),
        ("carol", "Example.Org"),
        ("carol@other.org", ""),
    ]


@pytest.mark.parametrize(
    "spelling",
    [
        b"AGFsaWNlAHdvbmRlcmxhbmQ==",  # padding beyond the last group
        b"AGFsaWNlAHdvbmRlcmxhbmQ",  # a group cut short
        b"AGFsaWNlAHdvbmRlcmxhbmR=",  # stray bits in the last group
    ],
)
def test_base64_is_taken_only_in_its_canonical_spelling(lab: Lab, spelling: bytes) -> None:
    """RFC 4648 §3.5, as Cyrus's sasl_decode64: b64decode(validate=True) checks the
    alphabet only, and took all three for "\\0alice\\0wonderland"."""
    driven = drive(lab, settings_for_lab(sasl_mechanisms=("PLAIN",)))
    driven.feed()
    assert driven.feed(b"AUTH PLAIN " + spelling + b"\r\n") == (
        b"-ERR [AUTH] Invalid base64 in the initial response\r\n"
    )
    assert driven.feed(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert driven.feed(spelling + b"\r\n") == b"-ERR [AUTH] Invalid base64 in the response\r\n"
    canonical = base64.b64encode(b"\0alice\0wonderland")
    assert driven.feed(b"AUTH  PLAIN " + canonical + b"\r\n").startswith(b"+OK")


def test_good_credentials_used_under_a_name_they_may_not_use_are_not_a_wrong_password(
    lab: Lab,
) -> None:
    """PLAIN with alice's right password asking for bob, or for a name the identity rules
    refuse: the login fails as ever ([AUTH], the failed-login pause), but the notice says
    the credentials were good, so the audit trail logs it as refused, not as a guessed
    password fail2ban would count (Cyrus: SASL(-14), an authorization failure)."""
    driven = drive(lab, settings_for_lab(sasl_mechanisms=("PLAIN",)))
    driven.feed()
    for authzid in ("bob", "bob/x"):
        out = driven.feed(b"AUTH PLAIN " + _b64(f"{authzid}\0alice\0wonderland") + b"\r\n")
        assert out == b"-ERR [AUTH] Invalid login\r\n"
    out = driven.feed(b"AUTH PLAIN " + _b64("bob\0alice\0wrong") + b"\r\n")
    assert out == b"-ERR [AUTH] Invalid login\r\n"
    failed = [(n.reason, n.authenticated) for n in driven.notices if isinstance(n, ev.LoginFailed)]
    assert failed == [
        ("may not act as bob", True),
        ("bad identity", True),
        ("wrong password", False),
    ]


@pytest.mark.parametrize(
    ("seconds", "advertised"),
    [
        (-1, b"EXPIRE NEVER"),
        (0, b"EXPIRE 0"),
        (12 * 3600, b"EXPIRE 1"),
        (86400, b"EXPIRE 1"),
        (86401, b"EXPIRE 2"),
    ],
)
def test_capa_expire_counts_part_of_a_day_as_a_day(
    lab: Lab, seconds: int, advertised: bytes
) -> None:
    """RFC 2449 §6.7: EXPIRE 0 means "do not leave mail on the server"; a popexpiretime of
    12h said so (found probing). Only 0 says it now."""
    driven = drive(lab, settings_for_lab(expire_seconds=seconds))
    driven.feed()
    assert advertised in driven.feed(b"CAPA\r\n").split(b"\r\n")


def test_stat_follows_dele_rset_and_a_corrected_size(lab: Lab) -> None:
    """STAT's totals are kept once known, not summed over the maildrop at each STAT (found
    probing: 32 pipelined STATs in a big maildrop held the worker): they must still follow
    every DELE and RSET (a size corrected at RETR: tests/server/test_retrieve_integrity.py)."""
    driven = drive(lab)
    login(driven, "bob", "builder")
    sizes = [int(line.split()[1]) for line in driven.feed(b"LIST\r\n").split(b"\r\n")[1:4]]
    assert driven.feed(b"STAT\r\n") == f"+OK 3 {sum(sizes)}\r\n".encode()
    driven.feed(b"DELE 2\r\n")
    assert driven.feed(b"STAT\r\n") == f"+OK 2 {sizes[0] + sizes[2]}\r\n".encode()
    driven.feed(b"DELE 1\r\n")
    assert driven.feed(b"STAT\r\n") == f"+OK 1 {sizes[2]}\r\n".encode()
    driven.feed(b"RSET\r\n")
    assert driven.feed(b"STAT\r\n") == f"+OK 3 {sum(sizes)}\r\n".encode()
    driven.feed(b"DELE 3\r\nRSET\r\nDELE 1\r\n")
    assert driven.feed(b"STAT\r\n") == f"+OK 2 {sizes[1] + sizes[2]}\r\n".encode()
    driven.feed(b"RSET\r\nRSET\r\n")
    assert driven.feed(b"STAT\r\n") == f"+OK 3 {sum(sizes)}\r\n".encode()
    driven.feed(b"QUIT\r\n")
