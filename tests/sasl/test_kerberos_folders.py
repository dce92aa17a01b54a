"""popsubfolders and Kerberos: a folder comes from the authzid (or USER), never from the
name the realm vouched for. Found probing: with popsubfolders on, principal
``alice+@REALM`` logged in to alice's INBOX by GSSAPI, and ``alice+work@REALM`` to her
folder ``.work``, though neither is alice (KPOP refused both)."""

from __future__ import annotations

import base64
import socket
import subprocess
from pathlib import Path

import pytest

from tests.sasl.kerberos_client import GssapiClient, initiator
from tests.support.kerberos import PASSWORDS, Realm
from tests.support.lab import Lab, start_server


def _login(port: int, client: GssapiClient) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(b"AUTH GSSAPI " + base64.b64encode(client.initial()) + b"\r\n")
        while True:
            line = reader.readline().rstrip(b"\r\n")
            if not line.startswith(b"+ "):
                return line
            answer = base64.b64encode(client.respond(base64.b64decode(line[2:])))
            sock.sendall(answer + b"\r\n")


def test_a_principal_brings_no_folder(
    kerberos_realm: Realm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    realm = kerberos_realm
    keytab = realm.service_keytab(tmp_path)
    lab = Lab(
        tmp_path / "lab", extra_config=f"sasl_keytab: {keytab}\npopsubfolders: yes\n"
    ).create()
    lab.config.write_text(
        lab.config.read_text().replace("servername: lab.test", "servername: localhost")
    )
    work = lab.maildir("alice") / ".work"
    for sub in ("tmp", "new", "cur"):
        (work / sub).mkdir(parents=True)
    env = {k: realm.env[k] for k in ("KRB5_CONFIG", "KRB5RCACHEDIR")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    server = start_server(lab, env=env)
    try:
        for principal in ("alice", "alice+", "alice+work"):
            ccache = tmp_path / f"{principal}.cc"
            if principal != "alice":
                realm.k5.run_kadminl(f"addprinc -pw pw-{principal} {principal}")
            subprocess.run(
                ["kinit", realm.principal(principal)],
                input=PASSWORDS.get(principal, f"pw-{principal}").encode() + b"\n",
                env=dict(realm.env, KRB5CCNAME=f"FILE:{ccache}"),
                check=True,
                capture_output=True,
            )
            answer = _login(server.port, GssapiClient(ctx=initiator(ccache)))
            if principal == "alice":
                assert answer.startswith(b"+OK Mailbox locked and ready"), answer
            else:
                assert answer == b"-ERR [AUTH] Invalid login", (principal, answer)
        assert "principal names a folder" in server.log_text()
    finally:
        server.stop()
