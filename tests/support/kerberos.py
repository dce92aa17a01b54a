"""A throwaway MIT Kerberos realm (k5test) bound to loopback, for the GSSAPI and KPOP tests.

One realm per test process (xdist worker): starting a KDC costs about a second. It has:

* the service principal ``pop/localhost`` in ``realm.keytab`` (what pop3d accepts with);
* users ``alice`` and ``bob`` (passwords as in the lab) and ``carol`` (no maildrop), and
  ``ALICE``: another principal than ``alice`` (Kerberos names are case-sensitive);
* ``realm.env``: KRB5_CONFIG, KRB5CCNAME (alice's ticket after :meth:`Realm.kinit`), ...

The KDC listens on 127.0.0.1 only (``kdc_listen``), never on every address.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import k5test
import pytest

SERVICE = "pop"
HOST = "localhost"
ROTATED_HOST = "rotated.test"  # pop/rotated.test: its key changed at the KDC after export
PASSWORDS = {
    "alice": "wonderland",
    "bob": "builder",
    "carol": "carol-secret",
    "ALICE": "looking-glass",
}

_LOOPBACK_KDC = {
    "realms": {
        "$realm": {
            "kdc_listen": "127.0.0.1:$port0",
            "kdc_tcp_listen": "127.0.0.1:$port0",
        }
    }
}


@dataclass
class Realm:
    k5: k5test.K5Realm

    @property
    def name(self) -> str:
        return str(self.k5.realm)

    @property
    def env(self) -> dict[str, str]:
        return dict(self.k5.env)

    @property
    def keytab(self) -> Path:
        """The keytab holding pop/localhost (and host/localhost, which k5test adds)."""
        return Path(self.k5.keytab)

    @property
    def krb5_conf(self) -> Path:
        return Path(self.k5.env["KRB5_CONFIG"])

    def principal(self, user: str) -> str:
        return f"{user}@{self.name}"

    def kinit(self, user: str, ccache: Path) -> dict[str, str]:
        """A ticket cache holding ``user``'s TGT; the environment a client needs to use it."""
        env = dict(self.k5.env, KRB5CCNAME=f"FILE:{ccache}")
        subprocess.run(
            ["kinit", self.principal(user)],
            input=PASSWORDS[user].encode() + b"\n",
            env=env,
            check=True,
            capture_output=True,
        )
        return env

    def service_keytab(self, folder: Path, service: str = SERVICE, host: str = HOST) -> Path:
        """A keytab with only ``service/host`` (mode 0600), as a site would give pop3d."""
        path = folder / f"{service}.keytab"
        self.k5.run_kadminl(f"ktadd -k {path} -norandkey {service}/{host}")
        os.chmod(path, 0o600)
        return path

    def stale_keytab(self, folder: Path) -> Path:
        """A keytab with only ``pop/rotated.test`` (mode 0600), whose key the KDC has
        changed since (``cpw -randkey``: a key rotation without updating the keytab), so
        every ticket the KDC issues for it has a kvno the keytab lacks. Its own principal,
        made once per realm, so the other tests' ``pop/localhost`` is left alone."""
        made = Path(self.k5.tmpdir) / "rotated.keytab"
        principal = f"{SERVICE}/{ROTATED_HOST}"
        if not made.exists():
            self.k5.run_kadminl(f"addprinc -randkey {principal}")
            self.k5.run_kadminl(f"ktadd -k {made}.new -norandkey {principal}")
            self.k5.run_kadminl(f"cpw -randkey {principal}")
            os.rename(f"{made}.new", made)
        path = folder / f"{SERVICE}-stale.keytab"
        shutil.copyfile(made, path)
        os.chmod(path, 0o600)
        return path


def _free_port_base() -> int:
    """k5test uses five ports from its base (61000 unless told): with one realm per xdist
    worker they must differ, so take a base whose five ports are free now."""
    for _ in range(50):
        base = random.randrange(20000, 60000, 10)
        try:
            for offset in range(5):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError("no five free ports for the test KDC")


def make_realm() -> k5test.K5Realm:
    """A started realm. The five ports were free when chosen, but another process (a
    parallel test's connection) can take one before the KDC binds it: then krb5kdc exits 1
    and we try again on other ports."""
    for attempt in range(4):
        try:
            k5 = k5test.K5Realm(
                start_kadmind=False,
                kdc_conf=_LOOPBACK_KDC,
                get_creds=False,
                portbase=_free_port_base(),
            )
        except Exception:  # k5test raises a bare Exception when krb5kdc fails to start
            if attempt == 3:
                raise
            continue
        break
    k5.addprinc(f"{SERVICE}/{HOST}")
    k5.extract_keytab(f"{SERVICE}/{HOST}", k5.keytab)
    for user, password in PASSWORDS.items():
        k5.addprinc(user, password)
    return k5


@pytest.fixture(scope="session")
def kerberos_realm() -> Iterator[Realm]:
    k5 = make_realm()
    try:
        yield Realm(k5)
    finally:
        k5.stop()
        shutil.rmtree(k5.tmpdir, ignore_errors=True)
