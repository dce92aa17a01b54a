"""A real Cyrus 3.6 (Debian 12's packages) for the tests: ``master`` with imapd (clear and
IMAPS, STARTTLS offered), lmtpd on a UNIX socket, and one pop3d per old-site setting, all
on free loopback ports with a private config folder.

The packages are never installed (their postinst would start system services, and
cyrus-pop3d conflicts with dovecot-pop3d): ``apt-get download`` and ``dpkg -x`` into
``tests/.cache/cyrus`` (git-ignored; ``/var/cache/pop3d-tests/cyrus`` when the checkout
lies under a folder the ``mail`` user cannot enter; ``POP3D_CYRUS_CACHE`` names another), done
once by ``scripts/setup.sh --test`` (``python -m tests.support.cyrus``), so the tests need
no network. The binaries load Cyrus's libraries from there (LD_LIBRARY_PATH) and the
system's for the rest (libsasl2 and its sasldb plug-in, installed by setup.sh).

Authentication: sasldb (``saslpasswd2 -f``) through ``sasl_pwcheck_method: auxprop``;
the administrator is ``cyrus`` (``admins: cyrus``), which may act for any user. Cyrus drops
to ``cyrus_user: mail`` (uid 8 on every Debian), so its folder lives outside pytest's
root-only tmp_path.

pop3d services (each its own imapd.conf, the rest shared), by name:

    pop3cyrus    uidl_format: cyrus      pop3uidonly  uidl_format: uidonly
    pop3dovecot  uidl_format: dovecot    pop3courier  uidl_format: courier
    pop3flags    uidl_format: cyrus, popuseimapflags: yes
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.lab import Certificates, free_port, make_certificates

ROOT = Path(__file__).resolve().parents[2]


def _everyone_can_enter(folder: Path) -> bool:
    """Every folder from / down to ``folder`` lets others through (o+x)."""
    return all(os.stat(part).st_mode & 0o001 for part in (folder, *folder.parents))


# Cyrus's master drops to RUN_AS before it runs imapd, lmtpd and pop3d, so that user must
# reach the binaries: in the checkout where it can (the usual case), else (a checkout under
# a root-only folder such as `mktemp -d`) in a system cache folder.
CACHE = Path(
    os.environ.get("POP3D_CYRUS_CACHE")
    or (
        ROOT / "tests" / ".cache" / "cyrus"
        if _everyone_can_enter(ROOT)
        else "/var/cache/pop3d-tests/cyrus"
    )
)
PACKAGES = ("cyrus-common", "cyrus-imapd", "cyrus-pop3d")  # Debian 12: 3.6.1
LIBDIR = "usr/lib/x86_64-linux-gnu"
BINDIR = "usr/lib/cyrus/bin"
RUN_AS = "mail"
ADMIN = "cyrus"
ADMIN_PASSWORD = "cyrus-admin-pw"
REALM = "localhost"  # servername: the realm sasldb entries are made in
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
CLIENT_TIMEOUT = 30.0
GREETING_TIMEOUT = 10.0  # a first attempt at a Cyrus pop3d greeting (Cyrus.pop3)
POP3NEWUIDL = "/shared/vendor/cmu/cyrus-imapd/pop3newuidl"

POP3_SERVICES = {
    "pop3cyrus": "uidl_format: cyrus\n",
    "pop3uidonly": "uidl_format: uidonly\n",
    "pop3dovecot": "uidl_format: dovecot\n",
    "pop3courier": "uidl_format: courier\n",
    "pop3flags": "uidl_format: cyrus\npopuseimapflags: yes\n",
}

IMAPD_CONF = """\
# Test Cyrus 3.6 (tests/support/cyrus.py): a private folder, sasldb, plaintext allowed
# (loopback only), TLS from the test CA, no delays.
configdirectory: {root}/config
partition-default: {root}/spool
defaultpartition: default
lmtpsocket: {root}/socket/lmtp
idlesocket: {root}/socket/idle
notifysocket: {root}/socket/notify
proc_path: {root}/proc
servername: {realm}
cyrus_user: {user}
admins: {admin}
altnamespace: no
unixhierarchysep: no
lmtp_downcase_rcpt: yes
duplicatesuppression: 0
munge8bit: 0
failedloginpause: 0
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {root}/config/sasldb2
sasl_mech_list: PLAIN LOGIN
tls_server_cert: {cert}
tls_server_key: {key}
"""


def unpack() -> Path:
    """Debian's Cyrus packages unpacked into :data:`CACHE` (``apt-get download``,
    ``dpkg -x``); made once, then reused."""
    done = CACHE / ".unpacked"
    if done.exists() and done.read_text().split() == list(PACKAGES):
        return CACHE
    debs = CACHE.parent / "cyrus-debs"
    debs.mkdir(parents=True, exist_ok=True)
    fetched = subprocess.run(
        ["apt-get", "download", "-q", *PACKAGES],
        cwd=debs,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if fetched.returncode != 0:
        raise RuntimeError(
            "cannot download Cyrus (run scripts/setup.sh --test where the network is "
            f"reachable): {fetched.stderr.strip()}"
        )
    if CACHE.exists():
        shutil.rmtree(CACHE)
    CACHE.mkdir(parents=True)
    for package in PACKAGES:
        deb = sorted(debs.glob(f"{package}_*.deb"))[-1]
        subprocess.run(["dpkg", "-x", str(deb), str(CACHE)], check=True, timeout=120)
    linked = subprocess.run(
        ["ldd", str(CACHE / BINDIR / "imapd"), str(CACHE / BINDIR / "pop3d")],
        env=dict(os.environ, LD_LIBRARY_PATH=str(CACHE / LIBDIR)),
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    absent = sorted({line.split()[0] for line in linked.splitlines() if "not found" in line})
    if absent:
        raise RuntimeError(f"Cyrus needs libraries that are not installed: {', '.join(absent)}")
    done.write_text("\n".join(PACKAGES) + "\n")
    return CACHE


def version() -> str:
    debs = sorted((CACHE.parent / "cyrus-debs").glob("cyrus-imapd_*.deb"))
    return debs[-1].name.split("_")[1] if debs else "?"


@dataclass
class Cyrus:
    """One running Cyrus; :meth:`start` it, :meth:`stop` it."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pop3d-cyrus-")))
    package: Path = CACHE
    ports: dict[str, int] = field(default_factory=dict)
    tls: Certificates | None = None
    process: subprocess.Popen[bytes] | None = None
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.root / "imapd.conf"

    @property
    def log(self) -> Path:
        return self.root / "master.log"

    @property
    def lmtp_socket(self) -> Path:
        return self.root / "socket" / "lmtp"

    def _bin(self, name: str) -> str:
        return str(self.package / BINDIR / name)

    def _env(self) -> dict[str, str]:
        return dict(os.environ, LD_LIBRARY_PATH=str(self.package / LIBDIR))

    def start(self) -> Cyrus:
        self.package = unpack()
        self.root.chmod(0o755)
        for sub in ("config", "config/socket", "spool", "socket", "proc"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.tls = make_certificates(self.root / "tls")
        base = IMAPD_CONF.format(
            root=self.root,
            realm=REALM,
            user=RUN_AS,
            admin=ADMIN,
            cert=self.tls.cert,
            key=self.tls.key,
        )
        self.config.write_text(base)
        for name, extra in POP3_SERVICES.items():
            (self.root / f"{name}.conf").write_text(base + extra)
        self.add_user(ADMIN, ADMIN_PASSWORD)
        account = pwd.getpwnam(RUN_AS)
        for path in (self.root, *self.root.rglob("*")):
            os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
        self.ports = {name: free_port() for name in ("imap", "imaps", *POP3_SERVICES)}
        services = {
            "imap": f'cmd="{self._bin("imapd")} -C {self.config}"',
            "imaps": f'cmd="{self._bin("imapd")} -s -C {self.config}"',
            **{
                name: f'cmd="{self._bin("pop3d")} -C {self.root / name}.conf"'
                for name in POP3_SERVICES
            },
        }
        lines = [
            "START {",
            f'  recover cmd="{self._bin("ctl_cyrusdb")} -r -C {self.config}"',
            "}",
            "SERVICES {",
            *(
                f'  {name} {command} listen="127.0.0.1:{self.ports[name]}" proto=tcp4 '
                "prefork=0 maxchild=20"
                for name, command in services.items()
            ),
            f'  lmtpunix cmd="{self._bin("lmtpd")} -C {self.config}" '
            f'listen="{self.lmtp_socket}" prefork=0 maxchild=4',
            "}",
            "EVENTS {",
            "}",
            "DAEMON {",
            "}",
        ]
        (self.root / "cyrus.conf").write_text("\n".join(lines) + "\n")
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                [
                    self._bin("master"),
                    "-D",
                    "-C",
                    str(self.config),
                    "-M",
                    str(self.root / "cyrus.conf"),
                    "-p",
                    str(self.root / "master.pid"),
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.root,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        pending: list[tuple[int, object]] = [
            (socket.AF_INET, ("127.0.0.1", port)) for port in self.ports.values()
        ]
        pending.append((socket.AF_UNIX, str(self.lmtp_socket)))
        while pending:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"cyrus master exited {self.process.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"cyrus did not listen on {pending}: {self.tail()}")
            family, address = pending[0]
            with contextlib.suppress(OSError), socket.socket(family) as probe:
                probe.settimeout(1.0)
                probe.connect(address)  # type: ignore[arg-type]
                pending.pop(0)
                continue
            time.sleep(0.05)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_TIMEOUT)
        # services the master started in its session, should any outlive it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- users, mailboxes, mail --------------------------------------------------------

    def add_user(self, user: str, password: str) -> None:
        """A sasldb entry (``saslpasswd2 -f``), readable by Cyrus."""
        sasldb = self.root / "config" / "sasldb2"
        subprocess.run(
            ["saslpasswd2", "-p", "-c", "-f", str(sasldb), "-u", REALM, user],
            input=password.encode(),
            check=True,
            capture_output=True,
            timeout=CLIENT_TIMEOUT,
        )
        account = pwd.getpwnam(RUN_AS)
        os.chown(sasldb, account.pw_uid, account.pw_gid)
        self.passwords[user] = password

    @contextlib.contextmanager
    def imap(self, user: str = "") -> Iterator[imaplib.IMAP4]:
        """An IMAP session as the administrator, acting for ``user`` if one is given."""
        connection = imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=CLIENT_TIMEOUT)
        try:
            response = f"{user}\0{ADMIN}\0{ADMIN_PASSWORD}".encode()
            connection.authenticate("PLAIN", lambda _challenge: response)
            yield connection
        finally:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                connection.logout()

    def create_user(self, user: str, password: str) -> None:
        self.add_user(user, password)
        with self.imap() as connection:
            status, data = connection.create(f"user.{user}")
            assert status == "OK", data

    def deliver(self, user: str, messages: list[bytes]) -> None:
        """Over LMTP, as an MTA would: Cyrus stores each with CRLF line ends and its own
        Return-Path and Received header on top."""
        with smtplib.LMTP(str(self.lmtp_socket), timeout=CLIENT_TIMEOUT) as lmtp:
            lmtp.ehlo("tests")
            for message in messages:
                refused = lmtp.sendmail("sender@lab.test", [user], message)
                assert not refused, refused

    def store_flags(self, user: str, uid: int, flags: str) -> None:
        """``UID STORE uid +FLAGS (flags)`` as the user (\\Seen is per user in Cyrus)."""
        with self.imap(user) as connection:
            status, data = connection.select("INBOX")
            assert status == "OK", data
            status, data = connection.uid("STORE", str(uid), "+FLAGS", f"({flags})")
            assert status == "OK", data

    def set_pop3newuidl(self, user: str, value: bool) -> None:
        """Cyrus turns the option back on for a mailbox with no message (mailbox.c), so
        this is for a mailbox that has mail."""
        with self.imap() as connection:
            text = "true" if value else "false"
            status, data = connection.xatom(
                "SETMETADATA", f"user.{user}", f'({POP3NEWUIDL} "{text}")'
            )
            assert status == "OK", data

    def spool(self, user: str) -> Path:
        """The folder of the user's INBOX in the partition (``mbpath``): one file per
        message, named ``<uid>.``."""
        done = subprocess.run(
            [self._bin("mbpath"), "-C", str(self.config), f"user.{user}"],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
            check=True,
        )
        return Path(done.stdout.strip())

    def pop3(self, service: str, user: str) -> poplib.POP3:
        # Cyrus's master forks a pop3d per connection (prefork=0); once in a CI run of
        # 1,538 tests one such child never greeted (30 s). The peer's start-up is not what
        # these tests check: a second connection gets a fresh child.
        try:
            client = poplib.POP3("127.0.0.1", self.ports[service], timeout=GREETING_TIMEOUT)
        except TimeoutError:
            client = poplib.POP3("127.0.0.1", self.ports[service], timeout=CLIENT_TIMEOUT)
        client.sock.settimeout(CLIENT_TIMEOUT)
        client.user(user)
        client.pass_(self.passwords[user])
        return client


def main() -> int:
    """``python -m tests.support.cyrus``: download and unpack once (scripts/setup.sh)."""
    path = unpack()
    print(f"Cyrus {version()} unpacked in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
