"""Kerberos logins the realm proved and the server then refused, through a real
pop3d-master and a real KDC (k5test): each is ``result=<refused>`` under the principal's
user, never the ``SASL(-13)`` fail2ban counts as a guessed password."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sasl.kerberos_client import GssapiClient, initiator
from tests.server.test_audit import FAIL2BAN
from tests.support.kerberos import Realm, kerberos_realm
from tests.support.lab import Lab, Server, start_server

__all__ = ["kerberos_realm"]


@pytest.fixture(scope="module")
def server(kerberos_realm: Realm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``pop3`` as configured by default; ``pop3layer`` asks a layer of SSF 56 to 100,
    which an aes256 context (SSF 256 for confidentiality, 1 for integrity) cannot give."""
    root = tmp_path_factory.mktemp("kerberos-refusals")
    keytab = kerberos_realm.service_keytab(root)
    extra = (
        f"sasl_keytab: {keytab}\n"
        "pop3layer_sasl_minimum_layer: 56\npop3layer_sasl_maximum_layer: 100\n"
    )
    lab = Lab(root / "lab", extra_config=extra).create()
    lab.config.write_text(
        lab.config.read_text().replace("servername: lab.test", "servername: localhost")
    )
    env = {"KRB5_CONFIG": str(kerberos_realm.krb5_conf), "KRB5RCACHEDIR": str(root)}
    running = start_server(lab, {"pop3": "", "pop3layer": ""}, env=env)
    try:
        yield running
    finally:
        assert running.stop() == 0
        assert "Traceback" not in running.log_text()


@pytest.fixture
def ccache(kerberos_realm: Realm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KRB5_CONFIG", str(kerberos_realm.krb5_conf))
    path = tmp_path / "alice.cc"
    kerberos_realm.kinit("alice", path)
    return path


def record_of(server: Server, port: int) -> str:
    """The badlogin record of the connection from our ``port``, once its end is logged."""
    peer = f"peer=<127.0.0.1:{port}>"
    for _attempt in range(200):
        log = server.log_text()
        if f"peer=127.0.0.1:{port} ended:" in log:
            records = [e for e in log.splitlines() if "badlogin:" in e and peer in e]
            assert len(records) == 1, records
            return records[0]
        time.sleep(0.05)
    raise AssertionError(f"no end logged for 127.0.0.1:{port}")


def test_no_layer_within_the_minimum_and_maximum_is_a_refusal(
    server: Server, ccache: Path, kerberos_realm: Realm
) -> None:
    """Found probing: the exchange completed, then -ERR [AUTH] and a SASL(-13) failure; a
    policy refusal after the realm vouched for alice. The client's answer is every
    refusal's."""
    client = GssapiClient(initiator(ccache))
    with socket.create_connection(("127.0.0.1", server.ports["pop3layer"]), timeout=15) as sock:
        port = sock.getsockname()[1]
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(b"AUTH GSSAPI " + base64.b64encode(client.initial()) + b"\r\n")
        while (answer := reader.readline()).startswith(b"+ "):
            reply = client.respond(base64.b64decode(answer[2:]))
            sock.sendall(base64.b64encode(reply) + b"\r\n")
        assert answer == b"-ERR [AUTH] Invalid login\r\n"
        sock.sendall(b"QUIT\r\n")
        assert reader.readline().startswith(b"+OK")
    assert client.offered is None  # refused before the offer
    record = record_of(server, port)
    assert " GSSAPI (alice) [no security layer within " in record, record
    assert "result=<refused>" in record and FAIL2BAN.search(record) is None


@pytest.mark.parametrize("at", ["mutual-authentication token", "layer offer"])
def test_a_cancel_after_the_realm_proved_the_user_is_a_refusal(
    server: Server, ccache: Path, kerberos_realm: Realm, at: str
) -> None:
    """Found probing: '*' at the layer offer, the context established and alice proven, was
    'GSSAPI (-) [cancelled] result=<abandoned>', the principal lost. As a cancel after
    SCRAM's v=: a refusal under alice, naming the principal, nothing fail2ban counts."""
    client = GssapiClient(initiator(ccache))
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        port = sock.getsockname()[1]
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(b"AUTH GSSAPI " + base64.b64encode(client.initial()) + b"\r\n")
        challenges = 0
        while (answer := reader.readline()).startswith(b"+ "):
            challenges += 1
            if (at == "layer offer") == (challenges == 2):
                sock.sendall(b"*\r\n")
                continue
            reply = client.respond(base64.b64decode(answer[2:]))
            sock.sendall(base64.b64encode(reply) + b"\r\n")
        assert answer == b"-ERR [AUTH] Authentication cancelled\r\n"
        sock.sendall(b"QUIT\r\n")
        assert reader.readline().startswith(b"+OK")
    assert challenges == (2 if at == "layer offer" else 1)
    record = record_of(server, port)
    assert " GSSAPI (alice) [cancelled after the credentials were proven] " in record, record
    assert f"authid=<{kerberos_realm.principal('alice')}> result=<refused>" in record
    assert FAIL2BAN.search(record) is None
