"""The audit trail (server/audit.py): Cyrus's login:/badlogin:/counts: lines, escaped so a
client cannot forge one; a real syslog socket (a unix datagram socket bound here) and the
JSON-lines file, written by a real pop3d-master's workers."""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pop3d.security.value import Security, TLSInfo
from pop3d.server.audit import Login, Result, SessionEnd, json_line, syslog_line
from pop3d.transport import selfsigned
from tests.support import scram_client
from tests.support.lab import Lab, Server, start_server

# fail2ban's filter.d/cyrus-imap.conf (after its prefix line): what sites already run.
FAIL2BAN = re.compile(
    r"badlogin: \S+ ?\[(?P<host>[\w\-.^_:]+)\] \S+ "
    r".*?\[?SASL\(-13\): authentication failure: .*\]?$"
)
FORGED_NAMES = [
    "eve\nlogin: 198.51.100.1 [198.51.100.1] alice plaintext User logged in result=<ok>",
    "eve\r result=<ok>",
    "eve result=<ok> user=<alice>",
    "eve> result=<ok",
    "eve) [SASL(-13): authentication failure: x] (",
    "eve\u2028result=<ok>",
    "eve\u202e>ko<=tluser",
    "eve\x00\x1b[2K",
]
TLS = Security(tls=TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256))


def _login(user: str, result: Result, peer: str = "192.0.2.7:4711") -> Login:
    return Login(1.0, "pop3", "lab-1-2-3-4", peer, TLS, "PLAIN", user, result, "wrong password")


@pytest.mark.parametrize("user", FORGED_NAMES)
def test_a_user_name_cannot_forge_a_line_or_a_field(user: str) -> None:
    end = SessionEnd(1.0, "pop3", "s", "192.0.2.7:1", TLS, "USER", user, "QUIT", 1, 0, 1, 2, 3, 0.5)
    for record in (*(_login(user, result) for result in Result), end):
        line = syslog_line(record)
        assert line.isprintable(), line  # no CR, LF, NUL, U+2028, bidi override
        assert line.count("result=<") == (0 if record is end else 1)
        assert line.count("user=<") == 1
        if isinstance(record, Login):
            assert re.search(rf"result=<{record.result}>", line)
        # Only a refused password is fail2ban's, and the host is the client's, always.
        match = FAIL2BAN.search(line)
        if isinstance(record, Login) and record.result is Result.FAIL:
            assert match is not None and match["host"] == "192.0.2.7", line
        else:
            assert match is None, line
        decoded = json.loads(json_line(record))
        assert json_line(record).count("\n") == 1
        assert decoded["user"] == user  # the JSON file keeps the exact name


def test_a_scoped_peer_address_cannot_forge_a_line() -> None:
    """ip_address() takes "fe80::1%<scope>" with any scope but a space: through a PROXY
    header (now refused there too) a line feed in it began a forged badlogin line."""
    peer = "[fe80::1%a\nbadlogin:_x_[203.0.113.9]:5555"
    for result in Result:
        line = syslog_line(_login("eve", result, peer))
        assert line.isprintable() and "_x_[" not in line, line
        match = FAIL2BAN.search(line)
        assert match is None or match["host"] != "203.0.113.9", line


def test_the_authenticating_identity_is_a_field_when_it_is_not_the_user() -> None:
    acting = Login(1.0, "pop3", "s", "192.0.2.7:1", TLS, "PLAIN", "ursel", Result.OK, "", "kurt")
    line = syslog_line(acting)
    assert " ursel PLAIN+TLS User logged in " in line and " authid=<kurt> " in line
    assert json.loads(json_line(acting))["authid"] == "kurt"
    alone = _login("ursel", Result.OK)
    assert "authid" not in syslog_line(alone) and "authid" not in json_line(alone)


def test_cyrus_formats() -> None:
    ok = syslog_line(_login("alice", Result.OK))
    assert ok.startswith(
        "login: 192.0.2.7 [192.0.2.7] alice PLAIN+TLS User logged in SESSIONID=<lab-1-2-3-4> "
    )
    assert "tls=<TLSv1.3> cipher=<TLS_AES_256_GCM_SHA384> ssf=<256>" in ok
    bad = syslog_line(_login("alice", Result.FAIL, peer="[2001:db8::7]:110"))
    assert bad.startswith(
        "badlogin: 2001:db8::7 [2001:db8::7] PLAIN (alice) "
        "[SASL(-13): authentication failure: wrong password] "
    )
    plain = Login(1.0, "pop3", "s", "[unix socket]", None, "USER", "bob", Result.OK)
    assert syslog_line(plain).startswith("login: [local] bob plaintext User logged in ")
    end = SessionEnd(
        1.0, "pop3", "s", "192.0.2.7:1", None, "USER", "bob", "QUIT", 2, 1, 1, 50, 900, 1
    )
    assert syslog_line(end).startswith("counts: retr=<2> top=<1> dele=<1> SESSIONID=<s> ")


# --- a real master, a real syslog socket ------------------------------------------------


class Syslog:
    """A unix datagram socket bound here, read all the time as a syslog daemon reads
    /dev/log (the kernel queues only ten datagrams: a listener that reads late makes the
    senders wait, which is what C's syslog(3) does too)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            self.lines.put(data.decode("utf-8"))

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(timeout=5)


@pytest.fixture
def syslog() -> Iterator[Syslog]:
    folder = Path(tempfile.mkdtemp(prefix="syslog-", dir="/tmp"))  # short: sun_path is 108
    listener = Syslog(folder / "log")
    try:
        yield listener
    finally:
        listener.close()
        listener.path.unlink(missing_ok=True)
        folder.rmdir()


class Client:
    def __init__(self, port: int, proxy: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sent = 0
        self.received = 0
        self.buffer = b""
        if proxy:
            self.sock.sendall(proxy)
            self.sent += len(proxy)
        self.line()  # greeting

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.received += len(data)
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def ask(self, command: bytes) -> bytes:
        self.sock.sendall(command + b"\r\n")
        self.sent += len(command) + 2
        return self.line()

    def multiline(self) -> None:
        while self.line() != b".":
            pass

    def quit(self) -> None:
        assert self.ask(b"QUIT").startswith(b"+OK")
        while data := self.sock.recv(65536):
            self.received += len(data)
        self.sock.close()


AUDIT = re.compile(r"^<\d+>[\w/-]+\[\d+\]: (login|badlogin|counts): ")


def _audit_lines(syslog: Syslog, count: int) -> list[str]:
    """The next ``count`` audit records among everything pop3d logs to syslog."""
    got = []
    while len(got) < count:
        line = syslog.lines.get(timeout=10)
        if AUDIT.match(line):
            got.append(line)
    return got


def test_records_reach_syslog_and_the_jsonl_file(tmp_path: Path, syslog: Syslog) -> None:
    jsonl = tmp_path / "audit.jsonl"
    lab = Lab(
        tmp_path / "lab",
        extra_config=(
            f"syslog_socket: {syslog.path}\nsyslog_facility: mail\naudit_jsonl_file: {jsonl}\n"
        ),
    ).create()
    server = start_server(lab, {"pop3": "", "pop3h": "-H"})
    try:
        # start_server's readiness probe of pop3 is a session too (the one of pop3h
        # never sends a PROXY header, so it never becomes one): its record first
        _audit_lines(syslog, 1)
        while not jsonl.exists() or not jsonl.read_text():  # written just after syslog's
            time.sleep(0.01)
        already = len(jsonl.read_text().splitlines())

        # 1: a name the identity rules refuse, then one they accept, with a wrong password
        c = Client(server.port)
        assert c.ask(b"USER eve\x1b result=<ok>").startswith(b"-ERR")
        assert c.ask(b"USER eve result=<ok> user=<alice>").startswith(b"+OK")
        assert c.ask(b"PASS nope").startswith(b"-ERR")
        c.quit()
        # 2: AUTH PLAIN whose authcid carries a CR (the identity rules stop it: it is
        # logged escaped, as a refused USER is), then one with what the rules let through
        c = Client(server.port)
        blob = base64.b64encode(b"\0mallory\rresult=<ok>\nlogin: x\0nope")
        assert c.ask(b"AUTH PLAIN " + blob).startswith(b"-ERR")
        # (SASLprep stops U+2028 and the identity rules a colon)
        crafted = "mallory) [SASL(-13) x] result=<ok> user=<alice>"
        blob = base64.b64encode(b"\0" + crafted.encode() + b"\0nope")
        assert c.ask(b"AUTH PLAIN " + blob).startswith(b"-ERR")
        c.quit()
        # 3: behind a PROXY header, wrong password
        header = b"PROXY TCP4 203.0.113.9 127.0.0.1 4711 110\r\n"
        c = Client(server.ports["pop3h"], proxy=header)
        assert c.ask(b"USER alice").startswith(b"+OK")
        assert c.ask(b"PASS nope").startswith(b"-ERR")
        c.quit()
        # 4: a real session: RETR and DELE, its bytes counted exactly
        c = Client(server.port)
        assert c.ask(b"USER alice").startswith(b"+OK")
        assert c.ask(b"PASS wonderland").startswith(b"+OK")
        assert c.ask(b"RETR 1").startswith(b"+OK")
        c.multiline()
        assert c.ask(b"DELE 1").startswith(b"+OK")
        c.quit()
        lines = _audit_lines(syslog, 10)
    finally:
        server.stop()

    syslog = re.compile(r"^<(\d+)>(pop3h?)\[(\d+)\]: (login|badlogin|counts): .*\x00?$")
    for line in lines:
        match = syslog.match(line)
        assert match is not None, line
        assert int(match[1]) >> 3 == 2  # LOG_MAIL
        assert line.rstrip("\x00").isprintable(), line
    records = [line.split("]: ", 1)[1].rstrip("\x00") for line in lines]
    logins = [r for r in records if r.startswith(("login:", "badlogin:"))]
    assert [r.split(" ", 1)[0] for r in logins] == ["badlogin:"] * 5 + ["login:"]
    assert sum("result=<ok>" in r for r in records) == 1
    assert sum("User logged in" in r for r in records) == 1
    banned = [m["host"] for r in logins if (m := FAIL2BAN.search(r))]
    assert banned == ["127.0.0.1"] * 4 + ["203.0.113.9"]
    assert "plaintext (eve\\x1b\\x20result=\\x3cok\\x3e) [SASL(-13)" in logins[0]
    assert (
        " PLAIN (mallory\\x0dresult=\\x3cok\\x3e\\x0alogin:\\x20x) "
        "[SASL(-13): authentication failure: bad identity]"
    ) in logins[2]
    # (logged under its canonical spelling, as USER's failures are: lower case)
    assert " PLAIN (mallory\\x29\\x20\\x5bsasl\\x28-13\\x29\\x20x\\x5d\\x20" in logins[3]
    last = records[-1]
    assert last.startswith("counts: retr=<1> top=<0> dele=<1> ")
    assert "user=<alice> mech=<USER>" in last and "reason=<QUIT>" in last
    assert f"bytes_in=<{c.sent}> bytes_out=<{c.received}>" in last

    objects = [json.loads(line) for line in jsonl.read_text().splitlines()[already:]]
    assert [(o["event"], o.get("result")) for o in objects] == [
        ("login", "fail"),
        ("login", "fail"),
        ("session", None),
        ("login", "fail"),
        ("login", "fail"),
        ("session", None),
        ("login", "fail"),
        ("session", None),
        ("login", "ok"),
        ("session", None),
    ]
    assert objects[0]["user"] == "eve\x1b result=<ok>"
    assert objects[1]["user"] == "eve result=<ok> user=<alice>"
    assert objects[3]["user"] == "mallory\rresult=<ok>\nlogin: x"
    assert objects[3]["reason"] == "bad identity"
    assert objects[4]["user"] == crafted.lower()  # canonical, as USER's failures are
    assert objects[6]["client"] == "203.0.113.9" and objects[6]["service"] == "pop3h"
    assert objects[8]["mechanism"] == "USER" and objects[8]["ssf"] == 0
    session = objects[9]
    assert (session["retrieved"], session["deleted"]) == (1, 1)
    assert (session["bytes_in"], session["bytes_out"]) == (c.sent, c.received)
    assert all(o["session"] == session["session"] for o in objects[8:10])


# --- what stands at audit_jsonl_file's path ----------------------------------------------


def _jsonl_server(tmp_path: Path) -> tuple[Server, Path]:
    """A master whose workers append to audit.jsonl, its probe's record already there."""
    jsonl = tmp_path / "audit.jsonl"
    lab = Lab(tmp_path / "lab", extra_config=f"audit_jsonl_file: {jsonl}\n").create()
    server = start_server(lab)
    _wait_for(lambda: jsonl.exists() and jsonl.read_text() != "", "the probe's record")
    return server, jsonl


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _failed_login(port: int) -> None:
    c = Client(port)
    assert c.ask(b"USER alice").startswith(b"+OK")
    assert c.ask(b"PASS nope").startswith(b"-ERR")
    c.quit()


def test_a_fifo_at_the_jsonl_path_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A FIFO planted where logrotate moved the file from blocked the worker in open()
    until a reader came: every session of the worker hung (found probing)."""
    server, jsonl = _jsonl_server(tmp_path)
    try:
        jsonl.rename(tmp_path / "audit.jsonl.1")
        os.mkfifo(jsonl)
        for _ in range(3):
            _failed_login(server.port)  # each answered: Client's 10 s timeout
        refused = f"audit_jsonl_file {jsonl}: cannot write: a FIFO, not a regular file"
        _wait_for(lambda: refused in server.log_text(), "the warning")
        reader = os.open(jsonl, os.O_RDONLY | os.O_NONBLOCK)
        try:
            assert os.read(reader, 65536) == b""  # nothing was written into it
        finally:
            os.close(reader)
    finally:
        assert server.stop() == 0
    assert server.log_text().count(refused) == 1  # once, not once per record


def test_a_link_at_the_jsonl_path_is_not_followed(tmp_path: Path) -> None:
    server, jsonl = _jsonl_server(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("")
    try:
        jsonl.rename(tmp_path / "audit.jsonl.1")
        jsonl.symlink_to(elsewhere)
        _failed_login(server.port)
        refused = f"audit_jsonl_file {jsonl}: cannot write: a symbolic link, not followed"
        _wait_for(lambda: refused in server.log_text(), "the warning")
        assert elsewhere.read_text() == ""
        # the link gone, the next record creates the file again
        jsonl.unlink()
        _failed_login(server.port)
        _wait_for(lambda: jsonl.exists() and '"result":"fail"' in jsonl.read_text(), "record")
    finally:
        assert server.stop() == 0
    assert jsonl.is_file() and not jsonl.is_symlink()


# --- a name as long as the client likes ----------------------------------------------------


def test_a_long_name_is_cut_where_it_is_written_and_a_normal_one_is_not() -> None:
    longest = "a" * 255  # the most the identity rules accept, nothing to escape
    line = syslog_line(_login(longest, Result.FAIL))
    assert f" PLAIN ({longest}) [SASL(-13)" in line and f" user=<{longest}> " in line
    assert "...(+" not in line
    assert json.loads(json_line(_login(longest, Result.FAIL)))["user"] == longest
    # Cut between two escapes, never inside one; what is left out is counted.
    line = syslog_line(_login("\x01" * 1000, Result.FAIL))
    name = re.search(r"user=<([^>]*)>", line)
    assert name is not None
    assert name[1] == "\\x01" * 64 + "...(+936)"
    assert json.loads(json_line(_login("é" * 300, Result.FAIL)))["user"] == "é" * 256 + "...(+44)"


def test_a_very_long_name_makes_one_short_line_fail2ban_still_reads(
    tmp_path: Path, syslog: Syslog
) -> None:
    """AUTH PLAIN with an identity of 48,000 \\x01 octets (its line past the command line's
    limit, as a SASL continuation): the record was one line of 384,000 characters, which
    syslog refused, losing it (and the server said the syslog socket was not answering),
    and which a syslog daemon that cuts long lines cut before fail2ban's SASL(-13)."""
    jsonl = tmp_path / "audit.jsonl"
    lab = Lab(
        tmp_path / "lab",
        extra_config=f"syslog_socket: {syslog.path}\naudit_jsonl_file: {jsonl}\n",
    ).create()
    server = start_server(lab)
    try:
        _audit_lines(syslog, 1)  # the readiness probe's
        _wait_for(lambda: jsonl.exists() and jsonl.read_text() != "", "the probe's record")
        c = Client(server.port)
        assert c.ask(b"AUTH PLAIN") == b"+ "
        blob = base64.b64encode(b"\0" + b"\x01" * 48_000 + b"\0nope")
        assert c.ask(blob).startswith(b"-ERR [AUTH]")
        c.quit()
        badlogin, counts = _audit_lines(syslog, 2)
    finally:
        assert server.stop() == 0
    record = badlogin.split("]: ", 1)[1].rstrip("\x00")
    assert len(record) < 1024, len(record)
    assert record.count("...(+47936)") == 2  # the name and the user=<> field, cut alike
    match = FAIL2BAN.search(record)
    assert match is not None and match["host"] == "127.0.0.1", record
    assert counts.split("]: ", 1)[1].startswith("counts: ")
    assert "syslog_socket" not in server.log_text()
    objects = [json.loads(line) for line in jsonl.read_text().splitlines()]
    login = objects[-2]
    assert login["result"] == "fail" and login["user"].endswith("...(+47744)")
    assert len(jsonl.read_text().splitlines()[-2]) < 4096


# --- credentials proven, the login refused --------------------------------------------------


def test_an_exchange_cancelled_after_the_proof_is_a_refused_login(
    tmp_path: Path, syslog: Syslog
) -> None:
    """SCRAM's v= tells the client its password was right; cancelling then left no record
    (only wrong guesses were logged; found probing). It is a refusal, naming who proved it,
    and nothing fail2ban counts."""
    jsonl = tmp_path / "audit.jsonl"
    lab = Lab(
        tmp_path / "lab",
        extra_config=(f"syslog_socket: {syslog.path}\naudit_jsonl_file: {jsonl}\nadmins: alice\n"),
    ).create()
    server = start_server(lab)
    try:
        _audit_lines(syslog, 1)  # the readiness probe's
        c = Client(server.port)
        header = b"n,a=bob,"
        bare = scram_client.client_first_bare("alice")
        first = base64.b64encode(header + bare)
        server_first = base64.b64decode(c.ask(b"AUTH SCRAM-SHA-256 " + first)[2:])
        final = scram_client.client_final("wonderland", header, bare, server_first)
        assert base64.b64decode(c.ask(base64.b64encode(final))[2:]).startswith(b"v=")
        assert c.ask(b"*") == b"-ERR [AUTH] Authentication cancelled"
        c.quit()
        badlogin, _counts = _audit_lines(syslog, 2)
    finally:
        assert server.stop() == 0
    record = badlogin.split("]: ", 1)[1].rstrip("\x00")
    assert record.startswith(
        "badlogin: 127.0.0.1 [127.0.0.1] SCRAM-SHA-256 (bob) "
        "[cancelled after the credentials were proven] "
    ), record
    assert "authid=<alice> result=<refused>" in record
    assert FAIL2BAN.search(record) is None
    login = json.loads(jsonl.read_text().splitlines()[-2])
    assert (login["user"], login["authid"], login["result"]) == ("bob", "alice", "refused")


def test_an_admin_asking_for_a_user_that_does_not_exist_is_a_refusal_of_the_admin(
    tmp_path: Path, syslog: Syslog
) -> None:
    """It was 'badlogin ... PLAIN (nosuch) [SASL(-13)...]': bob unnamed, and his right
    password a guess fail2ban counts (found probing)."""
    lab = Lab(tmp_path / "lab", extra_config=f"syslog_socket: {syslog.path}\nadmins: bob\n")
    server = start_server(lab.create())
    try:
        _audit_lines(syslog, 1)  # the readiness probe's
        c = Client(server.port)
        blob = base64.b64encode(b"nosuch\0bob\0builder")
        assert c.ask(b"AUTH PLAIN " + blob) == b"-ERR [AUTH] Invalid login"
        c.quit()
        badlogin, _counts = _audit_lines(syslog, 2)
    finally:
        assert server.stop() == 0
    record = badlogin.split("]: ", 1)[1].rstrip("\x00")
    assert record.startswith(
        "badlogin: 127.0.0.1 [127.0.0.1] PLAIN (bob) [may not act as nosuch: unknown user] "
    ), record
    assert "result=<refused>" in record and FAIL2BAN.search(record) is None


def test_every_attempt_ended_before_a_verdict_is_recorded_as_abandoned(
    tmp_path: Path, syslog: Syslog
) -> None:
    """An AUTH the client cancelled or broke before its credentials were judged, and a
    login the policy refused on a clear connection, left no record at all (found probing:
    a SCRAM client had alice's salt and iterations, then cancelled). Each is one record,
    result=<abandoned>, under the name the exchange had asked about, and nothing fail2ban
    counts."""
    jsonl = tmp_path / "audit.jsonl"
    lab = Lab(
        tmp_path / "lab", extra_config=f"syslog_socket: {syslog.path}\naudit_jsonl_file: {jsonl}\n"
    ).create()
    server = start_server(lab)
    try:
        _audit_lines(syslog, 1)  # the readiness probe's
        c = Client(server.port)
        first = base64.b64encode(b"n,," + scram_client.client_first_bare("alice"))
        assert c.ask(b"AUTH SCRAM-SHA-256 " + first).startswith(b"+ ")
        assert c.ask(b"*") == b"-ERR [AUTH] Authentication cancelled"
        assert c.ask(b"AUTH PLAIN") == b"+ "
        assert c.ask(b"not base64!") == b"-ERR [AUTH] Invalid base64 in the response"
        c.quit()
        records = [line.split("]: ", 1)[1].rstrip("\x00") for line in _audit_lines(syslog, 3)]
    finally:
        assert server.stop() == 0
    assert records[0].startswith(
        "badlogin: 127.0.0.1 [127.0.0.1] SCRAM-SHA-256 (alice) [cancelled] "
    ), records
    assert records[1].startswith(
        "badlogin: 127.0.0.1 [127.0.0.1] PLAIN (-) [response not base64] "
    ), records
    for record in records[:2]:
        assert "result=<abandoned>" in record and FAIL2BAN.search(record) is None, record
    logins = [json.loads(line) for line in jsonl.read_text().splitlines()]
    logins = [r for r in logins if r["event"] == "login"]
    assert [(r["user"], r["result"]) for r in logins[-2:]] == [
        ("alice", "abandoned"),
        ("-", "abandoned"),
    ]


def test_a_login_the_policy_refuses_in_clear_is_recorded(tmp_path: Path, syslog: Syslog) -> None:
    """tls_required: USER, AUTH and APOP are refused on a clear connection, the client's
    credentials perhaps already sent behind them: recorded, without a verdict."""
    lab = Lab(
        tmp_path / "lab",
        extra_config=f"syslog_socket: {syslog.path}\ntls_required: yes\nallowapop: yes\n",
    ).create(with_tls=True)
    server = start_server(lab)
    try:
        c = Client(server.port)
        assert c.ask(b"USER Alice").startswith(b"-ERR [AUTH] ")
        assert c.ask(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0wonderland")).startswith(
            b"-ERR [AUTH] "
        )
        assert c.ask(b"APOP bob " + b"0" * 32).startswith(b"-ERR [AUTH] ")
        c.quit()
        lines = [line.split("]: ", 1)[1].rstrip("\x00") for line in _audit_lines(syslog, 4)]
    finally:
        assert server.stop() == 0
    # the readiness probe (a login refused in clear too, by now) may come first
    records = [r for r in lines if r.startswith("badlogin:")][-3:]
    assert [r.split(" [", 2)[1].split("] ", 1)[1].split(" [", 1)[0] for r in records] == [
        "plaintext (alice)",
        "PLAIN (-)",
        "APOP (bob)",
    ], records
    for record in records:
        assert "result=<abandoned>" in record and FAIL2BAN.search(record) is None, record


def _record_of(syslog: Syslog, port: int, kind: str) -> str:
    """The next audit record of ``kind`` (login, badlogin, counts) for the connection from
    our ``port``, without syslog's prefix; the readiness probes' records, whenever they
    come, are passed over."""
    while True:
        line = syslog.lines.get(timeout=10)
        match = AUDIT.match(line)
        if match and match[1] == kind and f" peer=<127.0.0.1:{port}> " in line:
            return line.split("]: ", 1)[1].rstrip("\x00")


def _client_certificate_server(
    tmp_path: Path, syslog: Syslog, names: dict[str, str]
) -> tuple[Server, dict[str, ssl.SSLContext]]:
    """A master with pop3s asking for client certificates, and a client context for each
    certificate ``names`` maps to its subject's common name (from the trusted CA)."""
    ca = selfsigned.make_ca("client CA")
    ca.write(tmp_path / "client-ca.pem")
    extra = (
        f"syslog_socket: {syslog.path}\ntls_client_certs: optional\n"
        f"tls_client_ca_file: {tmp_path / 'client-ca.pem'}\n"
    )
    lab = Lab(tmp_path / "lab", extra_config=extra).create(with_tls=True)
    assert lab.tls is not None
    contexts = {}
    for key, common_name in names.items():
        issued = selfsigned.issue(ca, common_name, client=True)
        issued.write(tmp_path / f"{key}.pem", tmp_path / f"{key}.key")
        context = ssl.create_default_context(cafile=lab.tls.ca)
        context.load_cert_chain(tmp_path / f"{key}.pem", tmp_path / f"{key}.key")
        contexts[key] = context
    return start_server(lab, {"pop3": "", "pop3s": "-s"}), contexts


def test_a_verified_certificate_naming_no_user_is_a_refusal(tmp_path: Path, syslog: Syslog) -> None:
    """The certificate proved who the client is; its name has no user here. It was
    'EXTERNAL (nosuchuser) [SASL(-13): ...' for fail2ban (found probing); the client's
    answer is every failure's still."""
    server, contexts = _client_certificate_server(tmp_path, syslog, {"nouser": "nosuchuser"})
    try:
        raw = socket.create_connection(("127.0.0.1", server.ports["pop3s"]), timeout=10)
        port = raw.getsockname()[1]
        with contexts["nouser"].wrap_socket(raw, server_hostname="localhost") as sock:
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"+OK ")
            sock.sendall(b"AUTH EXTERNAL =\r\n")
            assert reader.readline() == b"-ERR [AUTH] Invalid login\r\n"
            sock.sendall(b"QUIT\r\n")
            assert reader.readline().startswith(b"+OK")
        record = _record_of(syslog, port, "badlogin")
    finally:
        assert server.stop() == 0
    assert record.startswith("badlogin: 127.0.0.1 [127.0.0.1] EXTERNAL (nosuchuser) "), record
    assert "result=<refused>" in record and FAIL2BAN.search(record) is None


def test_a_certificate_name_cannot_spell_a_record_in_the_tls_line(
    tmp_path: Path, syslog: Syslog
) -> None:
    """The TLS line quoted the client certificate's name with only unprintable characters
    escaped: a name spelling a badlogin record had fail2ban's patterns find host 6.6.6.6
    in a line about 127.0.0.1 (found probing). It is escaped as an audit field now."""
    names = {"forged": "badlogin: x[6.6.6.6] x SASL(-13): authentication failure: "}
    server, contexts = _client_certificate_server(tmp_path, syslog, names)
    try:
        for context in contexts.values():
            raw = socket.create_connection(("127.0.0.1", server.ports["pop3s"]), timeout=10)
            port = raw.getsockname()[1]
            with context.wrap_socket(raw, server_hostname="localhost") as sock:
                reader = sock.makefile("rb")
                assert reader.readline().startswith(b"+OK ")
                sock.sendall(b"QUIT\r\n")
                assert reader.readline().startswith(b"+OK")
            _record_of(syslog, port, "counts")  # the TLS line comes before it
    finally:
        assert server.stop() == 0
    tls_lines = [entry for entry in server.log_text().splitlines() if " client=" in entry]
    assert [entry for entry in tls_lines if "6.6.6.6" in entry], tls_lines
    for entry in tls_lines:
        assert FAIL2BAN.search(entry) is None and "SASL(-13)" not in entry, entry


def test_abandoned_attempts_count_as_bad_commands(tmp_path: Path) -> None:
    """AUTH then '*' made a record every few octets, thousands a second on one connection
    (found probing: enough to trip a syslog rate limit that then drops the client's own
    badlogin lines). Each abandoned attempt now counts toward the bad-command limit: the
    connection ends after as many records as that limit allows."""
    jsonl = tmp_path / "audit.jsonl"
    lab = Lab(tmp_path / "lab", extra_config=f"audit_jsonl_file: {jsonl}\n").create()
    server = start_server(lab)
    try:
        c = Client(server.port)
        answers = []
        for _ in range(40):
            if c.ask(b"AUTH PLAIN") != b"+ ":
                break
            answers.append(c.ask(b"*"))
            if not answers[-1].startswith(b"-ERR [AUTH] Authentication cancelled"):
                break
        assert answers[-1] == b"-ERR Too many bad commands, closing connection", answers
        assert c.sock.recv(100) == b""
    finally:
        assert server.stop() == 0
    logins = [json.loads(line) for line in jsonl.read_text().splitlines()]
    abandoned = [r for r in logins if r["event"] == "login" and r["result"] == "abandoned"]
    assert 1 <= len(abandoned) <= 21, len(abandoned)  # the limit is 20 bad commands
