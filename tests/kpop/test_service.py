"""``pop3d -k`` at start-up: the acceptor is checked once (MIT library, keytab file, mode,
a ``pop/<host>`` key), and a fault stops the service with exit 78 and file:line, never a
surprise at the first login. Also: ``listen="kpop"`` without a kpop line in /etc/services."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pop3d.config import cyrus
from pop3d.config.imapd import ConfigError, load
from pop3d.kerberos import mit
from pop3d.kpop import service
from tests.support.kerberos import Realm
from tests.support.lab import Lab, free_port


def config_with(tmp_path: Path, keytab: Path | str) -> Path:
    path = tmp_path / "imapd.conf"
    path.write_text(f"configdirectory: {tmp_path}\n# KPOP\nsasl_keytab: {keytab}\n")
    return path


def problem(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        service.acceptor(load(path))
    (only,) = caught.value.problems
    return str(only)


def test_a_good_keytab(krb5_env: Realm, tmp_path: Path) -> None:
    keytab = krb5_env.service_keytab(tmp_path)
    acceptor = service.acceptor(load(config_with(tmp_path, keytab)))
    assert acceptor.keytab == f"FILE:{keytab}" and acceptor.host is None
    assert service.hosts(acceptor) == ["localhost"]
    entries = mit.keytab_principals(f"FILE:{keytab}")  # one per enctype
    assert set(entries) == {(krb5_env.name, ("pop", "localhost"))}


def test_a_group_readable_keytab(krb5_env: Realm, tmp_path: Path) -> None:
    keytab = krb5_env.service_keytab(tmp_path)
    keytab.chmod(0o640)
    text = problem(config_with(tmp_path, keytab))
    assert text.startswith(f"{tmp_path / 'imapd.conf'}:3: error: sasl_keytab: ")
    assert "mode 0640" in text and "chmod 600" in text


def test_a_missing_keytab(tmp_path: Path) -> None:
    assert "No such file" in problem(config_with(tmp_path, tmp_path / "none.keytab"))


def test_not_a_keytab(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.keytab"
    bogus.write_bytes(b"not a keytab at all")
    bogus.chmod(0o600)
    assert "bogus.keytab" in problem(config_with(tmp_path, bogus))


def test_a_keytab_without_a_pop_key(krb5_env: Realm, tmp_path: Path) -> None:
    keytab = krb5_env.service_keytab(tmp_path, service="host")
    text = problem(config_with(tmp_path, keytab))
    assert "no pop/<host> key" in text and f"host/localhost@{krb5_env.name}" in text


def test_only_file_keytabs(tmp_path: Path) -> None:
    assert "only file keytabs" in problem(config_with(tmp_path, "MEMORY:x"))


def test_listen_kpop_falls_back_to_1109() -> None:
    assert cyrus.parse_listen("kpop").port == 1109
    assert cyrus.parse_listen("127.0.0.1:kpop").port == 1109
    with pytest.raises(ValueError, match="unknown service name"):
        cyrus.parse_listen("no-such-service")


def _kpop_master(
    lab: Lab, tmp_path: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    """pop3d-master with one ``pop3d -k`` service, run to its exit (a start-up refusal)."""
    cyrus_conf = tmp_path / "cyrus.conf"
    cyrus_conf.write_text(
        f'SERVICES {{\n  kpop cmd="pop3d -k -C {lab.config}" listen="127.0.0.1:{free_port()}"\n}}\n'
    )
    return subprocess.run(
        [sys.executable, "-m", "pop3d.cli.master", "-C", str(lab.config), "-M", str(cyrus_conf)],
        capture_output=True,
        timeout=60,
        env=dict(os.environ, **env),
    )


def test_the_master_refuses_a_bad_keytab_with_exit_78(krb5_env: Realm, tmp_path: Path) -> None:
    keytab = krb5_env.service_keytab(tmp_path)
    keytab.chmod(0o644)
    lab = Lab(tmp_path / "lab", extra_config=f"sasl_keytab: {keytab}\n").create()
    done = _kpop_master(lab, tmp_path, {})
    assert done.returncode == 78, done.stderr
    assert f"{lab.config}:".encode() in done.stderr and b"chmod 600" in done.stderr
    assert b"Traceback" not in done.stderr
    assert b"listening" not in done.stderr  # it never served: the log does not say it did


def test_the_master_refuses_a_krb5_conf_that_does_not_parse(
    krb5_env: Realm, tmp_path: Path
) -> None:
    """Exit 78 saying which file and why (it said only "krb5_init_context failed (-17...)").
    The keytab is the default one: with sasl_keytab set, the SASL keytab check would be
    the one to refuse (sasl/keytab.py), not KPOP's."""
    keytab = krb5_env.service_keytab(tmp_path)
    lab = Lab(tmp_path / "lab").create()
    bad = tmp_path / "krb5.conf"
    bad.write_text("[libdefaults\n default_realm = \n")
    done = _kpop_master(lab, tmp_path, {"KRB5_CONFIG": str(bad), "KRB5_KTNAME": f"FILE:{keytab}"})
    assert done.returncode == 78, done.stderr
    # the -k flag has no line in imapd.conf: the file is named, no "imapd.conf:0:"
    assert f"{lab.config}: error: pop3d -k: ".encode() in done.stderr, done.stderr
    expected = f"Kerberos library cannot start ({bad}): Improper format".encode()
    assert expected in done.stderr, done.stderr
    assert b"Traceback" not in done.stderr


def test_the_master_refuses_kpop_with_tls(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab").create()
    cyrus_conf = tmp_path / "cyrus.conf"
    cyrus_conf.write_text(
        f'SERVICES {{\n  kpop cmd="pop3d -k -s -C {lab.config}" '
        f'listen="127.0.0.1:{free_port()}"\n}}\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "pop3d.cli.master", "-C", str(lab.config), "-M", str(cyrus_conf)],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 78
    assert b"cyrus.conf:2: service kpop: -k (KPOP) and -s (TLS) cannot be combined" in done.stderr


def test_kpop_is_off_unless_configured(tmp_path: Path) -> None:
    """Without -k: no keytab is looked for (the default one does not exist here) and the
    greeting comes first, no handshake."""
    lab = Lab(tmp_path / "lab").create()
    env = dict(os.environ, KRB5_KTNAME=f"FILE:{tmp_path}/none.keytab")
    done = subprocess.run(
        lab.pop3d_x(), input=b"QUIT\r\n", capture_output=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"+OK ") and done.stdout.endswith(b"+OK Bye\r\n")
