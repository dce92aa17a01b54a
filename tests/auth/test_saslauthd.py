"""The saslauthd client against the real Cyrus saslauthd (Debian's sasl2-bin, 2.1.28).

saslauthd runs in the foreground (``-d``, no worker processes: ``-n 0``) with its run
directory in the test's temporary directory and the ``sasldb`` mechanism, over a sasldb
the test builds with ``saslpasswd2 -f``. saslauthd's sasldb mechanism cannot be pointed at
another file (neither ``-O`` nor a config file reaches it: it always opens /etc/sasldb2),
so the daemon runs in a private mount namespace (``unshare``) where the test's sasldb is
bind-mounted over /etc/sasldb2. Nothing outside that namespace changes, and the mount goes
away with the daemon. As root this needs CAP_SYS_ADMIN; otherwise an unprivileged user
namespace. Where neither is allowed, the tests are skipped with that reason.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pop3d.auth.saslauthd import DEFAULT_SERVICE, MAX_FIELD, SaslauthdClient, SaslauthdResult
from pop3d.security.secret import Secret

pytestmark = pytest.mark.interop

REALM = "lab.test"
USERS = {
    "alice": "wonderland",
    "carol": "pass with spaces ünïcødé ✓",
}
START_TIMEOUT = 10.0
_SBIN = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))
_NAMESPACE_FAILED = 97  # exit status of the wrapper when the bind mount is refused


def _tool(name: str) -> str:
    found = shutil.which(name, path=_SBIN)
    if found is None:
        pytest.fail(f"{name} not found: install sasl2-bin (scripts/setup.sh --test)")
    return found


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    socket: Path
    log: Path

    def client(
        self, *, service: str = DEFAULT_SERVICE, realm: str = REALM, timeout: float = 5.0
    ) -> SaslauthdClient:
        return SaslauthdClient(self.socket, service=service, realm=realm, timeout=timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def make_sasldb(path: Path, users: dict[str, str]) -> None:
    saslpasswd2 = _tool("saslpasswd2")
    for user, password in users.items():
        subprocess.run(
            [saslpasswd2, "-f", str(path), "-c", "-p", "-u", REALM, user],
            input=password.encode() + b"\n",
            capture_output=True,
            timeout=10,
            check=True,
        )


def start_saslauthd(root: Path, users: dict[str, str] = USERS) -> Daemon:
    saslauthd = _tool("saslauthd")
    unshare = _tool("unshare")
    if not Path("/etc/sasldb2").is_file():
        pytest.fail("/etc/sasldb2 (the bind-mount target, made by sasl2-bin) is missing")
    run = root / "run"
    run.mkdir(parents=True)
    sasldb = root / "sasldb2"
    make_sasldb(sasldb, users)
    if os.geteuid() == 0:
        namespace = [unshare, "--mount", "--propagation", "private"]
    else:
        namespace = [unshare, "--user", "--map-root-user", "--mount"]
    script = f'mount --bind "$0" /etc/sasldb2 || exit {_NAMESPACE_FAILED}; exec "$@"'
    command = [*namespace, "sh", "-c", script, str(sasldb)]
    command += [saslauthd, "-d", "-a", "sasldb", "-m", str(run), "-n", "0"]
    log = root / "saslauthd.log"
    with log.open("wb") as handle:
        # A session (and process group) of its own: saslauthd -d never learns its master
        # pid, and on SIGTERM its server_exit() calls kill(-master_pid, SIGTERM), that is
        # kill(0, SIGTERM): its whole process group, which would otherwise be pytest's.
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    daemon = Daemon(process, run / "mux", log)
    deadline = time.monotonic() + START_TIMEOUT
    while "listening on socket" not in daemon.log_text():
        status = process.poll()
        if status is not None:
            text = daemon.log_text()
            if status == _NAMESPACE_FAILED or "unshare" in text:
                pytest.skip(f"cannot give saslauthd a private mount namespace: {text.strip()}")
            pytest.fail(f"saslauthd exited {status}:\n{text}")
        if time.monotonic() > deadline:
            daemon.stop(signal.SIGKILL)
            pytest.fail(f"saslauthd did not listen within {START_TIMEOUT} s:\n{daemon.log_text()}")
        time.sleep(0.02)
    return daemon


@pytest.fixture(scope="module")
def saslauthd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = start_saslauthd(tmp_path_factory.mktemp("saslauthd"))
    yield daemon
    daemon.stop()


@pytest.fixture
def own_saslauthd(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon of the test's own, for tests that stop or kill it."""
    daemon = start_saslauthd(tmp_path)
    yield daemon
    if daemon.process.poll() is None:
        os.kill(daemon.process.pid, signal.SIGCONT)
    daemon.stop()


def secret(text: str) -> Secret:
    return Secret(text.encode())


_markers = itertools.count(1)


def settle(daemon: Daemon) -> tuple[str, str]:
    """Send a marker request and wait until the daemon has logged its answer: saslauthd -n 0
    serves one connection at a time and logs "response:" only after replying, so by then
    every earlier request is in the log. Returns the marker and the log up to there."""
    marker = f"marker{next(_markers)}"
    assert not daemon.client().verify(marker, secret("x")).ok
    deadline = time.monotonic() + 5
    while True:
        text = daemon.log_text()
        seen = text.find(f"[user={marker}]")
        response = text.find("response:", seen) if seen >= 0 else -1
        end = text.find("\n", response) if response >= 0 else -1
        if end >= 0:
            return marker, text[: end + 1]
        assert time.monotonic() < deadline, text
        time.sleep(0.01)


def assert_daemon_saw_nothing(daemon: Daemon, before: str) -> None:
    """Nothing reached the daemon since ``before`` (a :func:`settle` log) but a marker."""
    marker, after = settle(daemon)
    assert after.startswith(before)
    lines = after[len(before) :].splitlines()
    assert len(lines) == 2, lines
    assert f"auth failure: [user={marker}]" in lines[0]
    assert lines[1].endswith("response: NO")


def assert_logged_once_more(daemon: Daemon, line: str, before: str) -> None:
    """saslauthd logs the verdict before it replies, so no wait is needed."""
    assert daemon.log_text().count(line) == before.count(line) + 1


def assert_rejected(result: SaslauthdResult) -> None:
    assert not result.ok
    assert not result.unavailable
    assert result.reason.startswith("NO"), result.reason


# --- verdicts -----------------------------------------------------------------------------


def test_right_password(saslauthd: Daemon) -> None:
    before = saslauthd.log_text()
    result = saslauthd.client().verify("alice", secret("wonderland"))
    assert result == SaslauthdResult(True, "OK")
    line = f"auth success: [user=alice] [service={DEFAULT_SERVICE}] [realm={REALM}]"
    assert_logged_once_more(saslauthd, line, before)


def test_realm_split_from_the_login(saslauthd: Daemon) -> None:
    """As lib/checkpw.c: user@realm is sent as login and realm, overriding the default."""
    client = saslauthd.client(realm="elsewhere.test")
    before = saslauthd.log_text()
    assert client.verify(f"alice@{REALM}", secret("wonderland")).ok
    assert_logged_once_more(saslauthd, f"[user=alice] [service=pop] [realm={REALM}]", before)
    assert_rejected(client.verify("alice", secret("wonderland")))


def test_service_is_sent(saslauthd: Daemon) -> None:
    before = saslauthd.log_text()
    assert saslauthd.client(service="pop3s").verify("alice", secret("wonderland")).ok
    assert_logged_once_more(saslauthd, f"[user=alice] [service=pop3s] [realm={REALM}]", before)


def test_wrong_password(saslauthd: Daemon) -> None:
    assert_rejected(saslauthd.client().verify("alice", secret("Wonderland")))


def test_unknown_user(saslauthd: Daemon) -> None:
    assert_rejected(saslauthd.client().verify("mallory", secret("wonderland")))


def test_password_with_spaces_and_utf8(saslauthd: Daemon) -> None:
    client = saslauthd.client()
    assert client.verify("carol", secret(USERS["carol"])).ok
    assert_rejected(client.verify("carol", secret("pass with spaces")))
    assert_rejected(client.verify("carol", Secret(USERS["carol"].encode("latin-1", "replace"))))


def test_callable_as_a_password_checker(saslauthd: Daemon) -> None:
    checker = saslauthd.client()
    assert checker("alice", secret("wonderland")).ok


# --- limits -------------------------------------------------------------------------------


def raw_exchange(path: Path, fields: list[bytes]) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(b"".join(struct.pack("!H", len(f)) + f for f in fields))
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    return reply


def test_daemon_limit_is_what_the_client_enforces(saslauthd: Daemon) -> None:
    """saslauthd reads a field of MAX_REQ_LEN (256) octets and refuses 257 with a bare NO."""
    at_limit = raw_exchange(saslauthd.socket, [b"a" * MAX_FIELD, b"x", b"pop", b""])
    assert at_limit == b"\x00\x02NO"
    over = raw_exchange(saslauthd.socket, [b"a" * (MAX_FIELD + 1), b"x", b"pop", b""])
    assert over == b"\x00\x03NO "
    assert f"login exceeded MAX_REQ_LEN: {MAX_FIELD}" in saslauthd.log_text()


@pytest.mark.parametrize("field", ["login", "password", "service", "realm"])
def test_overlong_field_refused_before_sending(saslauthd: Daemon, field: str) -> None:
    values = {"login": "alice", "password": "wonderland", "service": "pop", "realm": REALM}
    values[field] = "é" * (MAX_FIELD // 2) + "x"  # 257 octets, 129 characters
    _, before = settle(saslauthd)
    result = saslauthd.client(service=values["service"], realm=values["realm"]).verify(
        values["login"], secret(values["password"])
    )
    assert result == SaslauthdResult(
        False, f"saslauthd request not sent: {field} longer than {MAX_FIELD} octets"
    )
    assert_daemon_saw_nothing(saslauthd, before)


def test_fields_at_the_limit_are_sent(saslauthd: Daemon) -> None:
    client = saslauthd.client()
    assert_rejected(client.verify("a" * MAX_FIELD, secret("wonderland")))
    assert_rejected(client.verify("alice", Secret(b"w" * MAX_FIELD)))


@pytest.mark.parametrize(
    ("login", "password", "why"),
    [
        ("alice\0bob", b"wonderland", "login contains a NUL octet"),
        ("alice", b"wonderland\0", "password contains a NUL octet"),
        ("", b"wonderland", "empty login"),
        (f"@{REALM}", b"wonderland", "empty login"),
        ("alice", b"", "empty password"),
        ("al\udcffice", b"wonderland", "login is not valid UTF-8"),
    ],
)
def test_unsendable_requests(saslauthd: Daemon, login: str, password: bytes, why: str) -> None:
    _, before = settle(saslauthd)
    result = saslauthd.client().verify(login, Secret(password))
    assert result == SaslauthdResult(False, f"saslauthd request not sent: {why}")
    assert_daemon_saw_nothing(saslauthd, before)


# --- no verdict -----------------------------------------------------------------------------


def test_daemon_stopped(own_saslauthd: Daemon) -> None:
    own_saslauthd.stop()  # SIGTERM: saslauthd removes its socket
    assert not own_saslauthd.socket.exists()
    result = own_saslauthd.client().verify("alice", secret("wonderland"))
    assert result.unavailable
    assert not result.ok
    missing = f"{own_saslauthd.socket}: No such file or directory"
    assert result.reason == f"saslauthd unavailable: {missing}"


def test_daemon_killed_leaves_a_dead_socket(own_saslauthd: Daemon) -> None:
    own_saslauthd.stop(signal.SIGKILL)
    assert own_saslauthd.socket.is_socket()
    result = own_saslauthd.client().verify("alice", secret("wonderland"))
    assert result.unavailable
    assert not result.ok
    assert result.reason == f"saslauthd unavailable: {own_saslauthd.socket}: Connection refused"


def test_daemon_hung(own_saslauthd: Daemon) -> None:
    os.kill(own_saslauthd.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = own_saslauthd.client(timeout=0.5).verify("alice", secret("wonderland"))
        elapsed = time.monotonic() - started
    finally:
        os.kill(own_saslauthd.process.pid, signal.SIGCONT)
    assert result == SaslauthdResult(
        False, "saslauthd unavailable: no answer within 0.5 s", unavailable=True
    )
    assert 0.4 < elapsed < 3
    assert own_saslauthd.client().verify("alice", secret("wonderland")).ok  # it recovers


def test_peer_closing_early_is_unavailable(tmp_path: Path) -> None:
    """Something that accepts and hangs up without a reply (not saslauthd)."""
    path = tmp_path / "mux"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        listener.settimeout(5)
        client = SaslauthdClient(path, timeout=5)

        def hang_up() -> None:
            connection, _ = listener.accept()
            connection.recv(4096)
            connection.close()

        thread = threading.Thread(target=hang_up)
        thread.start()
        result = client.verify("alice", secret("wonderland"))
        thread.join(5)
    assert result == SaslauthdResult(
        False,
        "saslauthd unavailable: connection closed after 0 of 2 octets",
        unavailable=True,
    )


@pytest.mark.parametrize("kind", ["missing", "file", "directory", "fifo"])
def test_path_not_a_socket(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "mux"
    if kind == "file":
        path.write_bytes(b"OK")
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    result = SaslauthdClient(path, timeout=1).verify("alice", secret("wonderland"))
    assert result.unavailable
    assert not result.ok
    if kind == "missing":
        assert result.reason == f"saslauthd unavailable: {path}: No such file or directory"
    else:
        assert result.reason == f"saslauthd unavailable: {path} is not a unix socket"


def test_reason_never_holds_the_password(saslauthd: Daemon, tmp_path: Path) -> None:
    password = "wonderland-" + "s3cr3t"
    clients = [saslauthd.client(), SaslauthdClient(tmp_path / "none", timeout=1)]
    results = [c.verify(user, secret(password)) for c in clients for user in ("alice", "x")]
    results.append(saslauthd.client().verify("alice", secret(password + "\0")))
    results.append(saslauthd.client().verify("alice", secret(password * 30)))
    for result in results:
        assert password not in result.reason
        assert password not in repr(result)
    assert "s3cr3t" not in saslauthd.log_text()


def test_pop3d_checks_passwords_with_saslauthd(saslauthd: Daemon, tmp_path: Path) -> None:
    """sasl_pwcheck_method: saslauthd, end to end through pop3d -X: the credential file
    plays no part in USER/PASS (alice's password there is different)."""
    from tests.support.lab import Lab

    lab = Lab(
        tmp_path / "lab",
        extra_config=f"sasl_pwcheck_method: saslauthd\nsasl_saslauthd_path: {saslauthd.socket}\n",
        users={"alice@lab.test": "not-the-saslauthd-password"},
    ).create()
    script = b"USER alice@lab.test\r\nPASS not-the-saslauthd-password\r\n"
    script += b"USER alice@lab.test\r\nPASS wonderland\r\nSTAT\r\nQUIT\r\n"
    done = subprocess.run(lab.pop3d_x(), input=script, capture_output=True, timeout=60)
    lines = done.stdout.split(b"\r\n")
    assert lines[2] == b"-ERR [AUTH] Invalid login", done.stdout
    assert lines[4].startswith(b"+OK Mailbox locked and ready"), done.stdout
    assert lines[5] == b"+OK 0 0"


def test_pop3d_answers_sys_temp_when_saslauthd_is_down(tmp_path: Path) -> None:
    """No daemon: no verdict on the password, so -ERR [SYS/TEMP], not [AUTH]."""
    from tests.support.lab import Lab

    missing = tmp_path / "no-saslauthd" / "mux"
    lab = Lab(
        tmp_path / "lab",
        extra_config=f"sasl_pwcheck_method: saslauthd\nsasl_saslauthd_path: {missing}\n",
    ).create()
    script = b"USER alice\r\nPASS wonderland\r\nQUIT\r\n"
    done = subprocess.run(lab.pop3d_x(), input=script, capture_output=True, timeout=60)
    lines = done.stdout.split(b"\r\n")
    assert lines[2].startswith(b"-ERR [SYS/TEMP] "), done.stdout
    assert b"Traceback" not in done.stderr
