"""Issue 14: every Cyrus POP3 option either works or is reported. The ones pop3d does not
implement are named, at their file:line, when pop3d-master starts and by check-config:
never accepted silently."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pop3d.config import imapd
from pop3d.config.options import NO_EFFECT, OPTIONS
from tests.support.lab import Lab, start_server

ADMIN = [sys.executable, "-m", "pop3d.cli.admin"]

# option, value, the text its warning carries
REFUSED = (
    ("uidl_format", "dovecot", "uidl_format: dovecot has no effect here"),
    ("uidl_format", "cyrus", "uidl_format: cyrus has no effect here"),
    ("popuseacl", "on", "popuseacl: yes has no effect here"),
    ("allowanonymouslogin", "1", "allowanonymouslogin: yes has no effect here"),
    ("pop3s_popuseacl", "true", "pop3s_popuseacl: yes has no effect here"),
)


def _warnings(text: str) -> list[str]:
    return [str(p) for p in imapd.from_text(text, "t.conf").warnings]


@pytest.mark.parametrize(("option", "value", "expected"), REFUSED)
def test_an_unimplemented_option_is_a_warning_at_its_line(
    option: str, value: str, expected: str
) -> None:
    warnings = _warnings(f"servername: x\n{option}: {value}\n")
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"t.conf:2: warning: {expected} (ignored): "), warnings


@pytest.mark.parametrize("option", ["popuseacl", "allowanonymouslogin"])
def test_the_no_op_value_is_quiet(option: str) -> None:
    assert _warnings(f"{option}: no\n") == []


def test_popsubfolders_is_implemented_and_quiet() -> None:
    assert _warnings("popsubfolders: yes\n") == []


def test_every_cyrus_pop_option_is_implemented_or_reported() -> None:
    """The Cyrus POP3 options (lib/imapoptions) that pop3d could ignore: each one either has
    an effect or is in NO_EFFECT, whose doc line says so."""
    cyrus_pop = {"uidl_format", "popuseacl", "allowanonymouslogin"}
    assert set(NO_EFFECT) == cyrus_pop
    for name in cyrus_pop:
        assert OPTIONS[name].doc.startswith("Has no effect here"), name
    for name in ("popuseimapflags", "popsubfolders", "maxlogins_per_user", "maxlogins_per_host"):
        assert "compatibility" not in OPTIONS[name].doc.lower(), name


def _refused_config(lab: Lab) -> tuple[str, int]:
    text = lab.config.read_text()
    first = len(text.splitlines()) + 1
    lab.config.write_text(text + "uidl_format: uidonly\npopuseacl: yes\nallowanonymouslogin: yes\n")
    return str(lab.config), first


def test_check_config_names_each_option(lab: Lab) -> None:
    """Warnings, not errors: the master starts with them (below), so check-config says
    them and exits 0; --strict refuses them."""
    path, first = _refused_config(lab)
    cyrus_conf = lab.root / "cyrus.conf"
    cyrus_conf.write_text('SERVICES {\n  pop3 cmd="pop3d" listen="1110"\n}\n')
    command = [*ADMIN, "-C", path, "check-config", "-M", str(cyrus_conf)]
    strict = subprocess.run([*command, "--strict"], capture_output=True, timeout=60)
    assert strict.returncode == 78, strict.stdout
    assert strict.stdout.endswith(b"3 warnings, refused with --strict\n"), strict.stdout
    result = subprocess.run(command, capture_output=True, timeout=60)
    lines = result.stdout.decode().splitlines()
    assert result.returncode == 0, lines
    assert lines[-1] == "configuration OK, with 3 warnings", lines
    for offset, option, value in (
        (0, "uidl_format", "uidonly"),
        (1, "popuseacl", "yes"),
        (2, "allowanonymouslogin", "yes"),
    ):
        wanted = f"{path}:{first + offset}: warning: {option}: {value} has no effect here"
        assert sum(line.startswith(wanted) for line in lines) == 1, (wanted, lines)


def test_pop3d_master_names_each_option_once_at_start(lab: Lab) -> None:
    path, first = _refused_config(lab)
    server = start_server(lab, prefork=2)
    server.stop()
    log = server.log_text()
    for offset, option in enumerate(("uidl_format", "popuseacl", "allowanonymouslogin")):
        wanted = f"{path}:{first + offset}: warning: {option}: "
        assert log.count(wanted) == 1, (wanted, log)
        assert "has no effect here" in log.split(wanted, 1)[1].splitlines()[0]
