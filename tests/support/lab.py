"""A throwaway installation for one test or one module: imapd.conf, credentials (alice /
wonderland with an APOP secret, bob / builder), the lab maildrops from vectors/maildrops,
optionally TLS certificates, and a real pop3d-master on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pop3d.auth import credentials, schemes
from pop3d.auth.credentials import SCHEME_PLAIN_B64
from pop3d.auth.passwords import Argon2Parameters
from pop3d.security.secret import Secret
from pop3d.transport import selfsigned

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "vectors"
MAILDROPS = VECTORS / "maildrops"
USERS = {"alice": "wonderland", "bob": "builder"}
SCRAM_SCHEMES = ("SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512")
# Cheap Argon2 for fixtures; tests of the real parameters set their own.
FAST_ARGON2 = Argon2Parameters(memory_kib=64, passes=1)

BASE_CONFIG = """\
configdirectory: {root}/config
partition-default: {root}/spool
servername: lab.test
allowplaintext: yes
allowapop: yes
failedloginpause: 0
argon2_memory: 64
argon2_passes: 1
allow_root: yes
"""
# allow_root: the tests run as root, and pop3d refuses to serve as root without cyrus_user
# (a test of the privilege drop sets cyrus_user, which then wins).


def merged(text: str, settings: str) -> str:
    """imapd.conf ``text`` with each line of ``settings`` in place of the line that sets
    its key, or added at the end: a key set twice is an error, as in Cyrus."""
    lines = text.splitlines(keepends=True)
    for line in settings.splitlines():
        key = _key(line)
        for index, old in enumerate(lines):
            if key is not None and _key(old) == key:
                lines[index] = line + "\n"
                break
        else:
            lines.append(line + "\n")
    return "".join(lines)


def _key(line: str) -> str | None:
    key, colon, _value = line.partition(":")
    key = key.strip().lower()
    return key if colon and key and not key.startswith(("#", "@")) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Certificates:
    ca: Path
    cert: Path
    key: Path


@dataclass
class Lab:
    root: Path
    extra_config: str = ""
    users: dict[str, str] = field(default_factory=lambda: dict(USERS))
    tls: Certificates | None = None

    @property
    def config(self) -> Path:
        return self.root / "imapd.conf"

    @property
    def credentials(self) -> Path:
        return self.root / "config" / "pop3d.passwd"

    def maildir(self, user: str) -> Path:
        return self.root / "spool" / user / "Maildir"

    def create(self, with_tls: bool = False) -> Lab:
        (self.root / "config").mkdir(parents=True, exist_ok=True)
        (self.root / "spool").mkdir(exist_ok=True)
        text = BASE_CONFIG.format(root=self.root)
        if with_tls:
            self.tls = make_certificates(self.root / "tls")
            text += f"tls_server_cert: {self.tls.cert}\ntls_server_key: {self.tls.key}\n"
        self.config.write_text(merged(text, self.extra_config))
        for user, password in self.users.items():
            self.set_password(user, password, apop=True)
            self.reset_maildrop(user)
        return self

    def configure(self, settings: str) -> None:
        """Set each ``key: value`` line of ``settings`` in imapd.conf, in place of the line
        that sets that key if there is one."""
        self.config.write_text(merged(self.config.read_text(), settings))

    def set_password(self, user: str, password: str, apop: bool = False) -> None:
        """Argon2id (cheap parameters), SCRAM keys for every hash, and with ``apop`` the
        plaintext equivalent APOP, CRAM-MD5 and DIGEST-MD5 need."""
        wanted = set(SCRAM_SCHEMES) | ({SCHEME_PLAIN_B64} if apop else set())
        values, warnings = schemes.derive(Secret(password.encode()), wanted, FAST_ARGON2)
        assert not warnings, warnings
        credentials.update(
            self.credentials, user, lambda _old: credentials.UserRecord(user, values)
        )

    def reset_maildrop(self, user: str) -> None:
        maildir = self.maildir(user)
        if maildir.exists():
            shutil.rmtree(maildir)
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True)
        source = MAILDROPS / user
        if source.is_dir():
            for message in source.iterdir():
                shutil.copyfile(message, maildir / "new" / message.name)

    def messages(self, user: str) -> list[Path]:
        maildir = self.maildir(user)
        return sorted(p for sub in ("new", "cur") for p in (maildir / sub).iterdir())

    def pop3d_x(self, *flags: str) -> list[str]:
        return [sys.executable, "-m", "pop3d", "-X", "-C", str(self.config), *flags]


def make_certificates(folder: Path) -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)
    ca = selfsigned.make_ca("lab test CA")
    ca.write(folder / "ca.pem")
    server = selfsigned.issue(
        ca, "localhost", dns_names=("localhost", "lab.test"), ip_addresses=("127.0.0.1",)
    )
    server.write(folder / "cert.pem", folder / "key.pem")
    return Certificates(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")


@dataclass
class Server:
    """A pop3d-master running the lab's services; ``ports`` maps service name to port."""

    lab: Lab
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    log: Path

    @property
    def port(self) -> int:
        return self.ports["pop3"]

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    lab: Lab,
    services: dict[str, str] | None = None,
    prefork: int | None = 1,
    env: Mapping[str, str] | None = None,
    *,
    wrapper: Sequence[str] = (),
    python: str = sys.executable,
    maxchild: int = 2000,
    workers: int | None = None,
    sockets: Mapping[str, Path] | None = None,
) -> Server:
    """Start pop3d-master with ``services`` (name -> extra pop3d flags) and wait until
    every port accepts connections. ``env`` is added to the master's environment (its
    workers inherit it: KRB5_CONFIG for ``-k``); ``wrapper`` is a command that execs the
    master (``setpriv ...`` to drop capabilities, which its workers inherit); ``python``:
    the interpreter to run it with (and its workers); ``prefork=None`` leaves ``prefork``
    out of cyrus.conf, and ``workers`` is then how many worker processes to wait for per
    service (default 1); ``sockets`` maps a service to the unix socket it listens on
    instead of a port (it is then not in ``ports``). A port free_port() found can be
    taken by another test's connection before the master binds it: then the master exits
    71 and we try new ports."""
    options = {
        "wrapper": wrapper,
        "python": python,
        "maxchild": maxchild,
        "workers": workers,
        "sockets": sockets or {},
    }
    for attempt in range(5):
        try:
            return _start_server(lab, services or {"pop3": ""}, prefork, env or {}, **options)
        except PortTaken:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


class PortTaken(RuntimeError):
    pass


def _start_server(
    lab: Lab,
    services: dict[str, str],
    prefork: int | None,
    env: Mapping[str, str],
    *,
    wrapper: Sequence[str] = (),
    python: str = sys.executable,
    maxchild: int = 2000,
    workers: int | None = None,
    sockets: Mapping[str, Path],
) -> Server:
    ports = {name: free_port() for name in services if name not in sockets}
    lines = ["SERVICES {"]
    for name, flags in services.items():
        listen = sockets[name] if name in sockets else f"127.0.0.1:{ports[name]}"
        lines.append(
            f'  {name} cmd="pop3d {flags} -C {lab.config}" listen="{listen}" '
            + ("" if prefork is None else f"prefork={prefork} ")
            + f"maxchild={maxchild}"
        )
    lines.append("}")
    cyrus_conf = lab.root / "cyrus.conf"
    cyrus_conf.write_text("\n".join(lines) + "\n")
    log = lab.root / "master.log"
    handle = log.open("ab")
    process = subprocess.Popen(
        [
            *wrapper,
            python,
            "-m",
            "pop3d.cli.master",
            "-C",
            str(lab.config),
            "-M",
            str(cyrus_conf),
        ],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
    )
    handle.close()
    server = Server(lab, process, ports, log)
    deadline = time.monotonic() + 20
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    expected = workers if workers is not None else (prefork or 1)
    while len(children.read_text().split()) < expected * len(services):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            log_text = server.log_text()
            if process.returncode == 71 and "Address already in use" in log_text:
                raise PortTaken(log_text)
            raise RuntimeError(f"pop3d-master did not start its workers:\n{log_text}")
        time.sleep(0.05)
    for port in ports.values():
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"pop3d-master exited {process.returncode}:\n{server.log_text()}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"pop3d-master did not listen:\n{server.log_text()}")
            time.sleep(0.05)
    for path in sockets.values():
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"pop3d-master exited {process.returncode}:\n{server.log_text()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock,
            ):
                sock.settimeout(0.5)
                sock.connect(str(path))
                break
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"pop3d-master did not listen:\n{server.log_text()}")
            time.sleep(0.05)
    return server


def stat_once_served(
    family: int, address: object, user: str, password: str, deadline: float
) -> bytes:
    """STAT's answer from the first session the listener at ``address`` serves (it may not
    be up yet: refused connections are tried again until ``deadline``)."""
    while True:
        try:
            return login_and_stat(family, address, user, password)
        except (ConnectionRefusedError, FileNotFoundError):
            assert time.monotonic() < deadline, f"no answer on {address}"
            time.sleep(0.05)


def login_and_stat(family: int, address: object, user: str, password: str) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(address)
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(f"USER {user}\r\nPASS {password}\r\nSTAT\r\nQUIT\r\n".encode())
        answers = [reader.readline() for _ in range(4)]
    assert all(a.startswith(b"+OK") for a in answers), answers
    return answers[2]
