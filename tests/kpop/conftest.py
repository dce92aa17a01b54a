"""Fixtures for the KPOP tests: the shared throwaway realm, an in-process Kerberos
environment (the acceptor and the ctypes sendauth client run in this process, so they read
KRB5_CONFIG from os.environ), and a ticket cache per user."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pop3d.kerberos.mit import Acceptor
from tests.support.kerberos import Realm, kerberos_realm

__all__ = ["kerberos_realm"]


@pytest.fixture
def krb5_env(kerberos_realm: Realm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Realm:
    """KRB5_CONFIG of the realm, and a replay cache of this test's own."""
    monkeypatch.setenv("KRB5_CONFIG", str(kerberos_realm.krb5_conf))
    monkeypatch.setenv("KRB5RCACHEDIR", str(tmp_path))
    monkeypatch.delenv("KRB5RCACHETYPE", raising=False)
    return kerberos_realm


@pytest.fixture
def ccache(krb5_env: Realm, tmp_path: Path) -> Callable[[str], str]:
    """user -> the name of a fresh ticket cache holding the user's TGT."""

    def make(user: str) -> str:
        return krb5_env.kinit(user, tmp_path / f"ccache-{user}")["KRB5CCNAME"]

    return make


@pytest.fixture
def acceptor(krb5_env: Realm) -> Acceptor:
    """What pop3d -k would run with: the realm's keytab (it also holds host/localhost, so a
    ticket for that service has a key here and must still be refused), pop/localhost."""
    return Acceptor(keytab=str(krb5_env.keytab), host="localhost")
