"""fetchmail against a real pop3d-master: USER/PASS and APOP, --keep and deletion, UIDL
bookkeeping across runs (--uidl), STLS and implicit TLS with certificate checks.

fetchmail delivers through ``--mda 'cat >> OUT'``: each message arrives with a Received:
header in front and LF line ends. Exit codes (fetchmail(1)): 0 mail fetched, 1 no mail,
3 authentication failed."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.interop.conftest import Served, run, uid
from tests.support.lab import make_certificates

pytestmark = pytest.mark.interop

FETCHED = 0
NO_MAIL = 1
AUTH_FAILED = 3
FETCH_COMMAND = re.compile(r"POP3> (?:RETR|TOP) (\d+)")
RECEIVED = re.compile(rb"^Received: from ", re.MULTILINE)
MESSAGE_ID = re.compile(rb"^Message-ID: <(\w+)\.(\d+)@lab\.test>$", re.MULTILINE)


@dataclass
class Run:
    code: int
    log: str  # fetchmail's -v output, stdout and stderr
    delivered: bytes  # everything the MDA received so far


class Fetchmail:
    """One fetchmail "installation": a home, an rc file, an id file and an MDA output file
    that persist across runs, as they would for a user polling with cron."""

    def __init__(self, home: Path, poll: str, port: int, user: str, password: str) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.rc = home / "fetchmailrc"
        self.ids = home / "fetchids"
        self.out = home / "delivered.mbox"
        self.rc.write_text(
            f'poll {poll} port {port} user "{user}" there with password "{password}" '
            'is "root" here\n'
        )
        self.rc.chmod(0o600)

    def __call__(self, *options: str) -> Run:
        argv = [
            "fetchmail",
            "-f",
            str(self.rc),
            "-i",
            str(self.ids),
            "--pidfile",
            str(self.home / "fetchmail.pid"),
            "--nosyslog",
            "-v",
            "--mda",
            f"cat >> {shlex.quote(str(self.out))}",
            *options,
        ]
        env = dict(os.environ, HOME=str(self.home), LC_ALL="C", LANG="C")
        done = run(argv, env=env)
        delivered = self.out.read_bytes() if self.out.exists() else b""
        log = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
        return Run(done.returncode, log, delivered)


def message_ids(delivered: bytes) -> list[tuple[str, int]]:
    return [(user.decode(), int(n)) for user, n in MESSAGE_ID.findall(delivered)]


def as_delivered(paths: list[Path]) -> list[bytes]:
    """Stored messages as an MDA gets them from fetchmail: LF line ends, final newline."""
    out = []
    for path in paths:
        data = path.read_bytes().replace(b"\r\n", b"\n")
        out.append(data if data.endswith(b"\n") else data + b"\n")
    return out


def assert_all_delivered(result: Run, messages: list[bytes]) -> None:
    """``messages``: :func:`as_delivered` of each stored message, read before the run."""
    assert len(RECEIVED.findall(result.delivered)) == len(messages)
    for number, message in enumerate(messages, 1):
        assert message in result.delivered, number


def test_user_pass_keep(tmp_path: Path, served: Served) -> None:
    paths = served.lab.messages("alice")
    stored = as_delivered(paths)
    fetch = Fetchmail(tmp_path / "fm", "127.0.0.1", served.port, "alice", "wonderland")
    result = fetch("-p", "POP3", "--auth", "password", "--sslproto", "", "--keep")
    assert result.code == FETCHED, result.log
    # the server offers STLS on this port; --sslproto '' tells fetchmail not to use it
    assert "POP3> STLS" not in result.log
    assert "POP3> USER alice" in result.log
    assert "POP3< +OK User name accepted, password please" in result.log
    assert "POP3< +OK 7 28700" in result.log
    assert "7 messages for alice at 127.0.0.1 (28700 octets)." in result.log
    for number, size in ((1, 1000), (2, 700), (7, 300)):
        assert f"reading message alice@127.0.0.1:{number} of 7 ({size} octets)" in result.log
    assert message_ids(result.delivered) == [("alice", n) for n in range(1, 8)]
    assert_all_delivered(result, stored)
    assert "POP3< +OK Logging out" in result.log
    assert "POP3> DELE" not in result.log
    assert served.lab.messages("alice") == paths


def test_apop(tmp_path: Path, served: Served) -> None:
    fetch = Fetchmail(tmp_path / "fm", "127.0.0.1", served.port, "bob", "builder")
    result = fetch("-p", "APOP", "--sslproto", "", "--keep")
    assert result.code == FETCHED, result.log
    assert re.search(r"POP3> APOP bob [0-9a-f]{32}\n", result.log), result.log
    assert "POP3> USER" not in result.log
    assert message_ids(result.delivered) == [("bob", 1), ("bob", 2), ("bob", 3)]
    assert_all_delivered(result, as_delivered(served.lab.messages("bob")))
    assert "] bob APOP" in served.log()


def test_without_keep_messages_are_deleted(tmp_path: Path, served: Served) -> None:
    stored = as_delivered(served.lab.messages("bob"))
    fetch = Fetchmail(tmp_path / "fm", "127.0.0.1", served.port, "bob", "builder")
    result = fetch("-p", "POP3", "--auth", "password", "--sslproto", "")
    assert result.code == FETCHED, result.log
    for number in (1, 2, 3):
        assert f"POP3> DELE {number}" in result.log
        assert f"POP3< +OK Message {number} deleted" in result.log
    assert "POP3< +OK Logging out, 3 messages deleted" in result.log
    assert message_ids(result.delivered) == [("bob", 1), ("bob", 2), ("bob", 3)]
    assert_all_delivered(result, stored)
    assert served.lab.messages("bob") == []
    # alice's maildrop is untouched
    assert len(served.lab.messages("alice")) == 7

    again = fetch("-p", "POP3", "--auth", "password", "--sslproto", "")
    assert again.code == NO_MAIL, again.log
    assert "POP3< +OK 0 0" in again.log


def test_uidl_keep_fetches_only_new_messages(tmp_path: Path, served: Served) -> None:
    fetch = Fetchmail(tmp_path / "fm", "127.0.0.1", served.port, "alice", "wonderland")
    options = ("-p", "POP3", "--auth", "password", "--sslproto", "", "--uidl", "--keep")

    first = fetch(*options)
    assert first.code == FETCHED, first.log
    assert message_ids(first.delivered) == [("alice", n) for n in range(1, 8)]
    ids = fetch.ids.read_text()
    for path in served.lab.messages("alice"):
        assert f"alice@127.0.0.1 {uid(path)}" in ids

    second = fetch(*options)
    assert second.code == NO_MAIL, second.log
    assert "7 messages (7 seen) for alice at 127.0.0.1" in second.log
    assert FETCH_COMMAND.findall(second.log) == []
    assert second.delivered == first.delivered

    new = b"From: Lab Sender <sender@lab.test>\nTo: alice@lab.test\nSubject: new mail\n"
    new += b"Message-ID: <alice.8@lab.test>\n\n.a line with a leading dot\nnew body\n"
    (served.lab.maildir("alice") / "new" / "1800000000.M9P9.lab").write_bytes(new)

    third = fetch(*options)
    assert third.code == FETCHED, third.log
    assert "8 messages (7 seen) for alice at 127.0.0.1" in third.log
    assert "reading message alice@127.0.0.1:8 of 8 (" in third.log
    # with --keep fetchmail may read a message with TOP n 99999999 instead of RETR n
    assert FETCH_COMMAND.findall(third.log) == ["8"], third.log
    added = third.delivered[len(first.delivered) :]
    assert message_ids(added) == [("alice", 8)]
    assert added.endswith(new)
    assert "alice@127.0.0.1 1800000000.M9P9.lab" in fetch.ids.read_text()
    assert len(served.lab.messages("alice")) == 8


def test_wrong_password(tmp_path: Path, served: Served) -> None:
    fetch = Fetchmail(tmp_path / "fm", "127.0.0.1", served.port, "alice", "nope")
    result = fetch("-p", "POP3", "--auth", "password", "--sslproto", "", "--keep")
    assert result.code == AUTH_FAILED, result.log
    assert "POP3< -ERR [AUTH] Invalid login" in result.log
    assert result.delivered == b""


def test_stls_with_certificate_check(tmp_path: Path, served: Served) -> None:
    port = served.port
    fetch = Fetchmail(tmp_path / "fm", "localhost", port, "alice", "wonderland")
    result = fetch(
        "-p",
        "POP3",
        "--sslproto",
        "TLS1.2+",
        "--sslcertck",
        "--sslcertfile",
        str(served.ca),
        "--keep",
    )
    assert result.code == FETCHED, result.log
    log = result.log
    assert "POP3> STLS" in log
    assert "POP3< +OK Begin TLS negotiation now" in log
    assert "localhost: upgrade to TLS succeeded." in log
    assert re.search(r"SSL/TLS: using protocol TLSv1\.[23]", log), log
    # the CAPA sent inside TLS no longer lists STLS
    inside = log[log.index("upgrade to TLS succeeded.") :]
    assert "POP3> CAPA" in inside
    assert "POP3< STLS" not in inside
    assert inside.index("POP3> CAPA") < inside.index("POP3> USER alice")
    assert message_ids(result.delivered) == [("alice", n) for n in range(1, 8)]
    assert_all_delivered(result, as_delivered(served.lab.messages("alice")))
    assert "] alice plaintext" in served.log()


def test_implicit_tls(tmp_path: Path, served: Served) -> None:
    port = served.pop3s
    fetch = Fetchmail(tmp_path / "fm", "localhost", port, "bob", "builder")
    result = fetch("-p", "POP3", "--ssl", "--sslcertck", "--sslcertfile", str(served.ca), "--keep")
    assert result.code == FETCHED, result.log
    assert re.search(r"SSL/TLS: using protocol TLSv1\.[23]", result.log), result.log
    assert "POP3> STLS" not in result.log
    assert "POP3< STLS" not in result.log
    assert message_ids(result.delivered) == [("bob", 1), ("bob", 2), ("bob", 3)]
    assert_all_delivered(result, as_delivered(served.lab.messages("bob")))


def test_certificate_from_another_ca_is_refused(tmp_path: Path, served: Served) -> None:
    other = make_certificates(tmp_path / "other")
    port = served.pop3s
    fetch = Fetchmail(tmp_path / "fm", "localhost", port, "bob", "builder")
    result = fetch("-p", "POP3", "--ssl", "--sslcertck", "--sslcertfile", str(other.ca), "--keep")
    assert result.code not in (FETCHED, NO_MAIL), result.log
    assert "POP3> USER" not in result.log
    assert result.delivered == b""
    assert len(served.lab.messages("bob")) == 3
