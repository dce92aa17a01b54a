"""A key rotated at the KDC and not in the keytab (``kadmin cpw -randkey pop/<host>``, the
keytab left as it was), through a real pop3d-master and a real KDC (k5test): GSSAPI,
GSS-SPNEGO, USER/PASS under ``sasl_pwcheck_method: kerberos5`` and KPOP each get no
verdict (``-ERR [SYS/TEMP]``; KPOP the KRB-ERROR MIT's recvauth sends), logged
``result=<unavailable>`` without ``SASL(-13)`` and with an error line naming the kvno; once
the new key is added to the keytab, all four log in. Found probing: every Kerberos login
during a rotation was a failure fail2ban counted, so it banned every Kerberos user."""

from __future__ import annotations

import base64
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pop3d.sasl.kerberos import SPNEGO
from tests.sasl.kerberos_client import GssapiClient, initiator
from tests.server.test_audit import FAIL2BAN
from tests.support.kerberos import ROTATED_HOST, Realm, kerberos_realm
from tests.support.lab import Lab, start_server
from tests.support.sendauth import sendauth

__all__ = ["kerberos_realm"]

BADKEYVER = 44  # KRB_AP_ERR_BADKEYVER
SERVICE = f"pop@{ROTATED_HOST}"
NO_VERDICT = b"-ERR [SYS/TEMP] Unable to check the %s now, try again later\r\n"


def authenticate(
    port: int, mechanism: str, first: bytes, respond: Callable[[bytes], bytes]
) -> bytes:
    """AUTH ``mechanism`` to its end: the final +OK or -ERR line."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(f"AUTH {mechanism} ".encode() + base64.b64encode(first) + b"\r\n")
        while (answer := reader.readline()).startswith(b"+ "):
            sock.sendall(base64.b64encode(respond(base64.b64decode(answer[2:]))) + b"\r\n")
        return answer


def gssapi_login(port: int, ccache: Path) -> bytes:
    client = GssapiClient(initiator(ccache, service=SERVICE))
    return authenticate(port, "GSSAPI", client.initial(), client.respond)


def spnego_login(port: int, ccache: Path) -> bytes:
    client = initiator(ccache, service=SERVICE, mech=SPNEGO)
    first = client.step()
    assert first is not None
    return authenticate(port, "GSS-SPNEGO", first, lambda token: client.step(token) or b"")


def password_login(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(b"USER alice\r\nPASS wonderland\r\n")
        assert reader.readline().startswith(b"+OK")
        return bytes(reader.readline())


def kpop_login(port: int, ccache: Path) -> int | None:
    """The KRB-ERROR's code the server answered the AP-REQ with; None when it took it."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.settimeout(None)  # MIT's sendauth reads the descriptor itself
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 15, 0))
        result = sendauth(sock, f"FILE:{ccache}", host=ROTATED_HOST)
    assert result.server_error is not None or result.code == 0, result
    return result.server_error


def test_a_key_rotated_at_the_kdc_and_not_in_the_keytab(
    kerberos_realm: Realm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRB5_CONFIG", str(kerberos_realm.krb5_conf))
    keytab = kerberos_realm.stale_keytab(tmp_path)
    lab = Lab(
        tmp_path / "lab",
        extra_config=f"sasl_keytab: {keytab}\npop3k5_sasl_pwcheck_method: kerberos5\n",
    ).create()
    lab.config.write_text(
        lab.config.read_text().replace("servername: lab.test", f"servername: {ROTATED_HOST}")
    )
    ccache = tmp_path / "alice.cc"
    kerberos_realm.kinit("alice", ccache)  # after the rotation: tickets of the new kvno
    env = {"KRB5_CONFIG": str(kerberos_realm.krb5_conf), "KRB5RCACHEDIR": str(tmp_path)}
    server = start_server(lab, {"pop3": "", "pop3k5": "", "kpop": "-k"}, env=env)
    try:
        pop3, pop3k5 = server.ports["pop3"], server.ports["pop3k5"]
        assert gssapi_login(pop3, ccache) == NO_VERDICT % b"credentials"
        assert spnego_login(pop3, ccache) == NO_VERDICT % b"credentials"
        assert password_login(pop3k5) == NO_VERDICT % b"password"
        assert kpop_login(server.ports["kpop"], ccache) == BADKEYVER
        # KPOP's record is written after its KRB-ERROR is sent: the client can be first
        deadline = time.monotonic() + 15
        while (log := server.log_text()).count("badlogin:") < 4:
            assert time.monotonic() < deadline, log
            time.sleep(0.05)

        # The operator adds the new key (the old one stays, for tickets issued before)
        kerberos_realm.k5.run_kadminl(f"ktadd -k {keytab} -norandkey pop/{ROTATED_HOST}")
        assert gssapi_login(pop3, ccache).startswith(b"+OK")
        assert spnego_login(pop3, ccache).startswith(b"+OK")
        assert password_login(pop3k5).startswith(b"+OK")
        assert kpop_login(server.ports["kpop"], ccache) is None
    finally:
        assert server.stop() == 0
    failures = [entry for entry in log.splitlines() if "badlogin:" in entry]
    assert [entry.split(" (")[0].split()[-1] for entry in failures] == [
        "GSSAPI",
        "GSS-SPNEGO",
        "plaintext",
        "KPOP",
    ], failures
    for entry in failures:
        assert "result=<unavailable>" in entry and not FAIL2BAN.search(entry), entry
    # GSS-SPNEGO's line is held back: one a minute from a worker's ticket checks, as a
    # client can name a key that never was (kerberos/alarm.py); its record is above
    errors = [entry for entry in log.splitlines() if " ERROR " in entry]
    assert len(errors) == 3, errors
    for entry in errors:
        assert f"pop/{ROTATED_HOST}@{kerberos_realm.name} kvno 2 not found in keytab" in entry
    assert "Traceback" not in server.log_text()
