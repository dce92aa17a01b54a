"""Client certificates: revocation (tls_crl_file), the CA names sent in the
CertificateRequest, and what tls_client_certs: optional does with a certificate that does
not verify."""

from __future__ import annotations

import datetime
import signal
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

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
