"""A flood of passwords (found probing): a client sending PASS and resetting, over and over,
queued an Argon2 hash per connection at no cost to itself, and each such session held
its place against maxchild until its hash had run, seconds of CPU later. A check whose
client is gone before it starts is now dropped, and past ``password_checks_waiting``
waiting checks a login gets no verdict at once (-ERR [SYS/TEMP])."""

from __future__ import annotations

import re
import socket
import struct
from pathlib import Path

from pop3d.auth import credentials, schemes
from pop3d.auth.passwords import Argon2Parameters
from pop3d.security.secret import Secret
from tests.support.lab import Lab, Server, start_server

# About a quarter of a second a check here: the thread stays busy while the test acts.
SLOW = Argon2Parameters(memory_kib=65536, passes=3)


def _slow_user(lab: Lab) -> None:
    values, _warnings = schemes.derive(Secret(b"right"), {"ARGON2ID"}, SLOW)
    credentials.update(lab.credentials, "slow", lambda _old: credentials.UserRecord("slow", values))
    lab.reset_maildrop("slow")


def _send_password(port: int, password: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"+OK")
    sock.sendall(b"USER slow\r\n")
    assert reader.readline().startswith(b"+OK")
    sock.sendall(b"PASS " + password + b"\r\n")
    return sock


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _badlogins(server: Server) -> int:
    return len(re.findall(r"badlogin: .* plaintext \(slow\)", server.log_text()))


def test_a_password_whose_client_reset_is_never_checked(lab: Lab) -> None:
    _slow_user(lab)
    server = start_server(lab)
    try:
        first = _send_password(server.port, b"wrong0")  # its check takes the thread
        for number in range(1, 11):
            _reset(_send_password(server.port, b"wrong%d" % number))
        assert first.makefile("rb").readline() == b"-ERR [AUTH] Invalid login\r\n"
        first.close()
        # A login queued after everything left: answered once every check before it ran.
        last = _send_password(server.port, b"right")
        assert last.makefile("rb").readline().startswith(b"+OK")
        last.close()
        assert _badlogins(server) == 1  # the ten reset before their turn: never checked
    finally:
        server.stop()


def test_past_the_bound_a_login_gets_no_verdict_at_once(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab", extra_config="password_checks_waiting: 1\n").create()
    _slow_user(lab)
    server = start_server(lab)
    try:
        first = _send_password(server.port, b"wrong")
        second = _send_password(server.port, b"right")
        answer = second.makefile("rb").readline()
        assert answer == b"-ERR [SYS/TEMP] Unable to check the password now, try again later\r\n"
        assert first.makefile("rb").readline() == b"-ERR [AUTH] Invalid login\r\n"
        for sock in (first, second):
            sock.close()
        log = server.log_text()
        assert re.search(r"result=<unavailable> reason=<too many password checks waiting>", log)
        assert _badlogins(server) == 2  # the refused check is logged, not as a wrong password
        assert log.count("SASL(-13)") == 1
    finally:
        server.stop()
