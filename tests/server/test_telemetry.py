"""Per-user telemetry logs (pop3d/server/telemetry.py) with a real pop3d-master: Cyrus's
layout (<configdirectory>/log/<user>/, never created) and format (a header, then
``<time<`` client and ``>time>`` server bytes in order, the plaintext the session sees),
telemetry_bysessionid, telemetry_prelogin with every secret hidden, and a log file that
cannot be written costing the session nothing."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.test_network import command, connect, worker_pids
from tests.support.lab import Lab, Server, start_server

HEADER = re.compile(rb"---------- (\S+) \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\n\n")
MARKER = re.compile(rb"([<>])(\d{10})\1")
PASSWORD = "Tele-metry-S3cret!"
WRONG = "Wrong-Guess-77"


def pieces(body: bytes) -> list[tuple[str, bytes]]:
    """The file after its header as (direction, bytes), consecutive markers of one
    direction joined; every marker's time is now-ish."""
    parts = MARKER.split(body)
    assert parts[0] == b"", parts[0][:80]
    out: list[tuple[str, bytes]] = []
    for index in range(1, len(parts), 3):
        direction, stamp, data = parts[index].decode(), int(parts[index + 1]), parts[index + 2]
        assert abs(stamp - time.time()) < 120
        if out and out[-1][0] == direction:
            out[-1] = (direction, out[-1][1] + data)
        else:
            out.append((direction, data))
    return out


def read_log(path: Path, user: str) -> list[tuple[str, bytes]]:
    data = path.read_bytes()
    header = HEADER.match(data)
    assert header, data[:100]
    assert header.group(1) == user.encode()
    assert path.stat().st_mode & 0o777 == 0o600
    return pieces(data[header.end() :])


def files(lab: Lab) -> list[Path]:
    return sorted(p for p in (lab.root / "config" / "log").rglob("*") if p.is_file())


def wait_for_files(server: Server, count: int) -> list[Path]:
    """The worker closes a log when the session ends, just after its last answer."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = files(server.lab)
        if len(found) >= count and not _open_in_workers(server, found):
            return found
        time.sleep(0.05)
    raise AssertionError(f"expected {count} closed telemetry files, found {files(server.lab)}")


def _open_in_workers(server: Server, paths: list[Path]) -> bool:
    wanted = {str(p) for p in paths}
    for pid in worker_pids(server):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                        return True
    return False


def session_id(reply: bytes) -> str:
    match = re.search(rb"SESSIONID=<([^>]+)>", reply)
    assert match, reply
    return match.group(1).decode()


def multiline(reader) -> bytes:  # type: ignore[no-untyped-def]
    out = b""
    while True:
        line: bytes = reader.readline()
        out += line
        if line == b".\r\n":
            return out


@pytest.fixture
def telemetry_server(lab: Lab) -> Iterator[Server]:
    (lab.root / "config" / "log" / "bob").mkdir(parents=True)
    running = start_server(lab)
    yield running
    running.stop()


def _bob_session(port: int) -> tuple[str, bytes]:
    """bob logs in, pipelines STAT and NOOP, fetches message 1 and quits; (session id,
    every byte the client received after the login's +OK)."""
    sock, reader = connect(port)
    with sock:
        reader.readline()
        command(sock, reader, b"USER bob")
        reply = command(sock, reader, b"PASS builder")
        assert reply.startswith(b"+OK"), reply
        sock.sendall(b"STAT\r\nNOOP\r\n")
        received = reply + reader.readline() + reader.readline()
        received += command(sock, reader, b"RETR 1") + multiline(reader)
        received += command(sock, reader, b"QUIT")
    return session_id(reply), received


def test_a_file_appears_only_where_the_directory_exists(lab: Lab, telemetry_server: Server) -> None:
    sid, received = _bob_session(telemetry_server.port)
    # alice has no directory: her session leaves nothing, and no directory is made
    sock, reader = connect(telemetry_server.port)
    with sock:
        reader.readline()
        command(sock, reader, b"USER alice")
        assert command(sock, reader, b"PASS wonderland").startswith(b"+OK")
        assert command(sock, reader, b"QUIT").startswith(b"+OK")
    [path] = wait_for_files(telemetry_server, 1)
    assert sorted(p.name for p in (lab.root / "config" / "log").iterdir()) == ["bob"]
    pid = sid.split("-")[-3]
    assert path.name == f"pop3-{pid}-{sid}"
    log = read_log(path, "bob")
    # recording starts with the login's own +OK (Cyrus): USER and PASS are not in it
    assert b"PASS" not in path.read_bytes() and b"builder" not in path.read_bytes()
    assert log[0][0] == ">" and log[0][1].startswith(b"+OK Mailbox locked and ready")
    # both directions, in order; what the server wrote is what the client received
    assert [d for d, _ in log] == [">", "<", ">", "<", ">", "<", ">"]
    assert log[1][1] == b"STAT\r\nNOOP\r\n"  # pipelined: both read, then both answered
    assert log[2][1].startswith(b"+OK ") and log[2][1].endswith(b"+OK\r\n")
    assert log[3] == ("<", b"RETR 1\r\n")
    assert b"".join(data for d, data in log if d == ">") == received
    assert log[-2] == ("<", b"QUIT\r\n")


def test_telemetry_bysessionid_names_the_file_by_session_id(lab: Lab) -> None:
    lab.config.write_text(lab.config.read_text() + "telemetry_bysessionid: yes\n")
    (lab.root / "config" / "log" / "bob").mkdir(parents=True)
    server = start_server(lab)
    try:
        sid, _ = _bob_session(server.port)
        [path] = wait_for_files(server, 1)
        assert path.name == f"pop3-{sid}"
        read_log(path, "bob")
    finally:
        server.stop()


def test_a_tls_session_is_recorded_in_plaintext(tls_lab: Lab) -> None:
    lab = tls_lab
    assert lab.tls is not None
    (lab.root / "config" / "log" / "bob").mkdir(parents=True)
    server = start_server(lab, {"pop3s": "-s"})
    try:
        context = ssl.create_default_context(cafile=str(lab.tls.ca))
        raw = socket.create_connection(("127.0.0.1", server.ports["pop3s"]), timeout=10)
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            reader = sock.makefile("rb")
            reader.readline()
            command(sock, reader, b"USER bob")
            reply = command(sock, reader, b"PASS builder")
            message = command(sock, reader, b"RETR 1") + multiline(reader)
            command(sock, reader, b"QUIT")
        [path] = wait_for_files(server, 1)
        assert path.name == f"pop3s-{session_id(reply).split('-')[-3]}-{session_id(reply)}"
        log = read_log(path, "bob")
        assert log[1] == ("<", b"RETR 1\r\n")
        assert log[2] == (">", message)
        assert log[-2:] == [("<", b"QUIT\r\n"), (">", log[-1][1])]
    finally:
        server.stop()


# --- telemetry_prelogin and its redaction ------------------------------------------------


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class _Client:
    def __init__(self, port: int) -> None:
        self.sock, self.reader = connect(port)
        self.greeting = self.reader.readline()

    def say(self, line: bytes) -> bytes:
        return command(self.sock, self.reader, line)

    def challenge(self) -> bytes:
        match = re.search(rb"<[^>]+>", self.greeting)
        assert match
        return match.group(0)

    def quit(self) -> None:
        assert self.say(b"QUIT").startswith(b"+OK")
        self.sock.close()


def test_prelogin_records_everything_but_the_secrets(lab: Lab) -> None:
    lab.config.write_text(
        lab.config.read_text()
        + "telemetry_prelogin: yes\nsasl_mech_list: PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256\n"
    )
    lab.set_password("carol", PASSWORD, apop=True)
    lab.reset_maildrop("carol")
    (lab.root / "config" / "log" / "carol").mkdir(parents=True)
    password = PASSWORD.encode()
    plain_blob = _b64(b"\0carol\0" + password)
    secrets: dict[str, bytes] = {
        "password": password,
        "wrong password": WRONG.encode(),
        "password, base64": _b64(password),
        "wrong password, base64": _b64(WRONG.encode()),
        "PLAIN blob": plain_blob,
        "PLAIN blob with authzid": _b64(b"carol\0carol\0" + password),
    }
    server = start_server(lab)
    try:
        port = server.port
        # 1. USER/PASS, a wrong password first
        client = _Client(port)
        assert client.say(b"CAPA").startswith(b"+OK")
        multiline(client.reader)
        client.say(b"USER carol")
        assert client.say(b"PASS " + WRONG.encode()).startswith(b"-ERR")
        client.say(b"USER carol")
        assert client.say(b"PASS " + password).startswith(b"+OK")
        client.quit()
        # 2. APOP
        client = _Client(port)
        digest = (
            hashlib.md5(client.challenge() + password, usedforsecurity=False).hexdigest().encode()
        )
        secrets["APOP digest"] = digest
        assert client.say(b"APOP carol " + digest).startswith(b"+OK")
        client.quit()
        # 3. AUTH PLAIN with an initial response, 4. without, after a cancelled attempt
        client = _Client(port)
        assert client.say(b"AUTH PLAIN " + plain_blob).startswith(b"+OK")
        client.quit()
        client = _Client(port)
        assert client.say(b"AUTH PLAIN").startswith(b"+ ")
        assert client.say(b"*").startswith(b"-ERR")
        assert client.say(b"AUTH PLAIN").startswith(b"+ ")
        assert client.say(_b64(b"carol\0carol\0" + password)).startswith(b"+OK")
        client.quit()
        # 5. AUTH LOGIN
        client = _Client(port)
        assert client.say(b"AUTH LOGIN").startswith(b"+ ")
        assert client.say(_b64(b"carol")).startswith(b"+ ")
        assert client.say(_b64(password)).startswith(b"+OK")
        client.quit()
        # 6. CRAM-MD5
        client = _Client(port)
        reply = client.say(b"AUTH CRAM-MD5")
        challenge = base64.b64decode(reply[2:].strip())
        cram = hmac.new(password, challenge, hashlib.md5).hexdigest().encode()
        secrets["CRAM-MD5 digest"] = cram
        secrets["CRAM-MD5 answer"] = _b64(b"carol " + cram)
        secrets["CRAM-MD5 challenge"] = reply[2:].strip()
        assert client.say(_b64(b"carol " + cram)).startswith(b"+OK")
        client.quit()
        # 7. only a failed login: nothing is written
        client = _Client(port)
        client.say(b"USER carol")
        assert client.say(b"PASS " + WRONG.encode()).startswith(b"-ERR")
        client.quit()

        found = wait_for_files(server, 6)
        time.sleep(0.3)  # the seventh session, had it written, would be there by now
        found = files(lab)
        assert len(found) == 6, found
        texts = {path: path.read_bytes() for path in found}
        everything = b"".join(texts.values()) + server.log.read_bytes()
        for name, secret in secrets.items():
            assert secret not in everything, name
            assert secret.lower() not in everything.lower(), name

        logs = [read_log(path, "carol") for path in found]
        # the pre-login part comes first: the greeting, then what the client said
        for log in logs:
            assert log[0][0] == ">" and log[0][1].startswith(b"+OK lab.test")
        by_first_command = {log[1][1].split(b"\r\n")[0]: log for log in logs}
        assert set(by_first_command) == {
            b"CAPA",
            b"APOP carol ****",
            b"AUTH PLAIN ****",
            b"AUTH PLAIN",
            b"AUTH LOGIN",
            b"AUTH CRAM-MD5",
        }
        said = b"".join(data for d, data in by_first_command[b"CAPA"] if d == "<")
        assert said == b"CAPA\r\n" + b"USER carol\r\nPASS ****\r\n" * 2 + b"QUIT\r\n"
        login = by_first_command[b"AUTH LOGIN"]
        assert [data for d, data in login[1:6]] == [
            b"AUTH LOGIN\r\n",
            b"+ ****\r\n",
            b"****\r\n",
            b"+ ****\r\n",
            b"****\r\n",
        ]
        cancelled = b"".join(data for _, data in by_first_command[b"AUTH PLAIN"][1:])
        assert cancelled.startswith(b"AUTH PLAIN\r\n+ ****\r\n*\r\n-ERR")
    finally:
        server.stop()


# --- a log that cannot be written ----------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _full_session(port: int, number: int = 1) -> bytes:
    sock, reader = connect(port)
    with sock:
        reader.readline()
        command(sock, reader, b"USER bob")
        assert command(sock, reader, b"PASS builder").startswith(b"+OK")
        message = command(sock, reader, b"RETR %d" % number) + multiline(reader)
        assert command(sock, reader, b"NOOP") == b"+OK\r\n"
        assert command(sock, reader, b"QUIT").startswith(b"+OK")
    return message


def _wait_log(server: Server, text: str) -> str:
    deadline = time.monotonic() + 10
    while text not in server.log_text():
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)
    return server.log_text()


def test_a_directory_that_cannot_be_written_costs_the_session_nothing(lab: Lab) -> None:
    directory = lab.root / "config" / "log" / "bob"
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0:  # root writes through permissions: a read-only file system
            stack.enter_context(_tmpfs(directory, "ro,size=64k"))
        else:
            directory.mkdir(parents=True)
            directory.chmod(0o500)
        server = start_server(lab)
        try:
            message = _full_session(server.port)
            assert message.startswith(b"+OK") and message.endswith(b"\r\n.\r\n")
            log = _wait_log(server, "cannot be opened")
            assert log.count("telemetry log") == 1
            assert "not recording" in log
        finally:
            server.stop()
        assert files(lab) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_file_system_costs_the_session_nothing(lab: Lab) -> None:
    # 160 kB, ten times the file system below
    (lab.maildir("bob") / "new" / "1700000000.big.lab").write_bytes(
        b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 2000
    )
    directory = lab.root / "config" / "log" / "bob"
    server = start_server(lab)
    try:
        listing = _listing(server.port)  # before the directory exists: not recorded
        number = max(listing, key=lambda n: listing[n])
        with _tmpfs(directory, "size=16k"):
            message = _full_session(server.port, number)
            assert len(message) > 160_000 and message.endswith(b"\r\n.\r\n")
            log = _wait_log(server, "cannot be written")
            assert log.count("telemetry log") == 1
            # the part that fit is a well-formed start of a log
            [path] = wait_for_files(server, 1)
            assert HEADER.match(path.read_bytes())
    finally:
        server.stop()


def _listing(port: int) -> dict[int, int]:
    sock, reader = connect(port)
    with sock:
        reader.readline()
        command(sock, reader, b"USER bob")
        command(sock, reader, b"PASS builder")
        command(sock, reader, b"LIST")
        body = multiline(reader)
        command(sock, reader, b"QUIT")
    return {int(line.split()[0]): int(line.split()[1]) for line in body.splitlines()[:-1] if line}
