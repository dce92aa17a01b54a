"""Every command's and subcommand's --help prints its usage and exits 0: argparse expands
%-sequences in help texts, so a stray % (a UIDL format's default, a path template) turns
--help into a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = [
    ("pop3d.cli.pop3d",),
    ("pop3d.cli.master",),
    ("pop3d.cli.admin",),
    *[
        ("pop3d.cli.admin", sub)
        for sub in ("passwd", "users", "deliver", "import", "check-config", "man")
    ],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_prints_usage_and_exits_0(command: tuple[str, ...]) -> None:
    module, *sub = command
    done = subprocess.run(
        [sys.executable, "-m", module, *sub, "--help"], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"usage: "), done.stdout
    assert b"Traceback" not in done.stderr + done.stdout
