"""The tls_* settings Cyrus reads, under their older names too, and settings that cannot
work refused when they are read, not at the first handshake."""

from __future__ import annotations

import ssl
from pathlib import Path

from pop3d.config import imapd
from pop3d.transport import tls
from tests.support.lab import make_certificates
from tests.transport.test_tls import client_context, handshake
from tests.transport.test_tls_client_certs import client_pki


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
