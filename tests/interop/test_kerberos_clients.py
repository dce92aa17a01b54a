"""Kerberos logins against a real pop3d-master with real clients and a real MIT KDC
(k5test): Cyrus's pop3test with no layer, integrity and confidentiality running STAT and
RETR through the layer, curl, fetchmail, and a scripted python-gssapi client for what no
packaged client does on purpose (a tampered frame, a layer that was not offered, a 50 MiB
RETR through a confidentiality layer with the worker's memory watched)."""

from __future__ import annotations

import base64
import os
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gssapi
import pytest

from tests.sasl.kerberos_client import GssapiClient, initiator
from tests.sasl.legacy_clients import GsaslClient
from tests.support.kerberos import Realm, kerberos_realm
from tests.support.lab import Lab, Server, start_server

__all__ = ["kerberos_realm"]

pytestmark = pytest.mark.interop

POP3TEST = "/usr/lib/cyrus/bin/pop3test"


@dataclass
class Kerberized:
    lab: Lab
    server: Server
    realm: Realm
    client_env: dict[str, str]  # alice's ticket cache and the realm's krb5.conf
    ccache: Path

    def log(self) -> str:
        return self.server.log_text()


@pytest.fixture(scope="module")
def kerberized(
    kerberos_realm: Realm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kerberized]:
    root = tmp_path_factory.mktemp("kerberized")
    keytab = kerberos_realm.service_keytab(root)
    # servername: the host name clients ask a ticket for (pop/localhost).
    lab = Lab(root / "lab", extra_config=f"sasl_keytab: {keytab}\n").create()
    lab.config.write_text(
        lab.config.read_text().replace("servername: lab.test", "servername: localhost")
    )
    env = {k: kerberos_realm.env[k] for k in ("KRB5_CONFIG", "KRB5RCACHEDIR")}
    server = start_server(lab, env=env)
    ccache = root / "alice.cc"
    client_env = kerberos_realm.kinit("alice", ccache)
    # The scripted python-gssapi client runs in this process: the realm's krb5.conf for
    # the module (each xdist worker is a process of its own).
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield Kerberized(lab, server, kerberos_realm, client_env, ccache)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


def pop3test(k: Kerberized, layer: int, script: bytes) -> bytes:
    done = subprocess.run(
        [POP3TEST, "-p", str(k.server.port), "-m", "GSSAPI", "-l", str(layer), "-u", "alice"]
        + ["localhost"],
        input=script,
        env=k.client_env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(("layer", "logged"), [(0, "-"), (1, "GSSAPI/1"), (256, "GSSAPI/256")])
def test_pop3test_through_each_layer(kerberized: Kerberized, layer: int, logged: str) -> None:
    k = kerberized
    message = max(k.lab.messages("alice"), key=lambda p: p.stat().st_size)  # 20,000 octets
    number = k.lab.messages("alice").index(message) + 1
    out = pop3test(k, layer, f"STAT\r\nRETR {number}\r\nQUIT\r\n".encode())
    assert b"+OK 7 28700\r\n" in out
    body = message.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert body in out  # the whole message came through the layer
    assert b"+OK Logging out" in out
    pattern = rf"^.*login: \S+ \[\S+\] alice GSSAPI User logged in .* layer=<{re.escape(logged)}>"
    assert re.search(pattern, k.log(), re.M), k.log()


def test_curl(kerberized: Kerberized) -> None:
    k = kerberized
    done = subprocess.run(
        ["curl", "-sS", f"pop3://localhost:{k.server.port}/", "--login-options", "AUTH=GSSAPI"]
        + ["-u", ":"],
        env=k.client_env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"1 1000\r\n") and b"7 300\r\n" in done.stdout


def test_fetchmail(kerberized: Kerberized, tmp_path: Path) -> None:
    k = kerberized
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f"poll localhost service {k.server.port} protocol pop3 auth gssapi "
        'user "alice" is "root" here sslproto \'\'\n'
    )
    rc.chmod(0o600)
    out = tmp_path / "delivered"
    argv = ["fetchmail", "-f", str(rc), "-i", str(tmp_path / "ids"), "--pidfile"]
    argv += [str(tmp_path / "pid"), "--nosyslog", "-v", "-k"]
    argv += ["--mda", f"cat >> {shlex.quote(str(out))}"]
    env = dict(k.client_env, HOME=str(tmp_path), LC_ALL="C")
    done = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    log = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, log
    assert "GSSAPI" in log
    assert out.read_bytes().count(b"Message-ID: <alice.") == 7


class Wire:
    """A POP3 connection for the scripted client."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = b""
        assert self.line().startswith(b"+OK")

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; had {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def send(self, line: bytes) -> None:
        self.sock.sendall(line + b"\r\n")


def authenticate(k: Kerberized, wire: Wire, client: GssapiClient) -> bytes:
    """RFC 5034 AUTH GSSAPI with the scripted client; the server's final answer line."""
    wire.send(b"AUTH GSSAPI " + base64.b64encode(client.initial()))
    while True:
        line = wire.line()
        if not line.startswith(b"+ "):
            return line
        wire.send(base64.b64encode(client.respond(base64.b64decode(line[2:]))))


class Framed:
    """The client side of the negotiated layer: 4-octet length + a GSS wrap token."""

    def __init__(self, wire: Wire, ctx: gssapi.SecurityContext, confidential: bool) -> None:
        self.wire, self.ctx, self.confidential = wire, ctx, confidential
        self.raw = wire.buffer
        self.plain = b""

    def send(self, data: bytes) -> None:
        token = self.ctx.wrap(data, self.confidential).message
        self.wire.sock.sendall(len(token).to_bytes(4, "big") + token)

    def read_until(self, end: bytes, limit: int) -> bytes:
        """Unwrapped data up to and including ``end`` (kept in pieces: a 50 MiB answer
        must not be copied once per frame)."""
        pieces: list[bytes] = [self.plain] if self.plain else []
        tail = self.plain[-len(end) :]
        while not tail.endswith(end):
            while len(self.raw) < 4 or len(self.raw) < 4 + int.from_bytes(self.raw[:4], "big"):
                chunk = self.wire.sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("closed")
                self.raw += chunk
            size = int.from_bytes(self.raw[:4], "big")
            assert size <= limit, size  # the server keeps to our max buffer
            token, self.raw = self.raw[4 : 4 + size], self.raw[4 + size :]
            piece = self.ctx.unwrap(bytes(bytearray(token))).message
            pieces.append(piece)
            tail = (tail + piece)[-len(end) :]
        self.plain = b""
        return b"".join(pieces)


def worker_rss(k: Kerberized) -> int:
    pid = int(
        Path(f"/proc/{k.server.process.pid}/task/{k.server.process.pid}/children")
        .read_text()
        .split()[0]
    )
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError


@pytest.mark.slow
def test_50_mib_retr_through_a_confidentiality_layer_streams(kerberized: Kerberized) -> None:
    k = kerberized
    big = k.lab.maildir("bob") / "new" / "1800000001.M1P1.big"
    line = b"x" * 1022 + b"\r\n"
    big.write_bytes(b"Subject: big\r\n\r\n" + line * (50 * 1024))
    try:
        wire = Wire(k.server.port)
        bob_cc = k.ccache.with_name("bob.cc")
        k.realm.kinit("bob", bob_cc)
        client = GssapiClient(ctx=initiator(bob_cc), layer=4, max_buffer=65536)
        assert authenticate(k, wire, client).startswith(b"+OK")
        framed = Framed(wire, client.ctx, confidential=True)
        before = worker_rss(k)
        framed.send(b"RETR 4\r\n")
        received = framed.read_until(b"\r\n.\r\n", limit=65536)
        after = worker_rss(k)
        assert received.startswith(b"+OK") and len(received) > 50 * 1024 * 1024
        assert after - before < 16 * 1024, (before, after)  # KiB: streamed, not buffered
        framed.send(b"QUIT\r\n")
        assert framed.read_until(b"\r\n", limit=65536).startswith(b"+OK")
    finally:
        big.unlink()
        k.lab.reset_maildrop("bob")


def test_a_tampered_frame_ends_the_session_and_nothing_in_it_runs(kerberized: Kerberized) -> None:
    k = kerberized
    wire = Wire(k.server.port)
    client = GssapiClient(ctx=initiator(k.ccache), layer=2)
    assert authenticate(k, wire, client).startswith(b"+OK")
    token = bytearray(client.ctx.wrap(b"DELE 1\r\nQUIT\r\n", False).message)
    token[-1] ^= 1
    wire.sock.sendall(len(token).to_bytes(4, "big") + bytes(token))
    wire.sock.settimeout(10)
    assert wire.sock.recv(65536) == b""  # closed, no answer
    deadline = time.monotonic() + 5
    while "ended: security layer" not in k.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "ended: security layer" in k.log()
    assert len(k.lab.messages("alice")) == 7  # DELE/QUIT never ran
    assert "Traceback" not in k.log()


def test_the_audit_trail_names_the_principal(kerberized: Kerberized) -> None:
    """Several principals may map to one user (krb5.conf auth_to_local): the login line
    says which one authenticated (found probing: it said only the user)."""
    k = kerberized
    wire = Wire(k.server.port)
    answer = authenticate(k, wire, GssapiClient(ctx=initiator(k.ccache), layer=1))
    assert answer.startswith(b"+OK"), answer
    wire.send(b"QUIT")
    assert wire.line().startswith(b"+OK")
    principal = k.realm.principal("alice")
    deadline = time.monotonic() + 10
    while f"authid=<{principal}>" not in k.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in k.log().splitlines() if f"authid=<{principal}>" in line]
    assert lines and " alice GSSAPI User logged in " in lines[-1], lines


def test_a_layer_that_was_not_offered_is_refused(kerberized: Kerberized) -> None:
    k = kerberized
    wire = Wire(k.server.port)
    client = GssapiClient(ctx=initiator(k.ccache), layer=8)  # no such layer bit
    answer = authenticate(k, wire, client)
    assert answer.startswith(b"-ERR [AUTH]"), answer
    wire.send(b"CAPA")
    assert wire.line().startswith(b"+OK")  # the session goes on, unauthenticated


def test_garbage_tokens_are_refused_and_the_server_serves_on(kerberized: Kerberized) -> None:
    k = kerberized
    for token in (b"\x60\x80garbage", b"", b"\x00" * 70000):
        wire = Wire(k.server.port)
        wire.send(b"AUTH GSSAPI " + (base64.b64encode(token) if token else b"="))
        answer = wire.line()
        while answer.startswith(b"+ "):
            wire.send(b"*")
            answer = wire.line()
        assert answer.startswith(b"-ERR"), (token[:8], answer)
    out = pop3test(k, 0, b"STAT\r\nQUIT\r\n")
    assert b"+OK 7 28700" in out
    assert "Traceback" not in k.log()


@pytest.mark.parametrize("mechanism", ["GS2-KRB5", "GSSAPI"])
def test_gsasl_over_pop3(
    kerberized: Kerberized, mechanism: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GNU SASL's client (gsasl --client, base64 steps on stdin/stdout) relayed over a
    real AUTH exchange: GS2-KRB5 (RFC 5801) and GSSAPI from a second implementation."""
    k = kerberized
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{k.ccache}")
    client = GsaslClient(mechanism, "localhost", "alice", "unused")
    wire = Wire(k.server.port)
    wire.send(f"AUTH {mechanism}".encode())
    line = wire.line()
    while line.startswith(b"+ "):
        wire.send(base64.b64encode(client.respond(base64.b64decode(line[2:]))))
        line = wire.line()
    assert line.startswith(b"+OK"), line
    wire.send(b"STAT")
    assert wire.line() == b"+OK 7 28700"
    assert re.search(rf"login: \S+ \[\S+\] alice {mechanism}(\+TLS)? User logged in", k.log())


def test_a_client_that_stops_mid_exchange(kerberized: Kerberized) -> None:
    """The server is waiting for the client's answer to its offer when the client goes."""
    k = kerberized
    wire = Wire(k.server.port)
    client = GssapiClient(ctx=initiator(k.ccache))
    wire.send(b"AUTH GSSAPI " + base64.b64encode(client.initial()))
    line = wire.line()
    while line.startswith(b"+ ") and not client.ctx.complete:
        wire.send(base64.b64encode(client.respond(base64.b64decode(line[2:]))))
        line = wire.line()
    assert line.startswith(b"+ ")  # the wrapped offer: the client leaves instead
    wire.sock.close()
    out = pop3test(k, 0, b"STAT\r\nQUIT\r\n")
    assert b"+OK 7 28700" in out
    assert "Traceback" not in k.log()
