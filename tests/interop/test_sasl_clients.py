"""SASL against independent clients over real TCP and TLS: Cyrus's own pop3test (libsasl2),
curl, and scramp driving SCRAM-*-PLUS with channel bindings taken from its side of the TLS
connection (Python's ssl for tls-unique and tls-server-end-point, a pyOpenSSL client that
exports its own keying material for tls-exporter)."""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import scramp
import scramp.core
from OpenSSL import SSL

from pop3d.transport import selfsigned
from tests.interop.conftest import run
from tests.support.lab import Lab, Server, start_server

pytestmark = pytest.mark.interop

POP3TEST = "/usr/lib/cyrus/bin/pop3test"
MECHANISMS = (
    "SCRAM-SHA-512-PLUS SCRAM-SHA-256-PLUS SCRAM-SHA-1-PLUS SCRAM-SHA-512 SCRAM-SHA-256 "
    "SCRAM-SHA-1 EXTERNAL DIGEST-MD5 CRAM-MD5 PLAIN LOGIN"
)


@dataclass
class Setup:
    server: Server
    ca: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path

    @property
    def port(self) -> int:
        return self.server.ports["pop3"]

    @property
    def pop3s(self) -> int:
        return self.server.ports["pop3s"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("sasl-clients")
    client_ca = selfsigned.make_ca("client CA")
    client_ca.write(root / "client-ca.pem")
    alice = selfsigned.issue(client_ca, "alice", email="alice@lab.test", client=True)
    alice.write(root / "alice.pem", root / "alice.key")
    stranger_ca = selfsigned.make_ca("stranger CA")
    stranger = selfsigned.issue(stranger_ca, "alice", client=True)
    stranger.write(root / "stranger.pem", root / "stranger.key")
    lab = Lab(
        root / "lab",
        extra_config=(
            # DIGEST-MD5 clients put the host they dialled into digest-uri: dial "localhost"
            "servername: localhost\n"
            f"sasl_mech_list: {MECHANISMS}\n"
            "tls_client_certs: optional\n"
            f"tls_client_ca_file: {root / 'client-ca.pem'}\n"
        ),
    ).create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, {"pop3": "", "pop3s": "-s"})
    yield Setup(
        server,
        lab.tls.ca,
        root / "alice.pem",
        root / "alice.key",
        root / "stranger.pem",
        root / "stranger.key",
    )
    server.stop()


# --- Cyrus pop3test (libsasl2, the client Cyrus sites use) --------------------------------


@pytest.mark.parametrize(
    "mechanism",
    ["SCRAM-SHA-256", "SCRAM-SHA-1", "SCRAM-SHA-512", "DIGEST-MD5", "CRAM-MD5", "PLAIN", "LOGIN"],
)
def test_pop3test(setup: Setup, mechanism: str) -> None:
    args = ["-p", str(setup.port), "-m", mechanism, "-a", "alice", "-u", "alice"]
    done = run([POP3TEST, *args, "-w", "wonderland", "localhost"], input=b"STAT\r\nQUIT\r\n")
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert "Authenticated." in out, out
    assert "+OK 7 28700" in out, out


def test_pop3test_digest_md5_dialling_127_0_0_1(setup: Setup) -> None:
    """pop3test puts the host it dialled in digest-uri (pop/127.0.0.1): the address the
    client connected to is one of the server's names; curl does the same."""
    args = ["-p", str(setup.port), "-m", "DIGEST-MD5", "-a", "alice", "-u", "alice"]
    done = run([POP3TEST, *args, "-w", "wonderland", "127.0.0.1"], input=b"STAT\r\nQUIT\r\n")
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert "Authenticated." in out and "+OK 7 28700" in out, out
    code, listing, err = curl(
        f"pop3://127.0.0.1:{setup.port}/", "--login-options", "AUTH=DIGEST-MD5"
    )
    assert code == 0, err
    assert listing.startswith(b"1 1000\r\n")


def test_pop3test_wrong_password(setup: Setup) -> None:
    args = ["-p", str(setup.port), "-m", "SCRAM-SHA-256", "-a", "alice", "-u", "alice"]
    done = run([POP3TEST, *args, "-w", "nope", "127.0.0.1"], input=b"QUIT\r\n")
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert "-ERR [AUTH] Invalid login" in out
    assert "Authenticated." not in out


def test_pop3test_over_pop3s(setup: Setup) -> None:
    args = ["-s", "-p", str(setup.pop3s), "-m", "SCRAM-SHA-256", "-a", "alice", "-u", "alice"]
    done = run(
        [POP3TEST, *args, "-w", "wonderland", "127.0.0.1"],
        input=b"STAT\r\nQUIT\r\n",
        env={"SSL_CERT_FILE": str(setup.ca), "PATH": "/usr/bin:/bin"},
    )
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert "Authenticated." in out and "+OK 7 28700" in out, out


def test_pop3test_plus_binds_over_tls12_and_is_refused_over_tls13(
    setup: Setup, tmp_path: Path
) -> None:
    """pop3test -m SCRAM-SHA-256-PLUS (libsasl2 2.1.28) sends AUTH SCRAM-SHA-256 with
    p=tls-unique: refused as malformed before (found probing). Over TLS 1.2 (the extended
    master secret on) the binding is verified and the login works; over TLS 1.3, where
    tls-unique is not defined (RFC 9266), the login fails, saying why in the log."""
    lab = Lab(
        tmp_path / "lab",
        extra_config=(
            "servername: localhost\n"
            "sasl_mech_list: SCRAM-SHA-256-PLUS SCRAM-SHA-256\n"
            "tls_versions: tls1_2\n"
        ),
    ).create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, {"pop3s": "-s"})
    try:
        for port, ca in ((server.ports["pop3s"], lab.tls.ca), (setup.pop3s, setup.ca)):
            args = ["-s", "-p", str(port), "-m", "SCRAM-SHA-256-PLUS", "-a", "alice"]
            done = run(
                [POP3TEST, *args, "-u", "alice", "-w", "wonderland", "localhost"],
                input=b"STAT\r\nQUIT\r\n",
                env={"SSL_CERT_FILE": str(ca), "PATH": "/usr/bin:/bin"},
            )
            out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
            if port == server.ports["pop3s"]:
                assert "TLSv1.2" in out and "Authenticated." in out, out
                assert "+OK 7 28700" in out, out
            else:
                assert "TLSv1.3" in out and "Authenticated." not in out, out
    finally:
        server.stop()
    assert "channel binding tls-unique is not available" in setup.server.log_text()


# --- curl --------------------------------------------------------------------------------


def curl(url: str, *args: str, user: str = "alice:wonderland") -> tuple[int, bytes, str]:
    done = run(["curl", "-sS", "-v", "--max-time", "20", url, "-u", user, *args])
    return done.returncode, done.stdout, done.stderr.decode(errors="replace")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5"])
def test_curl_login_options(setup: Setup, mechanism: str) -> None:
    code, out, err = curl(f"pop3://localhost:{setup.port}/", "--login-options", f"AUTH={mechanism}")
    assert code == 0, err
    assert f"> AUTH {mechanism}" in err
    assert out.startswith(b"1 1000\r\n2 700\r\n")


def test_curl_external_with_a_client_certificate(setup: Setup) -> None:
    url = f"pop3s://localhost:{setup.pop3s}/"
    code, out, err = curl(
        url,
        "--login-options",
        "AUTH=EXTERNAL",
        "--cert",
        str(setup.client_cert),
        "--key",
        str(setup.client_key),
        "--cacert",
        str(setup.ca),
        user="alice:",
    )
    assert code == 0, err
    # curl sends the user name as the authorization identity: "alice", as on the certificate
    assert "> AUTH EXTERNAL" in err and out.startswith(b"1 1000\r\n")


def test_external_is_not_offered_without_a_verified_certificate(setup: Setup) -> None:
    context = ssl.create_default_context(cafile=str(setup.ca))
    for certificate in (None, (setup.stranger_cert, setup.stranger_key)):
        # No certificate, or (tls_client_certs: optional) one from another CA, which gets a
        # session without a client identity: a password may log in, EXTERNAL may not.
        if certificate is not None:
            context.load_cert_chain(*certificate)
        with socket.create_connection(("127.0.0.1", setup.pop3s), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.recv(4096).startswith(b"+OK")
                tls.sendall(b"CAPA\r\n")
                capa = b""
                while not capa.endswith(b"\r\n.\r\n"):
                    capa += tls.recv(4096)
        sasl = next(line for line in capa.split(b"\r\n") if line.startswith(b"SASL "))
        assert b"EXTERNAL" not in sasl.split() and b"SCRAM-SHA-256-PLUS" in sasl.split()


# --- scramp: SCRAM-*-PLUS with the client's own view of the channel ----------------------


class Pop3:
    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")

    def line(self) -> bytes:
        return self.reader.readline()

    def send(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.line()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def tls_session(setup: Setup, version: ssl.TLSVersion) -> Pop3:
    context = ssl.create_default_context(cafile=str(setup.ca))
    context.maximum_version = version
    raw = socket.create_connection(("127.0.0.1", setup.pop3s), timeout=10)
    session = Pop3(context.wrap_socket(raw, server_hostname="localhost"))
    assert session.line().startswith(b"+OK")
    return session


def client_binding(binding_type: str, sock: ssl.SSLSocket) -> tuple[str, bytes]:
    """The channel binding as the client sees its own TLS connection (RFC 5929)."""
    if binding_type == "tls-unique":
        data = sock.get_channel_binding("tls-unique")
        assert data is not None
        return binding_type, data
    certificate = sock.getpeercert(binary_form=True)
    assert certificate is not None
    # our test certificates are signed with ECDSA-SHA256, so RFC 5929 §4.1 hashes with SHA-256
    return binding_type, hashlib.sha256(certificate).digest()


def scram_login(
    session: Pop3 | OpenSSLPop3,
    mechanism: str,
    binding: tuple[str, bytes] | None,
    password: str = "wonderland",
) -> bytes:
    client = scramp.ScramClient([mechanism], "alice", password, channel_binding=binding)
    first = base64.b64encode(client.get_client_first().encode())
    reply = session.send(f"AUTH {mechanism} ".encode() + first)
    if not reply.startswith(b"+ "):
        return reply
    client.set_server_first(base64.b64decode(reply[2:]).decode())
    reply = session.send(base64.b64encode(client.get_client_final().encode()))
    if not reply.startswith(b"+ "):
        return reply
    client.set_server_final(base64.b64decode(reply[2:]).decode())  # verifies the server
    return session.send(b"")


@pytest.mark.parametrize(
    "mechanism", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-512-PLUS", "SCRAM-SHA-1-PLUS"]
)
@pytest.mark.parametrize(
    ("version", "binding_type"),
    [
        (ssl.TLSVersion.TLSv1_3, "tls-server-end-point"),
        (ssl.TLSVersion.TLSv1_2, "tls-server-end-point"),
        (ssl.TLSVersion.TLSv1_2, "tls-unique"),
    ],
)
def test_scram_plus_over_real_tls(
    setup: Setup, mechanism: str, version: ssl.TLSVersion, binding_type: str
) -> None:
    session = tls_session(setup, version)
    try:
        binding = client_binding(binding_type, session.sock)
        reply = scram_login(session, mechanism, binding)
        assert reply.startswith(b"+OK Mailbox locked and ready"), reply
        assert session.send(b"STAT") == b"+OK 7 28700\r\n"
    finally:
        session.close()


def test_scram_plus_with_the_binding_of_another_connection_fails(setup: Setup) -> None:
    """What a man in the middle would have: a binding to his own TLS connection."""
    other = tls_session(setup, ssl.TLSVersion.TLSv1_2)
    session = tls_session(setup, ssl.TLSVersion.TLSv1_2)
    try:
        foreign = client_binding("tls-unique", other.sock)
        reply = scram_login(session, "SCRAM-SHA-256-PLUS", foreign)
        assert reply == b"-ERR [AUTH] Invalid login\r\n"
        assert scram_login(
            session, "SCRAM-SHA-256-PLUS", client_binding("tls-unique", session.sock)
        ).startswith(b"+OK")
    finally:
        other.close()
        session.close()


def test_tls_unique_is_refused_on_tls13(setup: Setup) -> None:
    session = tls_session(setup, ssl.TLSVersion.TLSv1_3)
    try:
        binding = ("tls-unique", b"\x00" * 12)  # what a client that ignores RFC 9266 sends
        assert scram_login(session, "SCRAM-SHA-256-PLUS", binding) == (
            b"-ERR [AUTH] Invalid login\r\n"
        )
    finally:
        session.close()


# --- tls-exporter (RFC 9266): a pyOpenSSL client exports its own keying material ---------


class OpenSSLPop3:
    """A POP3 client on a pyOpenSSL connection (Python's ssl cannot export keying
    material); ``stls`` upgrades a plain connection, as a client of port 110 does."""

    def __init__(self, port: int, ca: Path, version: int, stls: bool = False) -> None:
        self.raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        # pyOpenSSL wants a blocking socket; the kernel's timeout still ends a hang
        self.raw.settimeout(None)
        self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
        self.buffer = b""
        self.conn: SSL.Connection | None = None
        if stls:
            assert self.line().startswith(b"+OK")
            assert self.send(b"STLS").startswith(b"+OK")
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.load_verify_locations(str(ca))
        context.set_verify(SSL.VERIFY_PEER)
        context.set_min_proto_version(version)
        context.set_max_proto_version(version)
        self.conn = SSL.Connection(context, self.raw)
        self.conn.set_tlsext_host_name(b"localhost")
        self.conn.set_connect_state()
        self.conn.do_handshake()
        if not stls:
            assert self.line().startswith(b"+OK")

    def exporter(self) -> bytes:
        assert self.conn is not None
        return self.conn.export_keying_material(b"EXPORTER-Channel-Binding", 32, b"")

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.conn.recv(65536) if self.conn else self.raw.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        line, sep, self.buffer = self.buffer.partition(b"\r\n")
        return line + sep

    def send(self, line: bytes) -> bytes:
        if self.conn is not None:
            self.conn.sendall(line + b"\r\n")
        else:
            self.raw.sendall(line + b"\r\n")
        return self.line()

    def close(self) -> None:
        self.raw.close()


@pytest.fixture
def scramp_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    """scramp refuses the name "tls-exporter" (it cannot get the data from Python's ssl);
    its SCRAM arithmetic takes any binding's bytes, so let it use the name."""
    names = scramp.core.CbName
    monkeypatch.setattr(names, "SUPPORTED_TYPES", names.SUPPORTED_TYPES | {"tls-exporter"})
    monkeypatch.setattr(names, "UNSUPPORTED_TYPES", frozenset())


@pytest.mark.usefixtures("scramp_exporter")
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-512-PLUS"])
@pytest.mark.parametrize("stls", [False, True], ids=["pop3s", "stls"])
def test_scram_plus_with_tls_exporter_on_tls13(setup: Setup, mechanism: str, stls: bool) -> None:
    session = OpenSSLPop3(
        setup.port if stls else setup.pop3s, setup.ca, SSL.TLS1_3_VERSION, stls=stls
    )
    try:
        assert session.conn is not None
        assert session.conn.get_protocol_version_name() == "TLSv1.3"
        reply = scram_login(session, mechanism, ("tls-exporter", session.exporter()))
        assert reply.startswith(b"+OK Mailbox locked and ready"), reply
        assert session.send(b"STAT") == b"+OK 7 28700\r\n"
    finally:
        session.close()


@pytest.mark.usefixtures("scramp_exporter")
def test_a_wrong_exporter_value_is_refused(setup: Setup) -> None:
    """What a man in the middle would have: the exporter of his own TLS connection (or any
    other value), not of the client's."""
    other = OpenSSLPop3(setup.pop3s, setup.ca, SSL.TLS1_3_VERSION)
    session = OpenSSLPop3(setup.pop3s, setup.ca, SSL.TLS1_3_VERSION)
    try:
        foreign = other.exporter()
        flipped = bytes([session.exporter()[0] ^ 1]) + session.exporter()[1:]
        for wrong in (foreign, flipped):
            reply = scram_login(session, "SCRAM-SHA-256-PLUS", ("tls-exporter", wrong))
            assert reply == b"-ERR [AUTH] Invalid login\r\n"
        right = ("tls-exporter", session.exporter())
        assert scram_login(session, "SCRAM-SHA-256-PLUS", right).startswith(b"+OK")
    finally:
        other.close()
        session.close()
    assert "channel binding mismatch" in setup.server.log_text()


@pytest.mark.usefixtures("scramp_exporter")
def test_tls_exporter_is_not_offered_on_tls12(setup: Setup) -> None:
    """RFC 9266 defines tls-exporter for TLS 1.3 only (on 1.2 without extended master
    secret it would not be unique): the server has no such binding there."""
    session = OpenSSLPop3(setup.pop3s, setup.ca, SSL.TLS1_2_VERSION)
    try:
        data = session.conn.export_keying_material(b"EXPORTER-Channel-Binding", 32, b"")
        reply = scram_login(session, "SCRAM-SHA-256-PLUS", ("tls-exporter", data))
        assert reply == b"-ERR [AUTH] Invalid login\r\n"
        unique = session.conn.get_finished()  # the client's Finished: tls-unique
        assert unique is not None
        assert scram_login(session, "SCRAM-SHA-256-PLUS", ("tls-unique", unique)).startswith(b"+OK")
    finally:
        session.close()


# --- fetchmail ---------------------------------------------------------------------------


def test_fetchmail_cram_md5(setup: Setup, tmp_path: Path) -> None:
    from tests.interop.test_fetchmail import NO_MAIL, Fetchmail

    fetch = Fetchmail(tmp_path / "fm", "localhost", setup.port, "alice", "wonderland")
    done = fetch("-p", "POP3", "--auth", "cram-md5", "--sslproto", "", "--keep", "--uidl")
    assert done.code == 0, done.log
    assert "POP3> AUTH CRAM-MD5" in done.log
    assert done.delivered.count(b"Message-ID: <alice.") == 7
    again = fetch("-p", "POP3", "--auth", "cram-md5", "--sslproto", "", "--keep", "--uidl")
    assert again.code == NO_MAIL, again.log
    wrong = Fetchmail(tmp_path / "fm2", "localhost", setup.port, "alice", "nope")
    refused = wrong("-p", "POP3", "--auth", "cram-md5", "--sslproto", "", "--keep")
    assert refused.code == 3, refused.log  # authentication failed


def test_tls_unique_is_refused_without_the_extended_master_secret(setup: Setup) -> None:
    """Found probing: TLS 1.2 without RFC 7627's extended master secret let tls-unique
    bind SCRAM-PLUS, which the triple handshake attack defeats (RFC 9266 §1)."""
    context = ssl.create_default_context(cafile=str(setup.ca))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.options |= 0x1  # SSL_OP_NO_EXTENDED_MASTER_SECRET: the client offers none
    raw = socket.create_connection(("127.0.0.1", setup.pop3s), timeout=10)
    session = Pop3(context.wrap_socket(raw, server_hostname="localhost"))
    try:
        assert session.line().startswith(b"+OK")
        unique = client_binding("tls-unique", session.sock)
        assert scram_login(session, "SCRAM-SHA-256-PLUS", unique) == (
            b"-ERR [AUTH] Invalid login\r\n"
        )
        end_point = client_binding("tls-server-end-point", session.sock)
        assert scram_login(session, "SCRAM-SHA-256-PLUS", end_point).startswith(b"+OK")
    finally:
        session.close()
