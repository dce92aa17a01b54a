"""TLS: contexts from imapd.conf, client certificates, channel bindings, policy over real
TLS, hostile handshakes, certificate reload."""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import signal
import socket
import ssl
import time
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

from pop3d.config import imapd
from pop3d.config.imapd import ConfigError
from pop3d.transport import selfsigned, tls
from pop3d.transport.tls_layer import TLSHandshakeError, TLSLayer
from tests.server.test_network import rss_kib, worker_pids
from tests.support.lab import Certificates, Lab, make_certificates, start_server


def config_for(certs: Certificates, extra: str = "") -> imapd.Config:
    return imapd.from_text(
        f"tls_server_cert: {certs.cert}\ntls_server_key: {certs.key}\n{extra}", "imapd.conf"
    )


def handshake(
    server: tls.ServerTLS, client: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[SSL.Connection, ssl.SSLObject]:
    """A real TLS handshake between our server layer and a Python ssl client joined by
    memory BIOs; then one octet from the server, which carries TLS 1.3's session tickets to
    the client. Raises TLSHandshakeError (server) or ssl.SSLError (client) on a failure."""
    layer = TLSLayer(server.context)
    from_server, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(
        from_server, from_client, server_hostname="localhost", session=session
    )
    client_done = False
    for _ in range(10):
        if not client_done:
            try:
                client_side.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        to_server = from_client.read()
        if to_server or not layer.handshake_done:
            try:
                layer.handshake(to_server)
            finally:  # the server's alert too
                from_server.write(layer.outgoing())
        if client_done and layer.handshake_done:
            from_server.write(layer.wrap(b"+"))
            assert client_side.read(1) == b"+"
            return layer.connection, client_side
    raise AssertionError("handshake did not finish")


def client_context(certs: Certificates, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if version is not None:
        context.minimum_version = context.maximum_version = version
    return context


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_channel_bindings_match_the_client_side(tmp_path: Path, version: ssl.TLSVersion) -> None:
    certs = make_certificates(tmp_path)
    server_tls = tls.server_tls(config_for(certs), None)
    server_side, client_side = handshake(server_tls, client_context(certs, version))
    facts = tls.facts(server_side, server_tls)
    bindings = dict(facts.channel_bindings)
    der = client_side.getpeercert(binary_form=True)
    assert der is not None
    # our test certificates are signed with SHA-256, so RFC 5929 says SHA-256 of the DER
    assert bindings["tls-server-end-point"] == hashlib.sha256(der).digest()
    if version is ssl.TLSVersion.TLSv1_2:
        unique = client_side.get_channel_binding("tls-unique")
        assert unique and bindings["tls-unique"] == unique
        assert "tls-exporter" not in bindings  # RFC 9266 defines it for TLS 1.3
    else:
        assert "tls-unique" not in bindings  # unsafe on TLS 1.3
        assert bindings["tls-exporter"] == server_side.export_keying_material(
            b"EXPORTER-Channel-Binding", 32, b""
        )
        assert len(bindings["tls-exporter"]) == 32
    assert facts.version == ("TLSv1.2" if version is ssl.TLSVersion.TLSv1_2 else "TLSv1.3")
    assert facts.ssf >= 128


@pytest.mark.parametrize(("offered", "chosen"), [(["imap", "pop3"], "pop3"), ([], None)])
def test_alpn_pop3(tmp_path: Path, offered: list[str], chosen: str | None) -> None:
    """ALPN "pop3" when the client offers it; no ALPN to a client that offers none."""
    certs = make_certificates(tmp_path)
    context = client_context(certs)
    if offered:
        context.set_alpn_protocols(offered)
    _, client_side = handshake(tls.server_tls(config_for(certs), None), context)
    assert client_side.selected_alpn_protocol() == chosen


@pytest.mark.parametrize("offered", [["imap"], ["http/1.1", "h2"]])
def test_alpn_for_another_protocol_is_refused(tmp_path: Path, offered: list[str]) -> None:
    """Found probing: a client asking only for other protocols got a POP3 session. RFC 7301
    §3.2: a fatal no_application_protocol alert (and no cross-protocol session: ALPACA)."""
    certs = make_certificates(tmp_path)
    context = client_context(certs)
    context.set_alpn_protocols(offered)
    layer = TLSLayer(tls.server_tls(config_for(certs), None).context)
    from_server, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = context.wrap_bio(from_server, from_client, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client_side.do_handshake()
    with pytest.raises(TLSHandshakeError, match=f"application protocol {offered[0]}"):
        layer.handshake(from_client.read())
    from_server.write(layer.outgoing())  # the alert
    with pytest.raises(ssl.SSLError, match="alert no application protocol"):
        client_side.do_handshake()


def _client_certificate(tmp_path: Path, ca: selfsigned.Issued) -> selfsigned.Issued:
    client = selfsigned.issue(ca, "alice", email="alice@lab.test", client=True)
    client.write(tmp_path / "client.pem", tmp_path / "client.key")
    return client


@pytest.mark.parametrize(("source", "expected"), [("cn", "alice"), ("email", "alice@lab.test")])
def test_client_certificate_identity(tmp_path: Path, source: str, expected: str) -> None:
    ca = selfsigned.make_ca("client CA")
    ca.write(tmp_path / "client-ca.pem")
    _client_certificate(tmp_path, ca)
    certs = make_certificates(tmp_path / "server")
    config = config_for(
        certs,
        f"tls_client_certs: optional\ntls_client_ca_file: {tmp_path / 'client-ca.pem'}\n"
        f"tls_client_identity: {source}\n",
    )
    server_tls = tls.server_tls(config, None)
    context = client_context(certs)
    context.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    server_side, _ = handshake(server_tls, context)
    assert tls.facts(server_side, server_tls).client_identity == expected
    # optional: a client without a certificate is still served, with no identity
    server_side, _ = handshake(server_tls, client_context(certs))
    assert tls.facts(server_side, server_tls).client_identity is None


@pytest.mark.parametrize("name", ["c" * 70 + "@lab.test", "Åsa Łukasiewicz"])
def test_a_client_certificate_name_is_read_without_a_warning(tmp_path: Path, name: str) -> None:
    """Found probing: a CN over RFC 5280's 64 characters, which a trusted CA may still
    issue, made cryptography warn when its Name was read: two raw lines on standard error
    in the master's log, once per worker. The name is read by OpenSSL, in UTF-8."""
    ca = selfsigned.make_ca("client CA")
    ca.write(tmp_path / "client-ca.pem")
    key = ec.generate_private_key(ec.SECP256R1())
    with warnings.catch_warnings():  # cryptography warns as it builds such a name, too
        warnings.simplefilter("ignore", UserWarning)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name, _validate=False)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .sign(ca.key, hashes.SHA256())
    )
    selfsigned.Issued(certificate, key).write(tmp_path / "client.pem", tmp_path / "client.key")
    certs = make_certificates(tmp_path / "server")
    config = config_for(
        certs,
        f"tls_client_certs: require\ntls_client_ca_file: {tmp_path / 'client-ca.pem'}\n",
    )
    server_tls = tls.server_tls(config, None)
    context = client_context(certs)
    context.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    server_side, _ = handshake(server_tls, context)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tls.facts(server_side, server_tls).client_identity == name


def test_a_client_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    trusted = selfsigned.make_ca("client CA")
    trusted.write(tmp_path / "client-ca.pem")
    stranger = selfsigned.make_ca("stranger")
    _client_certificate(tmp_path, stranger)
    certs = make_certificates(tmp_path / "server")
    config = config_for(
        certs, f"tls_client_certs: require\ntls_client_ca_file: {tmp_path / 'client-ca.pem'}\n"
    )
    context = client_context(certs)
    context.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    with pytest.raises(TLSHandshakeError, match="certificate verify failed"):
        handshake(tls.server_tls(config, None), context)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("tls_versions: tls9\n", "unknown version 'tls9'"),
        ("tls_ciphers: NOTHING-AT-ALL\n", "OpenSSL accepts none"),
        ("tls_client_certs: require\n", "needs tls_client_ca_file"),
    ],
)
def test_bad_tls_settings_name_the_line(tmp_path: Path, extra: str, message: str) -> None:
    certs = make_certificates(tmp_path)
    with pytest.raises(ConfigError, match=message) as caught:
        tls.server_tls(config_for(certs, extra), None)
    assert "imapd.conf:3" in str(caught.value)


def test_default_versions_are_tls12_and_tls13(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    server = tls.server_tls(config_for(certs), None)
    for version, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
        server_side, _ = handshake(server, client_context(certs, version))
        assert server_side.get_protocol_version_name() == name
    with pytest.raises((ssl.SSLError, TLSHandshakeError)):
        handshake(server, _tls11_client(certs))


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize(
    ("setting", "lifetime"),
    [("", 1440 * 60), ("tls_session_timeout: 119", 119 * 60), ("tls_session_timeout: 0", 0)]
    + [("tls_session_timeout: 25h", 1440 * 60)],  # Cyrus's cap: 24 hours
)
def test_session_resumption_never_outlives_tls_session_timeout(
    tmp_path: Path, version: ssl.TLSVersion, setting: str, lifetime: int
) -> None:
    """Sessions resume (by ticket, or by id on TLS 1.2) for tls_session_timeout (OpenSSL's
    SSL_CTX_set_timeout, which also sets the tickets' lifetime hint); 0 ends resumption on
    both versions, session-id resumption on TLS 1.2 included."""
    certs = make_certificates(tmp_path)
    server = tls.server_tls(config_for(certs, setting), None)
    assert server.context.get_timeout() == (lifetime or server.context.get_timeout())
    client = client_context(certs, version)
    _, first = handshake(server, client)
    assert not first.session_reused
    assert first.session is not None
    server_side, second = handshake(server, client, session=first.session)
    assert second.session_reused is bool(lifetime)
    if version is ssl.TLSVersion.TLSv1_2:  # tls-unique: our Finished first on a resumption
        bindings = dict(tls.facts(server_side, server).channel_bindings)
        assert bindings["tls-unique"] == second.get_channel_binding("tls-unique")
    if lifetime:
        assert first.session.has_ticket


def _tls11_client(certs: Certificates) -> ssl.SSLContext:
    """An old client: TLS 1.1 only (deprecated in Python, which is the point)."""
    context = client_context(certs)
    context.set_ciphers("DEFAULT@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


# --- over the network ---------------------------------------------------------------------


def lines_until(sock: socket.socket | ssl.SSLSocket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def ask(sock: socket.socket | ssl.SSLSocket, line: bytes, multiline: bool = False) -> bytes:
    sock.sendall(line + b"\r\n")
    return lines_until(sock, b"\r\n.\r\n" if multiline else b"\r\n")


def stls(sock: socket.socket, certs: Certificates) -> ssl.SSLSocket:
    assert ask(sock, b"STLS") == b"+OK Begin TLS negotiation now\r\n"
    return client_context(certs).wrap_socket(sock, server_hostname="localhost")


def test_policy_over_real_tls(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab", extra_config="allowplaintext: no\n").create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            assert lines_until(raw, b"\r\n").startswith(b"+OK")
            capa = ask(raw, b"CAPA", multiline=True).split(b"\r\n")
            assert b"STLS" in capa and b"USER" not in capa
            assert ask(raw, b"USER alice").startswith(b"-ERR [AUTH] USER/PASS is only permitted")
            assert ask(raw, b"STLS now") == b"-ERR Unexpected extra argument\r\n"
            secure = stls(raw, lab.tls)
            capa = ask(secure, b"CAPA", multiline=True).split(b"\r\n")
            assert b"STLS" not in capa and b"USER" in capa
            assert ask(secure, b"STLS") == b"-ERR TLS is already active\r\n"
            assert ask(secure, b"USER alice").startswith(b"+OK")
            assert ask(secure, b"PASS wonderland").startswith(b"+OK")
            assert ask(secure, b"STLS") == b"-ERR STLS is not valid in the TRANSACTION state\r\n"
            assert ask(secure, b"STAT") == b"+OK 7 28700\r\n"
            secure.close()
    finally:
        server.stop()
    log = server.log_text()
    assert "TLS TLSv1.3" in log
    assert re.search(
        r"login: \S+ \[\S+\] alice plaintext\+TLS User logged in "
        r".* tls=<TLSv1\.3> .* ssf=<(128|256)>",
        log,
    )


def test_tls_required(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab", extra_config="tls_required: yes\n").create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, {"pop3": "", "pop3s": "-s"})
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            greeting = lines_until(raw, b"\r\n")
            assert b"<" not in greeting  # no APOP challenge before TLS
            capa = ask(raw, b"CAPA", multiline=True).split(b"\r\n")
            assert b"USER" not in capa and b"STLS" in capa
            assert ask(raw, b"USER alice").startswith(b"-ERR [AUTH] USER/PASS is only permitted")
            refused = ask(raw, b"APOP alice 0123456789abcdef0123456789abcdef")
            assert refused.startswith(b"-ERR [AUTH] APOP is only permitted")
            secure = stls(raw, lab.tls)
            assert ask(secure, b"USER alice").startswith(b"+OK")
            secure.close()
        context = client_context(lab.tls)
        with socket.create_connection(("127.0.0.1", server.ports["pop3s"]), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as secure:
                greeting = lines_until(secure, b"\r\n")
                assert b"<" in greeting  # on pop3s the challenge is offered (Cyrus does too)
                assert ask(secure, b"USER alice").startswith(b"+OK")
    finally:
        server.stop()


def test_a_null_cipher_is_no_protection(tmp_path: Path) -> None:
    """Found probing: a TLS session with a NULL cipher (ssf 0) counted as encrypted, so
    with allowplaintext: no USER/PASS and PLAIN were offered and taken in clear. libsasl
    counts an external layer as protection only above ssf 1, and so do we."""
    lab = Lab(
        tmp_path / "lab",
        extra_config="allowplaintext: no\ntls_ciphers: eNULL:@SECLEVEL=0\ntls_versions: tls1_2\n",
    ).create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, {"pop3s": "-s"})
    context = client_context(lab.tls, ssl.TLSVersion.TLSv1_2)
    context.set_ciphers("eNULL:@SECLEVEL=0")
    try:
        with socket.create_connection(("127.0.0.1", server.ports["pop3s"]), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as secure:
                cipher = secure.cipher()
                assert cipher is not None and "NULL" in cipher[0]
                lines_until(secure, b"\r\n")
                capa = ask(secure, b"CAPA", multiline=True).split(b"\r\n")
                assert b"USER" not in capa
                (sasl,) = [line for line in capa if line.startswith(b"SASL ")]
                assert b"SCRAM-SHA-256" in sasl.split() and b"PLAIN" not in sasl.split()
                refused = ask(secure, b"USER alice")
                assert refused.startswith(b"-ERR [AUTH] USER/PASS is only permitted on an")
                assert b"TLS cipher does not encrypt (ssf 0)" in refused
                assert ask(secure, b"AUTH PLAIN").startswith(b"-ERR")
    finally:
        server.stop()
    assert "ssf=0" in server.log_text()


@pytest.mark.parametrize(("ssf", "allowed"), [("2", True), ("1", False)])
def test_external_ssf_counts_as_protected(tmp_path: Path, ssf: str, allowed: bool) -> None:
    lab = Lab(tmp_path / "lab", extra_config="allowplaintext: no\n").create()
    server = start_server(lab, {"pop3": f"-p {ssf}"})
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            lines_until(raw, b"\r\n")
            assert ask(raw, b"USER alice").startswith(b"+OK" if allowed else b"-ERR [AUTH]")
    finally:
        server.stop()


def test_hostile_handshakes_leave_the_server_serving(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab", extra_config="tls_handshake_timeout: 1s\n").create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, {"pop3s": "-s"})
    port = server.ports["pop3s"]
    try:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
            stalled.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc")  # half a ClientHello
            try:
                assert stalled.recv(100) == b""
            except ConnectionResetError:
                pass
        assert time.monotonic() - started < 5
        with socket.create_connection(("127.0.0.1", port), timeout=10) as quitter:
            quitter.sendall(b"\x16\x03\x01\x00")  # and close mid-handshake
        with (  # refused with the alert that says why (RFC 8446 §6.2)
            pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"),
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ):
            _tls11_client(lab.tls).wrap_socket(raw, server_hostname="localhost")
        context = client_context(lab.tls)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as secure:
                assert lines_until(secure, b"\r\n").startswith(b"+OK")
    finally:
        server.stop()
    log = server.log_text()
    assert log.count("TLS handshake failed") >= 3
    assert "Traceback" not in log


def test_sighup_reloads_the_certificate_without_dropping_sessions(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab").create(with_tls=True)
    assert lab.tls is not None
    old = lab.tls
    server = start_server(lab, {"pop3s": "-s"})
    port = server.ports["pop3s"]
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        session = client_context(old).wrap_socket(raw, server_hostname="localhost")
        lines_until(session, b"\r\n")
        assert ask(session, b"USER bob").startswith(b"+OK")
        new = make_certificates(tmp_path / "renewed")
        lab.tls.cert.write_bytes(new.cert.read_bytes())
        lab.tls.key.write_bytes(new.key.read_bytes())
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while server.log_text().count("TLS certificate reloaded") < 1:
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw2:
            with client_context(new).wrap_socket(raw2, server_hostname="localhost") as fresh:
                assert lines_until(fresh, b"\r\n").startswith(b"+OK")
        assert ask(session, b"PASS builder").startswith(b"+OK")  # the old session lives on
        assert ask(session, b"STAT") == b"+OK 3 6000\r\n"
        session.close()
    finally:
        server.stop()


def test_a_refusal_on_pop3s_is_the_close_alone(tmp_path: Path) -> None:
    """Found probing: over maxchild, or with a shutdown file, a pop3s client got the
    -ERR in clear where its ServerHello belonged (a handshake failure)."""
    lab = Lab(tmp_path / "lab").create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, {"pop3s": "-s"}, maxchild=1)
    port = server.ports["pop3s"]
    context = client_context(lab.tls)
    try:
        held = None
        for _ in range(50):  # start_server's own probe may hold the one slot a moment
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            try:
                held = context.wrap_socket(raw, server_hostname="localhost")
                break
            except (ConnectionResetError, ssl.SSLError):
                raw.close()
                time.sleep(0.1)
        assert held is not None
        with held, socket.create_connection(("127.0.0.1", port), timeout=10) as refused:
            assert lines_until(held, b"\r\n").startswith(b"+OK")
            refused.sendall(b"\x16\x03\x01\x00")  # a client's first bytes
            try:
                assert refused.recv(1024) == b""
            except ConnectionResetError:
                pass
        folder = lab.root / "config" / "msg"
        folder.mkdir()
        (folder / "shutdown").write_text("maintenance now\n")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as refused:
            try:
                assert refused.recv(1024) == b""
            except ConnectionResetError:
                pass
        log = server.log_text()
        assert "share of maxchild" in log and "shutdown file present" in log
    finally:
        server.stop()


def _stls_then_reset(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(b"STLS\r\n")
        assert reader.readline().startswith(b"+OK")
        reader.close()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def test_an_stls_that_never_completes_leaves_nothing_behind(tls_lab: Lab) -> None:
    """Found probing: each STLS whose handshake never finished (the client gone after the
    +OK) kept its session alive with the STLS command's suspended handler, 1.3 KB a
    connection, linear; the same on pop3s, or a finished STLS, kept nothing."""
    server = start_server(tls_lab)
    try:
        (worker,) = worker_pids(server)
        for _ in range(300):  # the worker's own first growth (allocator arenas, caches)
            _stls_then_reset(server.port)
        time.sleep(0.5)
        before = rss_kib(worker)
        for _ in range(800):
            _stls_then_reset(server.port)
        time.sleep(0.5)
        grown = rss_kib(worker) - before
        assert grown < 400, f"the worker grew {grown} KiB over 800 unfinished STLS"
    finally:
        server.stop()


def test_a_fifo_as_the_certificate_is_refused_not_waited_on(tmp_path: Path) -> None:
    """Found probing: a FIFO at tls_server_cert had OpenSSL wait on it for ever: check-config
    hung, and so would the master's start and a worker's SIGHUP. Refused at once, named;
    on SIGHUP the worker keeps the certificate it has and serves on."""
    lab = Lab(tmp_path / "lab").create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, {"pop3s": "-s"})
    port = server.ports["pop3s"]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_context(lab.tls).wrap_socket(raw, server_hostname="localhost") as first:
                assert lines_until(first, b"\r\n").startswith(b"+OK")  # the worker is up
        saved = lab.tls.cert.read_bytes()
        lab.tls.cert.unlink()
        os.mkfifo(lab.tls.cert)
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "TLS reload failed, keeping the old certificate" not in server.log_text():
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_context(lab.tls).wrap_socket(raw, server_hostname="localhost") as session:
                assert lines_until(session, b"\r\n").startswith(b"+OK")  # served, as before
        with pytest.raises(ConfigError, match="is not a regular file"):
            tls.server_tls(config_for(lab.tls), None)
        lab.tls.cert.unlink()
        lab.tls.cert.write_bytes(saved)
    finally:
        server.stop()
