"""pop3d-admin given input it cannot use answers with one line and a sysexits code, never a
traceback (exit 70 is for bugs): user names and passwords that are not UTF-8, a closed
standard input, a credential file that is a directory, an import source that is missing or
not an mbox. Found probing: each of these ended in a traceback or the wrong exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.lab import Lab, free_port, make_certificates

ADMIN = [sys.executable, "-m", "pop3d.cli.admin"]
NOT_UTF8 = b"a\xffb"


def _run(
    command: list[str | bytes], stdin: bytes = b"", *, close_stdin: bool = False
) -> subprocess.CompletedProcess[bytes]:
    if close_stdin:  # descriptor 0 closed, as `pop3d-admin deliver u <&-` starts it
        command = ["sh", "-c", 'exec "$@" <&-', "sh", *command]
        return subprocess.run(command, capture_output=True, timeout=60, check=False)
    return subprocess.run(command, input=stdin, capture_output=True, timeout=60, check=False)


def _admin(
    lab: Lab, *args: str | bytes, stdin: bytes = b"", close_stdin: bool = False
) -> subprocess.CompletedProcess[bytes]:
    return _run([*ADMIN, "-C", str(lab.config), *args], stdin, close_stdin=close_stdin)


def _one_line(result: subprocess.CompletedProcess[bytes], code: int, text: str) -> None:
    assert result.returncode == code, result.stderr
    assert b"Traceback" not in result.stderr
    assert result.stderr.decode().strip() == f"pop3d-admin: {text}"


@pytest.mark.parametrize(
    "command", [["passwd"], ["passwd", "-d"], ["deliver"], ["import", "--mbox", "/x"]]
)
def test_a_user_name_that_is_not_utf8(lab: Lab, command: list[str]) -> None:
    result = _admin(lab, *command, NOT_UTF8, stdin=b"secret\n")
    _one_line(result, 65, "user name 'a\\xffb' is not valid UTF-8")


def test_a_password_that_is_not_utf8_is_refused(lab: Lab) -> None:
    before = lab.credentials.read_bytes()
    result = _admin(lab, "passwd", "carol", stdin=NOT_UTF8 + b"\n")
    _one_line(result, 65, "the password is not valid UTF-8")
    assert lab.credentials.read_bytes() == before
    accepted = _admin(lab, "passwd", "carol", stdin="pässwörd\n".encode())
    assert accepted.returncode == 0, accepted.stderr


def test_a_closed_standard_input(lab: Lab) -> None:
    _one_line(
        _admin(lab, "deliver", "alice", close_stdin=True),
        66,
        "no message to deliver to alice: standard input is closed",
    )
    _one_line(
        _admin(lab, "passwd", "alice", close_stdin=True),
        66,
        "no password: standard input is closed",
    )


def test_a_credential_file_that_is_a_directory_is_named_with_its_option(lab: Lab) -> None:
    folder = lab.root / "passwd-folder"
    folder.mkdir(mode=0o700)
    lab.config.write_text(lab.config.read_text() + f"credentials_file: {folder}\n")
    line = len(lab.config.read_text().splitlines())
    problem = f"credentials_file {folder}: not a regular file"
    _one_line(_admin(lab, "users"), 78, problem)
    _one_line(_admin(lab, "deliver", "alice", stdin=b"Subject: x\n\nx\n"), 78, problem)
    checked = _admin(lab, "check-config", "-M", "/dev/null")
    assert checked.returncode == 78
    assert f"{lab.config}:{line}: error: {problem}\n".encode() in checked.stdout
    served = _run([*lab.pop3d_x()], stdin=b"QUIT\r\n")
    assert served.returncode == 78
    assert f"{lab.config}:{line}: error: {problem}".encode() in served.stderr


def test_import_exit_codes_for_a_missing_or_unusable_source(lab: Lab, tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    _one_line(
        _admin(lab, "import", "--mbox", str(missing), "alice"),
        66,
        f"import stopped: {missing}: No such file or directory",
    )
    _one_line(
        _admin(lab, "import", "--dovecot", str(missing), "alice"),
        66,
        f"import stopped: {missing}: No such file or directory",
    )
    not_mbox = tmp_path / "passwd"
    not_mbox.write_text("root:x:0:0:root:/root:/bin/sh\n")
    _one_line(
        _admin(lab, "import", "--mbox", str(not_mbox), "alice"),
        65,
        f"import refused: {not_mbox}: not an mbox (does not start with 'From ')",
    )
    maildir = tmp_path / "dovecot"
    for sub in ("new", "cur"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "dovecot-uidlist").write_text("3 V1 N2\nx :y\n")
    _one_line(
        _admin(lab, "import", "--dovecot", str(maildir), "alice"),
        65,
        f"import refused: {maildir}/dovecot-uidlist:2: not '<uid> [ext...] :<filename>'",
    )


def test_an_imap_ca_file_it_cannot_use_is_one_line(lab: Lab, tmp_path: Path) -> None:
    """Found probing: --imap-ca naming no file, a folder or text that is no certificate was
    OpenSSL's error with a traceback, exit 70 ("internal error"), and --imap-ca without TLS
    was passed over without a word. Now one line each: 66 as for a --password-file it
    cannot read, 65 as for one with nothing in it, 64 without TLS; a FIFO is refused, not
    waited on for ever. A usable file gets as far as the connection (69: nobody there)."""
    password = tmp_path / "password"
    password.write_text("secret\n")
    server = f"127.0.0.1:{free_port()}"

    def imported(ca: Path, *tls: str) -> subprocess.CompletedProcess[bytes]:
        tls = tls or ("--imap-tls", "imaps")
        return _admin(lab, "import", "--imap", server, *tls, "--imap-ca", str(ca),
                      "--password-file", str(password), "alice")  # fmt: skip

    missing = tmp_path / "nonexistent.pem"
    _one_line(imported(missing), 66, f"--imap-ca {missing}: No such file or directory")
    _one_line(imported(tmp_path), 66, f"--imap-ca {tmp_path}: not a regular file")
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    _one_line(imported(fifo), 66, f"--imap-ca {fifo}: not a regular file")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("garbage\n")
    refused = imported(garbage)  # OpenSSL's words in brackets: "no certificate or crl found"
    assert refused.returncode == 65, refused.stderr
    assert refused.stderr.startswith(
        f"pop3d-admin: --imap-ca {garbage}: no CA certificate".encode()
    )
    assert refused.stderr.count(b"\n") == 1 and b"Traceback" not in refused.stderr
    ca = make_certificates(tmp_path / "tls").ca
    _one_line(
        imported(ca, "--imap-tls", "none"), 64, "--imap-ca needs --imap-tls starttls or imaps"
    )
    _one_line(
        imported(ca, "--imap-tls", "starttls"),
        69,
        f"import stopped: cannot connect to {server}: Connection refused",
    )
