"""RFC 4616 (PLAIN) and RFC 1939 §7 (APOP) vectors, through the mechanism and through the
session (where the authorization identity and APOP are decided)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pop3d.protocol import events as ev
from pop3d.protocol.states import State
from pop3d.sasl.mechanism import Failure, Success
from pop3d.sasl.plain import Plain
from tests.support import sasl_run, sasl_vectors
from tests.support.drive import drive, settings_for_lab
from tests.support.lab import Lab

CASES = sasl_vectors.load("plain_apop.json")
PLAIN = [c for c in CASES if c.mechanism == "PLAIN"]
APOP = [c for c in CASES if c.mechanism == "APOP"]


@pytest.mark.parametrize("case", PLAIN, ids=[c.name for c in PLAIN])
def test_plain_vectors(case: sasl_vectors.Case, tmp_path: Path) -> None:
    result = sasl_run.run(Plain(), case, sasl_run.authenticator_for(tmp_path, case))
    assert isinstance(result, Success if case.outcome == "success" else Failure)
    if isinstance(result, Success):
        assert (result.authcid, result.authzid) == (case.user, case.authzid)


@pytest.mark.parametrize("admin", [False, True])
def test_plain_authzid_is_decided_by_the_session(tmp_path: Path, admin: bool) -> None:
    """Kurt may act as Ursel only if Kurt is an admin (or a proxy server)."""
    lab = Lab(tmp_path / "lab", users={"kurt": "xipj3plmq", "ursel": "other"}).create()
    settings = settings_for_lab(
        sasl_mechanisms=("PLAIN",),
        proxy_authorizers=frozenset({"kurt"}) if admin else frozenset(),
    )
    driven = drive(lab, settings)
    driven.feed()
    out = driven.feed(b"AUTH PLAIN VXJzZWwAS3VydAB4aXBqM3BsbXE=\r\n")
    if admin:
        assert out.startswith(b"+OK Mailbox locked and ready")
        assert driven.session.user == "ursel"
        # the audit trail names who authenticated, not only whose maildrop (found probing)
        assert [n for n in driven.notices if isinstance(n, ev.LoginSucceeded)] == [
            ev.LoginSucceeded("ursel", "AUTH PLAIN", None, authenticated_as="kurt")
        ]
    else:
        assert out == b"-ERR [AUTH] Invalid login\r\n"
        assert driven.session.state is State.AUTHORIZATION


@pytest.mark.parametrize("case", APOP, ids=[c.name for c in APOP])
def test_apop_vectors(case: sasl_vectors.Case, tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab", users={case.user: case.password}).create()
    settings = settings_for_lab(servername=case.server["servername"])
    driven = drive(lab, settings, token=case.server["nonce"])
    (server_kind, challenge), (client_kind, response) = case.steps
    assert (server_kind, client_kind) == ("S", "C")
    assert driven.feed().endswith(b" " + challenge + b"\r\n")
    out = driven.feed(b"APOP " + response + b"\r\n")
    assert out.startswith(b"+OK" if case.outcome == "success" else b"-ERR [AUTH]")
