"""What pop3d depends on goes away: the KDC, the keytab, saslauthd, a readable certificate.
Each time a clear error (exit 78 with file:line at start, a log line at run time) and the
server keeps serving what it can, with real daemons: an MIT KDC (k5test), Cyrus saslauthd,
Cyrus's pop3test as the GSSAPI client. ``sasl_pwcheck_method: kerberos5``, which asks the
KDC at each password login, has its outages and keytab faults tested in
tests/auth/test_kerberos5.py and tests/server/test_kerberos_key_rotation.py."""

from __future__ import annotations

import base64
import hashlib
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import scramp

from tests.auth.test_saslauthd import start_saslauthd
from tests.faults.client import LogWatch, Pop
from tests.support.kerberos import Realm, make_realm
from tests.support.lab import Lab, Server, free_port, make_certificates, start_server

POP3TEST = "/usr/lib/cyrus/bin/pop3test"

# --- the keytab -------------------------------------------------------------------------


def test_a_missing_keytab_stops_the_master_with_file_and_line(tmp_path: Path) -> None:
    missing = tmp_path / "gone.keytab"
    lab = Lab(tmp_path / "lab", extra_config=f"sasl_keytab: {missing}\n").create()
    line = lab.config.read_text().splitlines().index(f"sasl_keytab: {missing}") + 1
    cyrus_conf = lab.root / "cyrus.conf"
    listen = f"127.0.0.1:{free_port()}"
    cyrus_conf.write_text(f'SERVICES {{\n  pop3 cmd="pop3d" listen="{listen}"\n}}\n')
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pop3d.cli.master", "-C", str(lab.config), "-M", str(cyrus_conf)],
        capture_output=True,
        timeout=30,
    )
    assert time.monotonic() - started < 10
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 78, output
    assert f"{lab.config}:{line}:" in output and "No such file" in output, output
    assert "Traceback" not in output


# --- the KDC ------------------------------------------------------------------------------


@pytest.fixture
def realm() -> Iterator[Realm]:
    """A realm of this test's own: its KDC is stopped, which the shared one must not be."""
    if not Path(POP3TEST).exists():
        pytest.skip(f"{POP3TEST} (cyrus-clients) is missing")
    k5 = make_realm()
    try:
        yield Realm(k5)
    finally:
        k5.stop()
        shutil.rmtree(k5.tmpdir, ignore_errors=True)


def pop3test(port: int, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [POP3TEST, "-p", str(port), "-m", "GSSAPI", "-l", "0", "-u", "alice", "localhost"],
        input=b"STAT\r\nQUIT\r\n",
        env=env,
        capture_output=True,
        timeout=30,
    )


def test_kdc_down_gssapi_goes_on_from_tickets(realm: Realm, tmp_path: Path) -> None:
    keytab = realm.service_keytab(tmp_path)
    lab = Lab(tmp_path / "lab", extra_config=f"sasl_keytab: {keytab}\n").create()
    lab.config.write_text(
        lab.config.read_text().replace("servername: lab.test", "servername: localhost")
    )
    env = {k: realm.env[k] for k in ("KRB5_CONFIG", "KRB5RCACHEDIR")}
    server = start_server(lab, env=env)
    try:
        with_ticket = realm.kinit("alice", tmp_path / "alice.cc")
        first = pop3test(server.port, with_ticket)  # fetches and caches pop/localhost
        assert b"+OK 7 28700" in first.stdout, first.stdout + first.stderr
        only_tgt = realm.kinit("alice", tmp_path / "tgt-only.cc")

        realm.k5.stop_kdc()
        watch = LogWatch(server)
        again = pop3test(server.port, with_ticket)  # the acceptor needs only the keytab
        assert b"+OK 7 28700" in again.stdout, again.stdout + again.stderr
        # A client that still needs a service ticket cannot get one: its own failure,
        # and the server answers the next client as before.
        stuck = pop3test(server.port, only_tgt)
        assert b"+OK 7 28700" not in stuck.stdout
        client = Pop(server.port)
        assert client.login().startswith(b"+OK Mailbox locked")
        assert client.ask(b"QUIT").startswith(b"+OK")
        client.close()

        # The keytab removed under the running server: GSSAPI refused, the rest served.
        keytab.unlink()
        refused = pop3test(server.port, with_ticket)
        assert b"+OK 7 28700" not in refused.stdout
        client = Pop(server.port)
        assert client.login().startswith(b"+OK Mailbox locked")
        client.close()
        log = watch.text()
        assert "Traceback" not in log, log
        assert server.process.poll() is None
    finally:
        server.stop()


# --- saslauthd ----------------------------------------------------------------------------


def apop(client: Pop, user: bytes, secret: bytes) -> bytes:
    challenge = client.greeting[client.greeting.index(b"<") : client.greeting.index(b">") + 1]
    digest = hashlib.md5(challenge + secret).hexdigest().encode()  # noqa: S324 (APOP is MD5)
    return client.ask(b"APOP " + user + b" " + digest)


def scram(client: Pop, user: str, password: str) -> bytes:
    scram_client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
    first = base64.b64encode(scram_client.get_client_first().encode())
    reply = client.ask(b"AUTH SCRAM-SHA-256 " + first)
    assert reply.startswith(b"+ "), reply
    scram_client.set_server_first(base64.b64decode(reply[2:]).decode())
    reply = client.ask(base64.b64encode(scram_client.get_client_final().encode()))
    assert reply.startswith(b"+ "), reply
    scram_client.set_server_final(base64.b64decode(reply[2:]).decode())
    return client.ask(b"")


def test_saslauthd_gone(tmp_path: Path) -> None:
    daemon = start_saslauthd(tmp_path / "saslauthd")
    lab = Lab(
        tmp_path / "lab",
        extra_config=f"sasl_pwcheck_method: saslauthd\nsasl_saslauthd_path: {daemon.socket}\n",
        users={"alice@lab.test": "not-the-saslauthd-password", "bob": "builder"},
    ).create()
    server = start_server(lab)
    try:
        client = Pop(server.port)
        assert client.login(b"alice@lab.test", b"wonderland").startswith(b"+OK Mailbox")
        client.ask(b"QUIT")
        client.close()
        watch = LogWatch(server)
        for how, reason in [
            (signal.SIGKILL, "Connection refused"),  # a dead socket left behind
            (None, "No such file or directory"),  # and then no socket at all
        ]:
            if how is not None:
                daemon.stop(how)
            else:
                daemon.socket.unlink()
            client = Pop(server.port)
            started = time.monotonic()
            answer = client.login(b"alice@lab.test", b"wonderland")
            # saslauthd cannot be asked: a temporary failure, not a verdict on the password
            assert answer == b"-ERR [SYS/TEMP] Unable to check the password now, try again later"
            assert time.monotonic() - started < 2
            watch.wait_for(rf"ERROR cannot check the password of alice@lab.test: .*{reason}")
            # What the credential file answers still works on the same connection and others.
            assert apop(client, b"bob", b"builder").startswith(b"+OK Mailbox locked")
            client.ask(b"QUIT")
            client.close()
            other = Pop(server.port)
            assert scram(other, "bob", "builder").startswith(b"+OK Mailbox locked")
            other.close()
        assert "Traceback" not in watch.text()
    finally:
        server.stop()
        daemon.stop()


# --- the certificate ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pop3s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    lab = Lab(tmp_path_factory.mktemp("cert") / "lab").create(with_tls=True)
    server = start_server(lab, {"pop3s": "-s"})
    yield server
    server.stop()


def _tls(server: Server) -> ssl.SSLContext:
    assert server.lab.tls is not None
    return ssl.create_default_context(cafile=str(server.lab.tls.ca))


@pytest.mark.parametrize("damage", ["garbage", "empty", "removed", "another key's certificate"])
def test_a_broken_certificate_at_sighup_keeps_the_old_one(
    pop3s: Server, tmp_path: Path, damage: str
) -> None:
    tls = pop3s.lab.tls
    assert tls is not None
    port = pop3s.ports["pop3s"]
    original = tls.cert.read_bytes()
    running = Pop(port, tls=_tls(pop3s))
    assert running.ask(b"USER bob").startswith(b"+OK")
    watch = LogWatch(pop3s)
    try:
        if damage == "garbage":
            tls.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
        elif damage == "empty":
            tls.cert.write_bytes(b"")
        elif damage == "removed":
            tls.cert.unlink()
        else:  # a valid certificate that does not match the key on disk
            tls.cert.write_bytes(make_certificates(tmp_path / "other").cert.read_bytes())
        pop3s.process.send_signal(signal.SIGHUP)
        reload_failed = r"ERROR TLS reload failed, keeping the old certificate: .*imapd\.conf:\d+: "
        watch.wait_for(reload_failed)
        fresh = Pop(port, tls=_tls(pop3s))  # new sessions: the old certificate
        certificate = fresh.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        assert certificate == ssl.PEM_cert_to_DER_cert(original.decode())
        assert fresh.login().startswith(b"+OK Mailbox locked")
        fresh.ask(b"QUIT")
        fresh.close()
        assert running.ask(b"PASS builder").startswith(b"+OK Mailbox locked")  # goes on
        assert running.ask(b"QUIT").startswith(b"+OK")
        running.close()
    finally:
        tls.cert.write_bytes(original)
    assert pop3s.process.poll() is None
    assert "Traceback" not in watch.text()
