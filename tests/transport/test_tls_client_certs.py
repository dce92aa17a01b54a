"""Client certificates: revocation (tls_crl_file), the CA names sent in the
CertificateRequest, and what tls_client_certs: optional does with a certificate that does
not verify."""

from __future__ import annotations

import contextlib
import datetime
import re
import signal
import socket
import ssl
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL, crypto

from pop3d.config import imapd
from pop3d.config.imapd import ConfigError
from pop3d.transport import selfsigned, tls
from pop3d.transport.tls_layer import TLSHandshakeError
from tests.support.lab import Certificates, Lab, make_certificates, start_server
from tests.transport.test_tls import ask, client_context, handshake, lines_until
from tests.transport.test_tls_server_key import check_config, on_a_terminal, pop3s_only


@dataclass
class ClientPKI:
    folder: Path
    ca: selfsigned.Issued

    @property
    def ca_file(self) -> Path:
        return self.folder / "client-ca.pem"

    @property
    def crl_file(self) -> Path:
        return self.folder / "crl.pem"

    def issue(self, name: str) -> selfsigned.Issued:
        issued = selfsigned.issue(self.ca, name, client=True)
        issued.write(self.folder / f"{name}.pem", self.folder / f"{name}.key")
        return issued

    def revoke(self, *revoked: selfsigned.Issued) -> None:
        """Write a current CRL that revokes ``revoked`` (none: an empty one)."""
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ca.certificate.subject)
            .last_update(now - datetime.timedelta(hours=1))
            .next_update(now + datetime.timedelta(days=7))
        )
        for issued in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(issued.certificate.serial_number)
                .revocation_date(now - datetime.timedelta(hours=1))
                .build()
            )
        crl = builder.sign(self.ca.key, hashes.SHA256())
        self.crl_file.write_bytes(crl.public_bytes(serialization.Encoding.PEM))

    def client(self, server: Certificates, name: str) -> ssl.SSLContext:
        context = client_context(server)
        context.load_cert_chain(self.folder / f"{name}.pem", self.folder / f"{name}.key")
        return context


def client_pki(folder: Path, name: str = "client CA") -> ClientPKI:
    folder.mkdir(parents=True, exist_ok=True)
    pki = ClientPKI(folder, selfsigned.make_ca(name))
    pki.ca.write(pki.ca_file)
    return pki


def config_for(server: Certificates, extra: str) -> imapd.Config:
    return imapd.from_text(
        f"tls_server_cert: {server.cert}\ntls_server_key: {server.key}\n{extra}", "imapd.conf"
    )


def test_a_revoked_client_certificate_does_not_verify(tmp_path: Path) -> None:
    """Found probing: tls_crl_file was read and ignored, and a revoked certificate logged
    in with EXTERNAL. Each CRL in the file counts (Cyrus reads them all)."""
    pki = client_pki(tmp_path / "pki")
    alice, bob = pki.issue("alice"), pki.issue("bob")
    other = client_pki(tmp_path / "other", "other CA")
    pki.revoke(alice)
    other.revoke()
    pki.crl_file.write_bytes(other.crl_file.read_bytes() + pki.crl_file.read_bytes())
    server = make_certificates(tmp_path / "server")
    config = config_for(
        server,
        f"tls_client_certs: require\ntls_client_ca_file: {pki.ca_file}\n"
        f"tls_crl_file: {pki.crl_file}\n",
    )
    server_tls = tls.server_tls(config, None)
    with pytest.raises(TLSHandshakeError, match=r"\(client certificate: certificate revoked\)"):
        handshake(server_tls, pki.client(server, "alice"))
    server_side, _ = handshake(server_tls, pki.client(server, "bob"))
    assert tls.facts(server_side, server_tls).client_identity == "bob"
    assert bob.certificate.serial_number != alice.certificate.serial_number


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"", "holds no PEM CRL"),
        (b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "CRL 1 of 1 cannot be"),
    ],
)
def test_a_crl_file_that_cannot_be_read_is_a_config_error(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    """Cyrus logs a CRL file it cannot open and checks no revocation: here it stops the
    start (exit 78), check-config names it, and a reload keeps the CRLs in effect."""
    pki = client_pki(tmp_path / "pki")
    if content is not None:
        pki.crl_file.write_bytes(content)
    lab = Lab(
        tmp_path / "lab",
        extra_config=f"tls_client_certs: optional\ntls_client_ca_file: {pki.ca_file}\n"
        f"pop3s_tls_crl_file: {pki.crl_file}\n",
    ).create(with_tls=True)
    config = imapd.load(lab.config)
    with pytest.raises(ConfigError, match=message) as caught:
        tls.server_tls(config, "pop3s")
    line = lab.config.read_text().splitlines().index(f"pop3s_tls_crl_file: {pki.crl_file}")
    assert f"{lab.config}:{line + 1}: error: " in str(caught.value)
    status, output = on_a_terminal([*check_config(lab), "-M", str(pop3s_only(tmp_path))])
    assert status == 78 and message in output, output


def test_sighup_reads_a_new_crl(tmp_path: Path) -> None:
    """A CRL is re-read at SIGHUP, as the certificate is: a certificate revoked since is
    refused by the workers without a restart."""
    pki = client_pki(tmp_path / "pki")
    alice = pki.issue("alice")
    pki.revoke()
    lab = Lab(
        tmp_path / "lab",
        extra_config=f"tls_client_certs: require\ntls_client_ca_file: {pki.ca_file}\n"
        f"tls_crl_file: {pki.crl_file}\n",
    ).create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, {"pop3s": "-s"})
    port = server.ports["pop3s"]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with pki.client(lab.tls, "alice").wrap_socket(raw, server_hostname="localhost") as s:
                assert lines_until(s, b"\r\n").startswith(b"+OK")
                assert ask(s, b"AUTH EXTERNAL =").startswith(b"+OK")
        pki.revoke(alice)
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "TLS certificate reloaded" not in server.log_text():
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.05)
        with (
            pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)),
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            pki.client(lab.tls, "alice").wrap_socket(raw, server_hostname="localhost") as s,
        ):
            lines_until(s, b"\r\n")  # TLS 1.3: the refusal comes after the client's Finished
            raise AssertionError("a revoked certificate was served")
    finally:
        server.stop()
    assert "certificate revoked" in server.log_text()


def memory_handshake(
    server_tls: tls.ServerTLS, client: SSL.Context
) -> tuple[SSL.Connection, SSL.Connection]:
    """A handshake between pyOpenSSL connections over memory: (server side, client side),
    however far it got."""
    server_side = SSL.Connection(server_tls.context, None)
    server_side.set_accept_state()
    client_side = SSL.Connection(client, None)
    client_side.set_connect_state()
    for _ in range(10):
        for one, other in ((client_side, server_side), (server_side, client_side)):
            with contextlib.suppress(SSL.WantReadError):
                one.do_handshake()
            with contextlib.suppress(SSL.WantReadError):
                other.bio_write(one.bio_read(65536))
    return server_side, client_side


def ca_names_sent(server_tls: tls.ServerTLS, client: SSL.Context | None = None) -> list[str]:
    """The CA names our CertificateRequest carries, as a pyOpenSSL client reads them."""
    _server, client_side = memory_handshake(
        server_tls, client or SSL.Context(SSL.TLS_CLIENT_METHOD)
    )
    return sorted(str(name.CN) for name in client_side.get_client_ca_list())


def hashed(folder: Path, *authorities: selfsigned.Issued) -> Path:
    """A CA directory as openssl rehash makes it: <subject hash>.0 for each."""
    folder.mkdir(parents=True, exist_ok=True)
    for issued in authorities:
        subject_hash = crypto.X509.from_cryptography(issued.certificate).subject_name_hash()
        issued.write(folder / f"{subject_hash:08x}.0")
    (folder / "README").write_text("not a certificate, and not under a hashed name\n")
    return folder


@pytest.mark.parametrize("mode", ["optional", "require"])
def test_the_certificate_request_names_the_client_cas(tmp_path: Path, mode: str) -> None:
    """Found probing: no CA names were sent, so a client with several certificates could not
    tell which one we take. Cyrus sends those of tls_client_ca_file, and none of
    tls_client_ca_dir (a system store's 144 public CAs made the request 15 KB, found by a
    re-probe): so do we."""
    first, second = client_pki(tmp_path / "a", "first CA"), client_pki(tmp_path / "b", "second CA")
    folder = hashed(tmp_path / "dir", client_pki(tmp_path / "c", "third CA").ca, second.ca)
    first.ca_file.write_bytes(first.ca_file.read_bytes() + second.ca_file.read_bytes())
    server = make_certificates(tmp_path / "server")
    client = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if mode == "require":  # a certificate every configuration below trusts
        second.issue("alice")
        client.use_certificate_chain_file(str(tmp_path / "b" / "alice.pem"))
        client.use_privatekey_file(str(tmp_path / "b" / "alice.key"))
    for extra, names in (
        (f"tls_client_ca_file: {first.ca_file}\n", ["first CA", "second CA"]),
        (f"tls_client_ca_dir: {folder}\n", []),
        (
            f"tls_client_ca_file: {first.ca_file}\ntls_client_ca_dir: {folder}\n",
            ["first CA", "second CA"],
        ),
    ):
        config = config_for(server, f"tls_client_certs: {mode}\n{extra}")
        assert ca_names_sent(tls.server_tls(config, None), client) == names


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("tls_client_ca_dir: {tmp}/missing", "cannot read {tmp}/missing: No such file"),
        ("tls_client_ca_dir: {tmp}/empty", "{tmp}/empty holds no PEM certificate under a hashed"),
        ("tls_client_ca_file: {tmp}/empty/notes", "{tmp}/empty/notes holds no PEM certificate"),
    ],
)
def test_client_cas_that_cannot_verify_anything_are_a_config_error(
    tmp_path: Path, setting: str, message: str
) -> None:
    """Found probing: tls_client_ca_dir: /nonexistent checked clean (OpenSSL reads the
    directory only when it looks a certificate up), so no client certificate could ever
    verify."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes").write_text("nothing here\n")
    server = make_certificates(tmp_path / "server")
    config = config_for(server, "tls_client_certs: optional\n" + setting.format(tmp=tmp_path))
    with pytest.raises(ConfigError, match=re.escape(message.format(tmp=tmp_path))) as caught:
        tls.server_tls(config, None)
    assert "imapd.conf:4: error: " in str(caught.value)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_optional_goes_on_without_an_identity_for_a_certificate_that_does_not_verify(
    tmp_path: Path, version: ssl.TLSVersion
) -> None:
    """Found probing: with tls_client_certs: optional, a client offering another CA's
    certificate had its handshake aborted (unknown_ca), though it could have logged in
    with a password. Now such a handshake (another CA's, revoked) completes with no
    client identity, on a resumed session too; a certificate that verifies still names
    its user."""
    pki, stranger = client_pki(tmp_path / "pki"), client_pki(tmp_path / "other", "other CA")
    pki.revoke(pki.issue("revoked"))
    pki.issue("alice")
    stranger.issue("bob")
    server = make_certificates(tmp_path / "server")
    config = config_for(
        server,
        f"tls_client_certs: optional\ntls_client_ca_file: {pki.ca_file}\n"
        f"tls_crl_file: {pki.crl_file}\n",
    )
    server_tls = tls.server_tls(config, None)
    for pki_of, name, identity, problem in (
        (stranger, "bob", None, "unable to verify the first certificate"),
        (pki, "revoked", None, "certificate revoked"),
        (pki, "alice", "alice", None),
    ):
        client = pki_of.client(server, name)
        client.minimum_version = client.maximum_version = version
        server_side, client_side = handshake(server_tls, client)
        assert tls.facts(server_side, server_tls).client_identity == identity
        assert tls.verify_problem(server_side) == problem
        server_side, resumed = handshake(server_tls, client, session=client_side.session)
        assert resumed.session_reused
        assert tls.facts(server_side, server_tls).client_identity == identity


def test_optional_lets_a_password_in_and_keeps_external_out(tmp_path: Path) -> None:
    """End to end, on pop3s: another CA's certificate gets a session, USER/PASS logs in,
    EXTERNAL is neither offered nor accepted, and the log says why."""
    stranger = client_pki(tmp_path / "other", "other CA")
    stranger.issue("alice")
    pki = client_pki(tmp_path / "pki")
    lab = Lab(
        tmp_path / "lab",
        extra_config=f"tls_client_certs: optional\ntls_client_ca_file: {pki.ca_file}\n",
    ).create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, {"pop3s": "-s"})
    context = stranger.client(lab.tls, "alice")
    try:
        with socket.create_connection(("127.0.0.1", server.ports["pop3s"]), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as secure:
                assert lines_until(secure, b"\r\n").startswith(b"+OK")
                capa = ask(secure, b"CAPA", multiline=True).split(b"\r\n")
                (sasl,) = [line for line in capa if line.startswith(b"SASL ")]
                assert b"EXTERNAL" not in sasl.split()
                assert ask(secure, b"AUTH EXTERNAL =").startswith(b"-ERR")
                assert ask(secure, b"USER alice").startswith(b"+OK")
                assert ask(secure, b"PASS wonderland").startswith(b"+OK")
    finally:
        server.stop()
    log = server.log_text()
    assert "client=- (client certificate not verified: unable to verify the first" in log


def test_a_system_wide_ca_dir_is_a_warning(tmp_path: Path) -> None:
    """Found by a re-probe: tls_client_ca_dir: /etc/ssl/certs (Debian's stock) made any
    public CA's certificate an EXTERNAL login without a word. A folder of more CAs than a
    site issues client certificates from is told, where it is set."""
    folder = hashed(tmp_path / "dir", *(selfsigned.make_ca(f"CA {n}") for n in range(51)))
    server = make_certificates(tmp_path / "server")
    config = config_for(server, f"tls_client_certs: optional\ntls_client_ca_dir: {folder}\n")
    assert [str(w) for w in tls.server_tls(config, None).warnings] == [
        f"imapd.conf:4: warning: {folder} holds 51 CA certificates, a system-wide store: a "
        "client certificate any of them issues verifies, and its name logs in with "
        "EXTERNAL; put the CAs that issue your users' certificates in a file or folder of "
        "their own"
    ]


@pytest.mark.skipif(not Path("/etc/ssl/certs").is_dir(), reason="no system CA store")
def test_no_library_warning_escapes_reading_the_system_store() -> None:
    """Found by a re-probe: with /etc/ssl/certs, cryptography warned of a CA whose serial
    number is not positive (CryptographyDeprecationWarning), raw from check-config and a
    log line of each worker at every start and reload. OpenSSL reads the directory now."""
    server_dir = Path("/etc/ssl/certs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tls._hashed_directory(imapd.from_text("", "imapd.conf"), None, str(server_dir))


def test_crls_that_fail_every_certificate_are_warnings(tmp_path: Path) -> None:
    """Found re-probing, each "configuration OK" and then every client certificate failed:
    a CRL past its next update ("CRL has expired"), and no CRL of a CA of
    tls_client_ca_file (CRL_CHECK_ALL: "unable to get certificate CRL"). Warnings, as
    Cyrus accepts both."""
    server = make_certificates(tmp_path / "server")
    pki = client_pki(tmp_path / "pki")
    extra = f"tls_client_certs: optional\ntls_client_ca_file: {pki.ca_file}\n"
    extra += f"tls_crl_file: {pki.crl_file}\n"

    def crl_warnings() -> list[str]:
        return [str(w) for w in tls.server_tls(config_for(server, extra), None).warnings]

    pki.revoke()
    assert crl_warnings() == []
    now = datetime.datetime.now(datetime.UTC)
    expired = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.ca.certificate.subject)
        .last_update(now - datetime.timedelta(days=9))
        .next_update(now - datetime.timedelta(days=2))
        .sign(pki.ca.key, hashes.SHA256())
    )
    pki.crl_file.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    said = crl_warnings()
    assert any("warning" in w and "expired at" in w for w in said), said
    assert any("holds no current CRL of the CA" in w for w in said), said
    other = client_pki(tmp_path / "other", "another CA")
    other.revoke()
    pki.crl_file.write_bytes(other.crl_file.read_bytes())  # another CA's CRL only
    said = crl_warnings()
    assert len(said) == 1 and "holds no current CRL of the CA CN=client CA" in said[0], said
