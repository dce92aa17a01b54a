"""tls_server_key: an encrypted key is refused, never asked a passphrase for, at start, in
check-config and at SIGHUP; a key others may read is refused."""

from __future__ import annotations

import base64
import os
import pty
import select
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pop3d.config import imapd
from pop3d.config.imapd import ConfigError
from pop3d.transport import tls
from tests.support.lab import Lab, free_port, make_certificates, start_server
from tests.transport.test_tls import client_context, lines_until

ENCRYPTED = "the key is encrypted; pop3d cannot read a passphrase"

# Runs a command with a terminal of its own as its controlling terminal (/dev/tty), kept
# open for as long as the command runs: what a master started by hand has, and where
# OpenSSL asks for a passphrase.
_ON_A_TERMINAL = """\
import fcntl, os, sys, termios
master, slave = os.openpty()
os.set_inheritable(master, True)
os.setsid()
fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
os.execvp(sys.argv[1], sys.argv[1:])
"""


def encrypt(key_path: Path, traditional: bool = False) -> None:
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    form = serialization.PrivateFormat.TraditionalOpenSSL
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            form if traditional else serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )


def check_config(lab: Lab) -> list[str]:
    return [sys.executable, "-m", "pop3d.cli.admin", "-C", str(lab.config), "check-config"]


def pop3s_only(folder: Path) -> Path:
    """A cyrus.conf with one pop3s service (check-config reads /etc/cyrus.conf without one)."""
    path = folder / "cyrus.conf"
    listen = f"127.0.0.1:{free_port()}"
    path.write_text(f'SERVICES {{\n  pop3s cmd="pop3d -s" listen="{listen}"\n}}\n')
    return path


def on_a_terminal(argv: list[str], timeout: float = 20.0) -> tuple[int | None, str]:
    """``argv`` run with a terminal as its controlling terminal (nobody typing): its exit
    status, None if it still ran after ``timeout`` (then killed), and what it wrote."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.execv(argv[0], argv)  # noqa: S606 - this interpreter, our own arguments
    output = b""
    deadline = time.monotonic() + timeout
    status: int | None = None
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child is gone
                    chunk = b""
                output += chunk
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(wait_status)
                break
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return status, output.decode(errors="replace")


@pytest.mark.parametrize("traditional", [False, True])
def test_an_encrypted_key_is_a_config_error(tmp_path: Path, traditional: bool) -> None:
    certs = make_certificates(tmp_path)
    encrypt(certs.key, traditional)
    config = imapd.from_text(
        f"tls_server_cert: {certs.cert}\ntls_server_key: {certs.key}\n", "imapd.conf"
    )
    with pytest.raises(ConfigError, match=ENCRYPTED) as caught:
        tls.server_tls(config, None)
    assert f"imapd.conf:2: error: {certs.key}: {ENCRYPTED}" in str(caught.value)


def test_check_config_and_the_master_refuse_an_encrypted_key_on_a_terminal(
    tmp_path: Path,
) -> None:
    """Found probing: run from a terminal, check-config and pop3d-master waited for a
    passphrase on /dev/tty (and a typed one made check-config say OK for a key the
    service could not load). Now both refuse at once, exit 78, naming the key."""
    lab = Lab(tmp_path / "lab").create(with_tls=True)
    assert lab.tls is not None
    encrypt(lab.tls.key)
    cyrus_conf = pop3s_only(tmp_path)
    status, output = on_a_terminal([*check_config(lab), "-M", str(cyrus_conf)])
    assert status == 78, output
    assert ENCRYPTED in output and "pass phrase" not in output.lower()
    master = [sys.executable, "-m", "pop3d.cli.master", "-C", str(lab.config)]
    status, output = on_a_terminal([*master, "-M", str(cyrus_conf)])
    assert status == 78, output
    assert ENCRYPTED in output and "pass phrase" not in output.lower()


def test_sighup_with_an_encrypted_key_keeps_the_old_certificate(tmp_path: Path) -> None:
    """Found probing: a key replaced by an encrypted one and SIGHUP sent to a master with a
    terminal: the master's check waited on /dev/tty for ever (no worker restarted after
    that, SIGTERM unheard), and a worker's reload blocked its event loop, pop3s no longer
    answering. Now the reload is refused, each worker keeps the certificate it has, as
    for any key it cannot load, and serves on."""
    lab = Lab(tmp_path / "lab").create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, {"pop3s": "-s"}, wrapper=[sys.executable, "-c", _ON_A_TERMINAL])
    port = server.ports["pop3s"]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_context(lab.tls).wrap_socket(raw, server_hostname="localhost") as first:
                assert lines_until(first, b"\r\n").startswith(b"+OK")  # the worker is up
        encrypt(lab.tls.key)
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "TLS reload failed, keeping the old certificate" not in server.log_text():
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.05)
        log = server.log_text()
        assert "reload refused, serving on as before" in log and ENCRYPTED in log
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_context(lab.tls).wrap_socket(raw, server_hostname="localhost") as session:
                assert lines_until(session, b"\r\n").startswith(b"+OK")
    finally:
        assert server.stop() == 0


def test_a_certificate_block_marked_encrypted_is_refused_on_a_terminal(tmp_path: Path) -> None:
    """OpenSSL reads the certificate chain file itself, and asked on /dev/tty for the
    passphrase of a block marked encrypted: check-config waited for one."""
    lab = Lab(tmp_path / "lab").create(with_tls=True)
    assert lab.tls is not None
    body = base64.encodebytes(bytes(48)).decode()
    lab.tls.cert.write_text(
        "-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\n"
        f"DEK-Info: AES-128-CBC,{'00' * 16}\n\n{body}-----END CERTIFICATE-----\n"
    )
    status, output = on_a_terminal([*check_config(lab), "-M", str(pop3s_only(tmp_path))])
    assert status == 78, output
    assert "cannot load certificate" in output and "bad password read" in output


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o666])
def test_a_key_others_may_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    """Found probing: a key of mode 0644 was taken, where the credential file and the keytab
    are refused when others can read them. Refused at start, in check-config (exit 78,
    naming the key) and at SIGHUP; its group may read it (Debian's ssl-cert group:
    /etc/ssl/private keys are 0640 root:ssl-cert)."""
    lab = Lab(tmp_path / "lab").create(with_tls=True)
    assert lab.tls is not None
    for allowed in (0o600, 0o640, 0o660):
        lab.tls.key.chmod(allowed)
        assert tls.server_tls(imapd.load(lab.config), None).context is not None
    lab.tls.key.chmod(mode)
    with pytest.raises(ConfigError, match=f"mode 0{mode:o} lets others read or write it"):
        tls.server_tls(imapd.load(lab.config), None)
    status, output = on_a_terminal([*check_config(lab), "-M", str(pop3s_only(tmp_path))])
    assert status == 78, output
    assert f"{lab.tls.key}: mode 0{mode:o} lets others read or write it" in output
