"""The examples in contrib/: systemd units that systemd itself accepts, and inetd lines whose
command lines pop3d accepts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pop3d.cli import master
from pop3d.cli.pop3d import parse_arguments
from tests.support.lab import ROOT

CONTRIB = ROOT / "contrib"
BIN = Path(sys.executable).parent


def test_systemd_units_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze (Debian systemd) is not installed")
    units = []
    for unit in sorted((CONTRIB / "systemd").iterdir()):
        text = unit.read_text().replace("/usr/bin/pop3d", f"{BIN}/pop3d")
        (tmp_path / unit.name).write_text(text)
        units.append(str(tmp_path / unit.name))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # only our units' problems count (the host's own units may have theirs)
    ours = [line for line in done.stderr.splitlines() if "pop3d" in line]
    assert not ours, done.stderr
    assert {Path(u).name for u in units} == {
        "pop3d.socket",
        "pop3d-pop3s.socket",
        "pop3d.service",
        "pop3d-master.service",
    }


def test_socket_units_name_the_services_pop3d_knows() -> None:
    names = {
        unit.name: line.split("=", 1)[1]
        for unit in (CONTRIB / "systemd").glob("*.socket")
        for line in unit.read_text().splitlines()
        if line.startswith("FileDescriptorName=")
    }
    assert names == {"pop3d.socket": "pop3", "pop3d-pop3s.socket": "pop3s"}


def test_inetd_lines_are_pop3d_command_lines() -> None:
    lines = [
        line.split()
        for line in (CONTRIB / "inetd.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [fields[0] for fields in lines] == ["pop3", "pop3s"]
    for fields in lines:
        assert fields[1:4] == ["stream", "tcp", "nowait"]
        assert fields[5] == "/usr/bin/pop3d" and fields[6] == "pop3d"
        args = parse_arguments(fields[7:])
        assert args.stdio
        assert args.implicit_tls == (fields[0] == "pop3s")


def test_master_unit_uses_flags_the_commands_have() -> None:
    text = (CONTRIB / "systemd" / "pop3d-master.service").read_text()
    assert "pop3d-master -C /etc/imapd.conf -M /etc/cyrus.conf" in text
    assert set("CM") <= set(master.GETOPT)
    assert "pop3d-admin -C /etc/imapd.conf check-config -M" in text  # -C before the verb
