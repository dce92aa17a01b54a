"""Kerberos fixtures for the SASL tests: one throwaway realm per test process
(``tests.support.kerberos``), ticket caches made with kinit once, and the realm's
environment (KRB5_CONFIG, replay-cache directory) set for the test that asks for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kerberos import Realm, kerberos_realm

__all__ = ["kerberos_realm"]


@pytest.fixture(scope="session")
def ticket_caches(
    kerberos_realm: Realm, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """alice's and bob's TGTs, each in its own cache."""
    folder = tmp_path_factory.mktemp("ccaches")
    caches = {}
    for user in ("alice", "bob"):
        path = folder / f"{user}.cc"
        kerberos_realm.kinit(user, path)
        caches[user] = path
    return caches


@pytest.fixture
def krb5_env(kerberos_realm: Realm, monkeypatch: pytest.MonkeyPatch) -> Iterator[Realm]:
    """The realm's krb5.conf and replay-cache directory for this test; no default keytab
    or ccache, so every test names the ones it uses."""
    env = kerberos_realm.env
    monkeypatch.setenv("KRB5_CONFIG", env["KRB5_CONFIG"])
    monkeypatch.setenv("KRB5RCACHEDIR", env["KRB5RCACHEDIR"])
    monkeypatch.setenv("KRB5_KTNAME", "FILE:/nonexistent/pop3d-test.keytab")
    monkeypatch.setenv("KRB5CCNAME", "FILE:/nonexistent/pop3d-test.ccache")
    yield kerberos_realm


@pytest.fixture(autouse=True)
def _keytab_alarm_anew(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own once-a-minute keytab alarm (kerberos/alarm.py): one test's line
    held back another's in the same process."""
    from pop3d.kerberos.alarm import Alarm
    from pop3d.sasl import kerberos

    monkeypatch.setattr(kerberos, "_KEYTAB_ALARM", Alarm(kerberos.log))
