"""A real Dovecot (Debian's 2.3, installed by ``scripts/setup.sh --test``) for the migration
tests: standalone (``dovecot -F -c <its own dovecot.conf>``, never /etc/dovecot), POP3 on a
free loopback port, its own base_dir, state and log, users from a passwd-file, mail in a
Maildir or an mbox per user, delivered with Dovecot's own ``dovecot-lda``.

Dovecot will not touch mail as root: the users' mail belongs to Debian's ``mail`` user
(uid/gid 8, as in the bench), so the folder lives under /tmp with mode 0755, not in
pytest's 0700 tmp_path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.lab import free_port

MAIL_UID = 8
MAIL_GID = 8
LDA = "/usr/lib/dovecot/dovecot-lda"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

MAILDIR = "maildir:~/Maildir"
# The INBOX is the mbox file ~/mbox (as /var/mail/<user> would be), other folders in ~/mail
MBOX = "mbox:~/mail:INBOX=~/mbox"

CONF = """\
# Test Dovecot: standalone, loopback only (tests/support/dovecot.py)
instance_name = pop3d-test-{tag}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/log/dovecot.log
protocols = pop3
listen = 127.0.0.1
hostname = dovecot.test
postmaster_address = postmaster@dovecot.test
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
first_valid_uid = {uid}
first_valid_gid = {gid}
mail_location = {mail_location}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
{extra}
"""


@dataclass
class Dovecot:
    """One Dovecot instance. ``settings``: more dovecot.conf lines (``pop3_uidl_format``,
    ``pop3_save_uidl``, ``pop3_reuse_xuidl``...); :meth:`restart` applies changed ones."""

    root: Path
    users: dict[str, str]
    mail_location: str = MAILDIR
    settings: str = ""
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def log(self) -> Path:
        return self.root / "log" / "dovecot.log"

    def home(self, user: str) -> Path:
        return self.root / "home" / user

    def maildir(self, user: str) -> Path:
        return self.home(user) / "Maildir"

    def mbox(self, user: str) -> Path:
        return self.home(user) / "mbox"

    def create(self) -> Dovecot:
        for sub in ("run", "state", "log", "home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        lines = []
        for user, password in self.users.items():
            home = self.home(user)
            home.mkdir(exist_ok=True)
            os.chown(home, MAIL_UID, MAIL_GID)
            lines.append(f"{user}:{{PLAIN}}{password}:{MAIL_UID}:{MAIL_GID}::{home}::")
        (self.root / "users").write_text("\n".join(lines) + "\n")
        self.write_config()
        return self

    def write_config(self) -> None:
        if not self.port:
            self.port = free_port()
        self.config.write_text(
            CONF.format(
                tag=self.root.name,
                root=self.root,
                uid=MAIL_UID,
                gid=MAIL_GID,
                mail_location=self.mail_location,
                port=self.port,
                extra=self.settings,
            )
        )

    def start(self) -> Dovecot:
        self.write_config()
        # A stale master.pid of a killed run would make Dovecot refuse to start.
        (self.root / "run" / "master.pid").unlink(missing_ok=True)
        with (self.root / "log" / "stdout.log").open("ab") as handle:
            self.process = subprocess.Popen(
                ["dovecot", "-F", "-c", str(self.config)],
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        self._wait_greeting()
        return self

    def _wait_greeting(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited {self.process.returncode}:\n{self.logs()}")
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.port), 1.0) as sock:
                    sock.settimeout(5.0)
                    if sock.recv(64).startswith(b"+OK"):
                        return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"dovecot did not greet on port {self.port}:\n{self.logs()}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self, settings: str) -> None:
        self.stop()
        self.settings = settings
        self.start()

    def logs(self) -> str:
        text = ""
        for path in (self.root / "log" / "stdout.log", self.log):
            if path.exists():
                text += path.read_text(errors="replace")
        return text[-4000:]

    def deliver(self, user: str, message: bytes) -> None:
        """Through Dovecot's own local delivery agent, as an MTA would."""
        done = subprocess.run(
            [LDA, "-c", str(self.config), "-d", user, "-f", "sender@dovecot.test"],
            input=message,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"dovecot-lda exited {done.returncode}: {done.stderr!r}")

    def doveadm(self, *args: str) -> str:
        done = subprocess.run(
            ["doveadm", "-c", str(self.config), *args],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"doveadm {args} exited {done.returncode}: {done.stderr!r}")
        return done.stdout.decode()


@contextlib.contextmanager
def running_dovecot(
    users: dict[str, str], mail_location: str = MAILDIR, settings: str = ""
) -> Iterator[Dovecot]:
    """A started Dovecot in a fresh folder, stopped and removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="pop3d-dovecot-", dir="/tmp"))
    folder.chmod(0o755)
    server = Dovecot(folder, users, mail_location, settings)
    try:
        server.create().start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
