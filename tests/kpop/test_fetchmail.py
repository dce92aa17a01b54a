"""fetchmail -p KPOP (the one living KPOP client) through the harness in
tests/support/fetchmail_kpop.py, against the throwaway server of tests/support/kpop_server.py:
the real handshake and MIT acceptor, then a canned POP3 dialogue. The same harness will
point at pop3d itself once the driver runs the handshake."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from pop3d.kerberos.mit import Acceptor
from pop3d.kpop.handshake import Authenticated, Refused
from tests.support.fetchmail_kpop import (
    AUTH_FAILED,
    FETCHED,
    NO_MAIL,
    fetchmail_kpop,
    services_file,
)
from tests.support.kerberos import Realm
from tests.support.kpop_server import CannedKpopServer

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not shutil.which("fetchmail"), reason="fetchmail is not installed"),
]

MESSAGES = [
    b"From: a@example.com\nSubject: one\n\nfirst\n.leading dot\n",
    b"Subject: two\n\nsecond\n",
    b"Subject: three\n\nthird\n",
]
RECEIVED = re.compile(rb"^Received: from ", re.MULTILINE)


@pytest.fixture
def env(ccache: Callable[[str], str], krb5_env: Realm) -> dict[str, str]:
    return {"KRB5_CONFIG": str(krb5_env.krb5_conf), "KRB5CCNAME": ccache("alice")}


def test_fetchmail_fetches_everything_then_finds_nothing(
    acceptor: Acceptor, env: dict[str, str], tmp_path: Path
) -> None:
    services_before = Path("/etc/services").read_bytes()
    with CannedKpopServer(acceptor.verify, MESSAGES) as server:
        first = fetchmail_kpop(port=server.port, user="alice", env=env, home=tmp_path / "fm")
        second = fetchmail_kpop(port=server.port, user="alice", env=env, home=tmp_path / "fm")
    assert first.code == FETCHED, first.log
    assert len(RECEIVED.findall(first.delivered)) == 3
    for message in MESSAGES:
        assert message in first.delivered
    assert second.code == NO_MAIL, second.log
    session = server.sessions[0]
    assert session.outcome is not None
    assert session.outcome.result == Authenticated("alice@KRBTEST.COM", "KRBTEST.COM", True)
    assert session.commands[session.commands.index(b"USER alice") + 1] == b"PASS krb_ticket"
    assert Path("/etc/services").read_bytes() == services_before  # never touched


def test_fetchmail_reports_our_krb_error(
    krb5_env: Realm, env: dict[str, str], tmp_path: Path
) -> None:
    wrong_host = Acceptor(keytab=str(krb5_env.keytab), host="mail.example.com")
    with CannedKpopServer(wrong_host.verify, MESSAGES) as server:
        run = fetchmail_kpop(port=server.port, user="alice", env=env, home=tmp_path / "fm")
    assert run.code not in {FETCHED, NO_MAIL}
    assert "Server rejected authentication" in run.log
    assert "KPOP authentication failed" in run.log
    assert str(krb5_env.keytab) not in run.log  # MIT's own text would name it
    assert run.delivered == b""
    assert server.sessions[0].outcome is not None
    assert isinstance(server.sessions[0].outcome.result, Refused)


def test_user_must_be_the_tickets_user(
    acceptor: Acceptor, env: dict[str, str], tmp_path: Path
) -> None:
    with CannedKpopServer(acceptor.verify, MESSAGES) as server:
        run = fetchmail_kpop(port=server.port, user="bob", env=env, home=tmp_path / "fm")
    assert run.code == AUTH_FAILED, run.log
    assert run.delivered == b""


def test_the_private_services_file(tmp_path: Path) -> None:
    text = services_file(tmp_path, 40123).read_text()
    assert [line for line in text.splitlines() if line.startswith("kpop")] == [
        "kpop\t\t40123/tcp\t\t\t# KPOP (test)"
    ]
    assert "pop3\t\t110/tcp" in text  # the rest of the machine's file is kept
