"""The README's first command: scripts/setup.sh (without --test) and the embedded demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pop3d import demo
from tests.support.lab import ROOT


def test_setup_without_test_extras_succeeds() -> None:
    """scripts/serve.sh runs this first; it once exited 1 silently under set -e."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr


def test_scripts_parse() -> None:
    for script in (ROOT / "scripts").glob("*.sh"):
        assert subprocess.run(["bash", "-n", str(script)], timeout=30).returncode == 0, script
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci  # CI runs exactly the README's test command
    assert "bash scripts/test.sh" in (ROOT / "README.md").read_text()


def test_demo_is_complete_and_idempotent(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    password = demo.prepare(root)
    assert demo.prepare(root) == password  # a second run keeps password, certs and mail
    assert len(list((root / "spool" / demo.DEMO_USER / "Maildir" / "new").iterdir())) == 3
    assert (root / "PASSWORD").stat().st_mode & 0o077 == 0
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "pop3d.cli.admin",
            "-C",
            str(root / "imapd.conf"),
            "check-config",
            "-M",
            str(root / "cyrus.conf"),
        ],
        capture_output=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout
    session = subprocess.run(
        [sys.executable, "-m", "pop3d", "-X", "-C", str(root / "imapd.conf")],
        input=b"CAPA\r\nUSER demo\r\nQUIT\r\n",
        capture_output=True,
        timeout=60,
    )
    lines = session.stdout.split(b"\r\n")
    assert b"STLS" in lines  # the demo offers STLS on the plain port ...
    assert b"-ERR [AUTH] USER/PASS is only permitted on an encrypted connection" in session.stdout


def test_demo_answers_help_and_refuses_an_option_as_its_folder(tmp_path: Path) -> None:
    """`python -m pop3d.demo --help` once prepared a demo installation in ./--help."""
    for argv, code in ((["--help"], 0), (["-x"], 2), ([], 2)):
        done = subprocess.run(
            [sys.executable, "-m", "pop3d.demo", *argv],
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == code, (argv, done.stderr)
        assert b"usage: python -m pop3d.demo" in done.stdout + done.stderr
        assert list(tmp_path.iterdir()) == []
