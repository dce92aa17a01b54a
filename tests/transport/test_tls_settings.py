"""The tls_* settings Cyrus reads, under their older names too, and settings that cannot
work refused when they are read, not at the first handshake."""

from __future__ import annotations

import datetime
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL._util import lib as _lib

from pop3d.config import imapd
from pop3d.config.imapd import ConfigError
from pop3d.config.options import OPTIONS, RENAMED
from pop3d.transport import selfsigned, tls
from pop3d.transport.tls_layer import TLSHandshakeError
from tests.support.lab import Certificates, Lab, make_certificates
from tests.transport.test_tls import client_context, config_for, handshake
from tests.transport.test_tls_client_certs import client_pki, memory_handshake
from tests.transport.test_tls_server_key import check_config, on_a_terminal, pop3s_only


def test_cyrus_older_tls_names_take_effect(tmp_path: Path) -> None:
    """Found probing: tls_cipher_list, tls_ca_file and the other names Cyrus read before
    2.5.0 were accepted and ignored; a site's old imapd.conf got the default cipher list
    and no client certificates. They are read as the newer names."""
    server = make_certificates(tmp_path / "server")
    pki = client_pki(tmp_path / "pki")
    pki.issue("alice")
    config = imapd.from_text(
        f"tls_cert_file: {server.cert}\ntls_key_file: {server.key}\n"
        f"tls_cipher_list: ECDHE-ECDSA-AES256-GCM-SHA384\ntls_versions: tls1_2\n"
        f"tls_client_certs: optional\ntls_ca_file: {pki.ca_file}\n",
        "imapd.conf",
    )
    assert len(config.warnings) == 4
    server_tls = tls.server_tls(config, None)
    client = pki.client(server, "alice")
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    server_side, _ = handshake(server_tls, client)
    assert server_side.get_cipher_name() == "ECDHE-ECDSA-AES256-GCM-SHA384"
    assert tls.facts(server_side, server_tls).client_identity == "alice"
    server_side, _ = handshake(server_tls, client_context(server))
    assert server_side.get_protocol_version_name() == "TLSv1.2"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize(("setting", "group"), [("secp384r1", "secp384r1"), ("P-521", "secp521r1")])
def test_tls_eccurve_sets_the_key_exchange_group(
    tmp_path: Path, version: ssl.TLSVersion, setting: str, group: str
) -> None:
    """Found probing: tls_eccurve (Cyrus: SSL_CTX_set1_curves) was accepted and ignored."""
    server = make_certificates(tmp_path)
    server_tls = tls.server_tls(config_for(server, f"tls_eccurve: {setting}\n"), None)
    server_side, _ = handshake(server_tls, client_context(server, version))
    assert server_side.get_group_name() == group


def test_an_unknown_tls_eccurve_is_a_config_error(tmp_path: Path) -> None:
    server = make_certificates(tmp_path)
    with pytest.raises(ConfigError, match="imapd.conf:3: error: tls_eccurve: OpenSSL knows no"):
        tls.server_tls(config_for(server, "tls_eccurve: brainpoolP999\n"), None)


def rsa_certificates(folder: Path) -> Certificates:
    """A server certificate with an RSA key: DHE suites authenticate with RSA."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = selfsigned.make_ca("lab RSA CA")
    ca.write(folder / "ca.pem")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(ca.key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").touch(mode=0o600)
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificates(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")


def dhe_client(groups: bytes = b"P-256") -> SSL.Context:
    """A TLS 1.2 client offering DHE alone and no RFC 7919 group (most DHE clients)."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    context.set_cipher_list(b"DHE-RSA-AES128-GCM-SHA256")
    assert _lib.SSL_CTX_set1_curves_list(context._context, groups) == 1
    return context


def pyopenssl_handshake(server_tls: tls.ServerTLS, client: SSL.Context) -> SSL.Connection:
    return memory_handshake(server_tls, client)[0]


def test_tls_server_dhparam_gives_dhe_its_parameters(tmp_path: Path) -> None:
    """Found probing: tls_server_dhparam was accepted and ignored, so a DHE suite was
    chosen only with a client offering an RFC 7919 group."""
    server = rsa_certificates(tmp_path / "server")
    parameters = tmp_path / "dh.pem"
    subprocess.run(
        ["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:ffdhe2048"]
        + ["-out", str(parameters)],
        check=True,
    )
    extra = "tls_ciphers: DHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256\n"
    with pytest.raises(SSL.Error, match="no shared cipher"):
        pyopenssl_handshake(tls.server_tls(config_for(server, extra), None), dhe_client())
    extra += f"tls_server_dhparam: {parameters}\n"
    server_tls = tls.server_tls(config_for(server, extra), None)
    server_side = pyopenssl_handshake(server_tls, dhe_client())
    assert server_side.get_cipher_name() == "DHE-RSA-AES128-GCM-SHA256"
    # Cyrus 3.13 ignores the option: a shared imapd.conf is told so
    assert [str(w) for w in server_tls.warnings] == [
        "imapd.conf:4: warning: tls_server_dhparam is deprecated in Cyrus 3.13, whose daemons "
        "ignore it (OpenSSL chooses their DH parameters); pop3d uses these"
    ]


def test_weak_or_unreadable_dh_parameters_are_a_config_error(tmp_path: Path) -> None:
    server = rsa_certificates(tmp_path / "server")
    weak = tmp_path / "dh1024.pem"
    subprocess.run(
        ["openssl", "dhparam", "-dsaparam", "-out", str(weak), "1024"],
        check=True,
        capture_output=True,
    )
    for path, message in (
        (weak, "dh key too small"),
        (server.cert, "no start line"),
        (tmp_path / "missing.pem", "cannot read"),
    ):
        with pytest.raises(ConfigError, match=f"imapd.conf:3: error: .*{message}"):
            tls.server_tls(config_for(server, f"tls_server_dhparam: {path}\n"), None)


def test_every_tls_option_of_cyrus_server_engine_is_read() -> None:
    """Cyrus's tls_init_serverengine (imap/tls.c) reads these; each takes effect here, under
    its name or as an older name of one. tls_sessions_db and tls_sessions_db_path (Cyrus's
    session cache shared by processes) change no protection and are ignored quietly, as
    the other daemons' options are: pyOpenSSL has no external session cache."""
    read_by_cyrus = {
        "tls_server_cert", "tls_server_key", "tls_client_ca_file", "tls_client_ca_dir",
        "tls_client_certs", "tls_versions", "tls_ciphers", "tls_prefer_server_ciphers",
        "tls_eccurve", "tls_crl_file", "tls_session_timeout", "tls_server_dhparam",
        "tls_required",
    }  # fmt: skip
    assert read_by_cyrus <= set(OPTIONS)
    assert set(RENAMED.values()) <= read_by_cyrus
    assert set(RENAMED) == {
        "tls_ca_file", "tls_ca_path", "tls_cert_file", "tls_cipher_list", "tls_key_file"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "line", "reason"),
    [
        ("tls_versions: tls1_0 tls1_1\n", 3, "no protocols available"),
        ("tls_ciphers: NULL-SHA256\ntls_versions: tls1_2\n", 3, "no shared cipher"),
        ("tls_versions: tls1_2\ntls_ciphers: ECDHE-RSA-AES128-GCM-SHA256\n", 4, "no shared"),
    ],
)
def test_settings_no_handshake_can_complete_with_are_a_config_error(
    tmp_path: Path, extra: str, line: int, reason: str
) -> None:
    """Found probing: each of these checked clean, then every handshake failed: TLS 1.0
    and 1.1 alone (OpenSSL's security level allows neither), a cipher OpenSSL knows and
    the security level drops, ciphers for another kind of key than the certificate's (an
    ECDSA one here). A handshake in memory when the settings are read finds them."""
    server = make_certificates(tmp_path)
    with pytest.raises(ConfigError, match="no TLS handshake can complete") as caught:
        tls.server_tls(config_for(server, extra), None)
    assert f"imapd.conf:{line}: error: " in str(caught.value)
    assert reason in str(caught.value)
    lab = Lab(tmp_path / "lab", extra_config=extra).create(with_tls=True)
    status, output = on_a_terminal([*check_config(lab), "-M", str(pop3s_only(tmp_path))])
    assert status == 78 and "no TLS handshake can complete" in output, output


def test_a_version_between_two_listed_ones_is_off(tmp_path: Path) -> None:
    """Found probing: tls_versions: tls1_1 tls1_3 negotiated TLS 1.2, which it does not
    list. Cyrus turns off each version not listed (SSL_OP_NO_TLSv1_2), and so do we."""
    server = make_certificates(tmp_path)
    server_tls = tls.server_tls(config_for(server, "tls_versions: tls1_1 tls1_3\n"), None)
    with pytest.raises((ssl.SSLError, TLSHandshakeError)):
        handshake(server_tls, client_context(server, ssl.TLSVersion.TLSv1_2))
    server_side, _ = handshake(server_tls, client_context(server))
    assert server_side.get_protocol_version_name() == "TLSv1.3"


@pytest.mark.parametrize("groups", ["secp384r1", "brainpoolP256r1"])
def test_the_check_client_offers_every_group_not_the_servers(tmp_path: Path, groups: str) -> None:
    """Found probing: tls_eccurve: secp384r1 (or brainpoolP256r1) with tls1_2 and a P-256
    certificate was refused ("no shared cipher", blaming tls_ciphers, unset), though real
    TLS 1.2 clients complete: the check's client took the server's groups as its own and
    so offered no curve for the certificate's key."""
    server = make_certificates(tmp_path)
    extra = f"tls_eccurve: {groups}\ntls_versions: tls1_2\n"
    server_tls = tls.server_tls(config_for(server, extra), None)
    assert server_tls.warnings == ()
    server_side = pyopenssl_handshake(server_tls, offering(f"{groups}:P-256".encode()))
    assert server_side.get_cipher_name() == "ECDHE-ECDSA-AES256-GCM-SHA384"


def offering(groups: bytes) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    assert _lib.SSL_CTX_set1_curves_list(context._context, groups) == 1
    return context


def test_a_version_no_handshake_completes_with_is_a_warning(tmp_path: Path) -> None:
    """Found probing: only the highest version was tried, so tls_ciphers for an RSA key with
    an ECDSA certificate checked clean (TLS 1.3 does not use tls_ciphers) and every TLS 1.2
    client then failed. Each enabled version is tried; one that cannot complete while
    another can is a warning naming it (a TLS 1.3-only service may be meant)."""
    server = make_certificates(tmp_path)
    extra = "tls_ciphers: ECDHE-RSA-AES256-GCM-SHA384\n"
    server_tls = tls.server_tls(config_for(server, extra), None)
    assert [str(w) for w in server_tls.warnings] == [
        "imapd.conf:3: warning: no tls1_2 handshake can complete with these settings "
        "(tls_ciphers, the certificate's key): no shared cipher; only tls1_3 clients can "
        "connect (take tls1_2 out of tls_versions if that is meant)"
    ]
    lab = Lab(tmp_path / "lab", extra_config=extra).create(with_tls=True)
    status, output = on_a_terminal([*check_config(lab), "-M", str(pop3s_only(tmp_path))])
    assert status == 0 and "warning: no tls1_2 handshake can complete" in output, output
    assert output.count("no tls1_2 handshake") == 1, output


def test_a_failed_check_blames_an_option_that_is_set(tmp_path: Path) -> None:
    """ "no shared cipher" blamed tls_ciphers when it was unset; the settings named are
    those that are set."""
    server = make_certificates(tmp_path)
    extra = "tls_versions: tls1_2\ntls_eccurve: ffdhe2048\n"
    with pytest.raises(ConfigError) as caught:
        tls.server_tls(config_for(server, extra), None)
    assert str(caught.value) == (
        "imapd.conf:4: error: no TLS handshake can complete with these settings "
        "(tls_versions, tls_eccurve, the certificate's key): no shared cipher"
    )
