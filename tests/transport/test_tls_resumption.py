"""TLS session resumption over the network, as a polling mail client sees it: a real
pop3d-master with one worker per service, real clients (Python's ssl with ``session=``,
``openssl s_client -sess_out/-sess_in``) on pop3s and STLS, a whole session each time.

One worker per service: the ticket keys are the worker's own (OpenSSL makes them at random
for each context, and pyOpenSSL exposes no call to set them; SECURITY.md, "TLS session
resumption"), so a client that lands on another worker gets a full handshake, never an
error."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.support.lab import Certificates, Lab, Server, start_server

SERVICES = {"pop3": "", "pop3s": "-s"}


def _lines_until(sock: ssl.SSLSocket | socket.socket, end: bytes) -> bytes:
    data = b""
    for _ in range(1000):
        if data.endswith(end):
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _ask(sock: ssl.SSLSocket | socket.socket, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return _lines_until(sock, b"\r\n")


def client(certs: Certificates) -> ssl.SSLContext:
    """A mail client's context (Python's defaults); its sessions can be offered only
    through it, as a client keeps one for its life."""
    return ssl.create_default_context(cafile=str(certs.ca))


def poll(
    server: Server, transport: str, context: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[bool, ssl.SSLSession]:
    """One polling session (log in, STAT, QUIT) offering ``session``; whether the server
    resumed it, and the session to offer next time."""
    port = server.ports[transport]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        if transport == "pop3":  # STLS
            assert _lines_until(raw, b"\r\n").startswith(b"+OK")
            assert _ask(raw, b"STLS").startswith(b"+OK")
        secure = context.wrap_socket(raw, server_hostname="localhost", session=session)
        if transport == "pop3s":
            assert _lines_until(secure, b"\r\n").startswith(b"+OK")
        assert _ask(secure, b"USER bob").startswith(b"+OK")
        assert _ask(secure, b"PASS builder").startswith(b"+OK")
        assert _ask(secure, b"STAT").startswith(b"+OK")
        assert _ask(secure, b"QUIT").startswith(b"+OK")
        resumed = secure.session_reused
        fresh = secure.session  # with the tickets that came after the handshake
        secure.close()
    assert fresh is not None
    return resumed, fresh


@pytest.mark.parametrize("transport", ["pop3s", "pop3"])
def test_a_polling_client_is_resumed_every_time(tmp_path: Path, transport: str) -> None:
    lab = Lab(tmp_path / "lab").create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, SERVICES)
    context = client(lab.tls)
    try:
        resumed, session = poll(server, transport, context, None)
        assert not resumed
        for _ in range(3):
            resumed, session = poll(server, transport, context, session)
            assert resumed
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()


@pytest.mark.parametrize("transport", ["pop3s", "pop3"])
def test_tls_session_timeout_0_never_resumes(tmp_path: Path, transport: str) -> None:
    lab = Lab(tmp_path / "lab", extra_config="tls_session_timeout: 0\n").create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, SERVICES)
    context = client(lab.tls)
    try:
        resumed, session = poll(server, transport, context, None)
        assert not resumed
        for _ in range(2):
            resumed, session = poll(server, transport, context, session)
            assert not resumed
    finally:
        server.stop()


def test_a_session_from_another_server_gets_a_full_handshake(tmp_path: Path) -> None:
    """Same certificate, another instance (other ticket keys): the ticket is ignored, the
    handshake is a full one and the session goes on; back home, the ticket still works."""
    first = Lab(tmp_path / "first").create(with_tls=True)
    assert first.tls is not None
    second = Lab(tmp_path / "second", extra_config="").create()
    shutil.copytree(first.root / "tls", second.root / "tls")
    with second.config.open("a") as config:
        config.write(
            f"tls_server_cert: {second.root / 'tls/cert.pem'}\n"
            f"tls_server_key: {second.root / 'tls/key.pem'}\n"
        )
    one = start_server(first, SERVICES)
    two = start_server(second, SERVICES)
    context = client(first.tls)
    try:
        _, home_session = poll(one, "pop3s", context, None)
        resumed, _ = poll(two, "pop3s", context, home_session)
        assert not resumed
        resumed, _ = poll(two, "pop3", context, home_session)
        assert not resumed
        resumed, _ = poll(one, "pop3s", context, home_session)
        assert resumed
    finally:
        one.stop()
        two.stop()
    failed = [  # start_server's probe of the pop3s port closes mid-handshake: not a refusal
        line
        for line in two.log_text().splitlines()
        if "TLS handshake failed" in line and "connection closed during" not in line
    ]
    assert not failed, failed


@pytest.mark.interop
@pytest.mark.parametrize("transport", ["pop3s", "pop3"])
def test_openssl_s_client_is_resumed(tmp_path: Path, transport: str) -> None:
    """``openssl s_client -sess_out`` then ``-sess_in``: "New" the first time, "Reused"
    after, on implicit TLS and through ``-starttls pop3``."""
    assert shutil.which("openssl"), "openssl is installed by scripts/setup.sh"
    lab = Lab(tmp_path / "lab").create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, SERVICES)
    stored = tmp_path / "session.pem"
    try:
        outputs = []
        for sessions in (["-sess_out", str(stored)], ["-sess_in", str(stored)]):
            command = [
                "openssl", "s_client", "-connect", f"127.0.0.1:{server.ports[transport]}",
                "-servername", "localhost", "-CAfile", str(lab.tls.ca), "-verify_return_error",
                "-crlf", "-ign_eof", *sessions,
                *(["-starttls", "pop3"] if transport == "pop3" else []),
            ]  # fmt: skip
            done = subprocess.run(
                command, input=b"USER bob\nPASS builder\nQUIT\n", capture_output=True, timeout=30
            )
            assert done.returncode == 0, done.stderr.decode(errors="replace")
            outputs.append(done.stdout.decode(errors="replace"))
        assert "\nNew, TLSv1.3" in outputs[0], outputs[0]
        assert "\nReused, TLSv1.3" in outputs[1], outputs[1]
        assert "+OK" in outputs[1].split("Reused, TLSv1.3", 1)[1]
    finally:
        server.stop()
