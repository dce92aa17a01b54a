"""Start-up keytab checks: each broken keytab is a ConfigError naming imapd.conf:line."""

from __future__ import annotations

import gc
import os
import pwd
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from pop3d.config.imapd import ConfigError, from_text
from pop3d.sasl.keytab import acceptor_keytab
from tests.support.kerberos import Realm

pytestmark = pytest.mark.usefixtures("krb5_env")


def config(tmp_path: Path, keytab: str | None, extra: str = "") -> object:
    text = "servername: localhost\n" + extra
    if keytab is not None:
        text += f"sasl_keytab: {keytab}\n"
    path = tmp_path / "imapd.conf"
    path.write_text(text)
    return from_text(text, str(path))


def check(tmp_path: Path, keytab: str | None, extra: str = "", servername: str = "localhost"):
    return acceptor_keytab(config(tmp_path, keytab, extra), servername)  # type: ignore[arg-type]


def broken(tmp_path: Path, keytab: str | None, match: str, line: int, **kw: str) -> None:
    with pytest.raises(ConfigError, match=match) as caught:
        check(tmp_path, keytab, **kw)
    problem = caught.value.problems[0]
    assert (Path(problem.path).name, problem.line) == ("imapd.conf", line)


def test_good_keytab(krb5_env: Realm, tmp_path: Path) -> None:
    keytab = krb5_env.service_keytab(tmp_path)
    assert check(tmp_path, str(keytab)) == str(keytab)
    assert check(tmp_path, f"FILE:{keytab}") == str(keytab)


def test_kerberos_off_checks_nothing(tmp_path: Path) -> None:
    assert check(tmp_path, None) is None
    assert check(tmp_path, None, extra="sasl_mech_list: PLAIN SCRAM-SHA-256\n") is None


def test_missing(tmp_path: Path) -> None:
    broken(tmp_path, str(tmp_path / "nope.keytab"), "No such file", 2)


def test_group_readable(krb5_env: Realm, tmp_path: Path) -> None:
    keytab = krb5_env.service_keytab(tmp_path)
    os.chmod(keytab, 0o640)
    broken(tmp_path, str(keytab), "mode 0640", 2)


def _as_nobody(run: Callable[[], object]) -> str:
    """``run()`` in a child process that has given up root for ``nobody``; what it raised
    (its ConfigError as ``file:line: message``), "" if nothing. Root reads any file, and
    the tests run as root in CI: an unreadable keytab needs someone it is unreadable to."""
    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        status = 1
        try:
            os.close(read)
            # The realm's krb5.conf sits in a folder private to root; the library only
            # has to start (the check reads the keytab named in imapd.conf).
            os.environ["KRB5_CONFIG"] = os.devnull
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                run()
                said = ""
            except ConfigError as exc:
                problem = exc.problems[0]
                said = f"{Path(problem.path).name}:{problem.line}: {exc}"
                status = 0
            except BaseException as exc:  # the parent says what it was
                said = f"{type(exc).__name__}: {exc}"
            else:
                status = 0
            os.write(write, said.encode())
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the child as nobody: {said}"
    return said


def test_unreadable(krb5_env: Realm, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        keytab = krb5_env.service_keytab(tmp_path)
        os.chmod(keytab, 0o000)
        broken(tmp_path, str(keytab), "cannot read", 2)
        return
    # As root: the keytab where nobody can reach it (tmp_path is private to root) but not
    # read it, and the check run as nobody.
    public = Path(tempfile.mkdtemp(prefix="pop3d-keytab-", dir="/tmp"))
    try:
        public.chmod(0o755)
        keytab = krb5_env.service_keytab(public)
        os.chmod(keytab, 0o000)
        parsed = config(tmp_path, str(keytab))
        said = _as_nobody(lambda: acceptor_keytab(parsed, "localhost"))  # type: ignore[arg-type]
        assert said.startswith("imapd.conf:2: ") and "cannot read it: Permission denied" in said
        # and the same keytab readable (0600, root's) passes for root: only the mode differs
        os.chmod(keytab, 0o600)
        assert check(tmp_path, str(keytab)) == str(keytab)
    finally:
        shutil.rmtree(public, ignore_errors=True)


def test_a_krb5_conf_that_does_not_parse(
    krb5_env: Realm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library cannot start: a configuration error at start-up (it was a traceback and
    exit 70), naming the option that turned Kerberos on and the file at fault."""
    keytab = krb5_env.service_keytab(tmp_path)
    bad = tmp_path / "krb5.conf"
    bad.write_text("[libdefaults\n default_realm = \n")
    # Credentials earlier tests in this process left to the collector are released first:
    # freed under the broken krb5.conf, python-gssapi's Creds.__dealloc__ raises (an
    # "exception ignored" warning in whichever test the collector happens to run in).
    gc.collect()
    monkeypatch.setenv("KRB5_CONFIG", str(bad))
    broken(tmp_path, str(keytab), "Kerberos library cannot start", 2)
    with pytest.raises(ConfigError, match=rf"\({bad}\): Improper format[^0-9]*$"):
        check(tmp_path, str(keytab))


def test_not_a_keytab(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.keytab"
    bogus.write_bytes(b"this is not a keytab\n")
    os.chmod(bogus, 0o600)
    broken(tmp_path, str(bogus), "not a keytab", 2)


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "dir"
    folder.mkdir(mode=0o700)
    broken(tmp_path, str(folder), "not a regular file", 2)


def test_without_our_key(krb5_env: Realm, tmp_path: Path) -> None:
    keytab = krb5_env.service_keytab(tmp_path, service="host")
    broken(tmp_path, str(keytab), "no key for pop/localhost", 2)


def test_key_for_another_host(krb5_env: Realm, tmp_path: Path) -> None:
    keytab = krb5_env.service_keytab(tmp_path)
    with pytest.raises(ConfigError, match="no key for pop/mail.example.com"):
        check(tmp_path, str(keytab), servername="mail.example.com")


def test_other_keytab_types_refused(tmp_path: Path) -> None:
    broken(tmp_path, "MEMORY:x", "only file keytabs", 2)


def test_default_keytab_checked_when_mech_list_names_kerberos(
    krb5_env: Realm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = "sasl_mech_list: GSSAPI PLAIN\n"
    broken(tmp_path, None, "nonexistent", 2, extra=extra)  # krb5_env's KRB5_KTNAME
    keytab = tmp_path / "default.keytab"
    shutil.copy(krb5_env.service_keytab(tmp_path), keytab)
    os.chmod(keytab, 0o600)
    monkeypatch.setenv("KRB5_KTNAME", f"FILE:{keytab}")
    assert check(tmp_path, None, extra=extra) == str(keytab)
