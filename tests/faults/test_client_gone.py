"""The client vanishes (a TCP reset) at every point of a session, against a real
pop3d-master and a real Maildir: no mail is lost, deletions happen only when QUIT was
processed, and the maildrop lock is released at once, so the next session logs in without
[IN-USE] (long before any idle timeout could have freed it)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.client import LogWatch, Pop, files
from tests.support.lab import Lab, Server, start_server

BIG = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n"
BIG_LINES = 4000  # 4 MB: far more than the socket buffers hold


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    lab = Lab(tmp_path_factory.mktemp("gone") / "lab").create()
    running = start_server(lab)
    yield running
    running.stop()


@pytest.fixture
def maildir(server: Server) -> Path:
    """bob's three messages, and a 4 MB fourth one, afresh for each test."""
    lab = server.lab
    lab.reset_maildrop("bob")
    (lab.maildir("bob") / "new" / "1800000000.M9P1.big").write_bytes(BIG * BIG_LINES)
    return lab.maildir("bob")


def next_session_sees(server: Server, count: int) -> None:
    """A new session logs in at once (the lock was released) and sees ``count`` messages."""
    client = Pop(server.port)
    reply = client.login()
    assert reply.startswith(b"+OK Mailbox locked"), reply
    assert client.stat()[0] == count
    assert client.ask(b"QUIT").startswith(b"+OK")
    client.close()


def _greeted(client: Pop) -> None:
    assert client.greeting.startswith(b"+OK")


def _after_user(client: Pop) -> None:
    assert client.ask(b"USER bob").startswith(b"+OK")


def _mid_auth_plain(client: Pop) -> None:
    assert client.ask(b"AUTH PLAIN") == b"+ "


def _mid_auth_scram(client: Pop) -> None:
    first = base64.b64encode(b"n,,n=bob,r=fyko+d2lbbFgONRv9qkxdawL")
    assert client.ask(b"AUTH SCRAM-SHA-256 " + first).startswith(b"+ ")


def _logged_in(client: Pop) -> None:
    assert client.login().startswith(b"+OK Mailbox locked")


def _mid_retr(client: Pop) -> None:
    _logged_in(client)
    assert client.ask(b"RETR 4") == b"+OK Message follows"
    client.sock.recv(65536)  # some of it; the rest fills the socket buffers


def _after_dele(client: Pop) -> None:
    _logged_in(client)
    for number in (1, 2, 4):
        assert client.ask(b"DELE %d" % number).startswith(b"+OK")


def _dele_pipelined_with_quit_unread(client: Pop) -> None:
    """DELE and QUIT sent together, the reset before any answer is read: the server
    cannot write DELE's +OK, so it never reaches QUIT."""
    _logged_in(client)
    client.send(b"DELE 1\r\nDELE 2\r\nQUIT\r\n")


BEFORE_QUIT: dict[str, Callable[[Pop], None]] = {
    "after the greeting": _greeted,
    "after USER": _after_user,
    "mid AUTH PLAIN": _mid_auth_plain,
    "mid AUTH SCRAM": _mid_auth_scram,
    "logged in": _logged_in,
    "mid RETR": _mid_retr,
    "after DELE": _after_dele,
}


@pytest.mark.parametrize("point", list(BEFORE_QUIT))
def test_a_client_vanishing_before_quit_loses_nothing(
    server: Server, maildir: Path, point: str
) -> None:
    before = files(maildir)
    watch = LogWatch(server)
    client = Pop(server.port)
    BEFORE_QUIT[point](client)
    client.reset()
    reason = watch.ended(client)
    assert "QUIT" not in reason, reason
    assert files(maildir) == before  # nothing deleted, nothing changed
    next_session_sees(server, 4)
    log = watch.text()
    assert "Traceback" not in log and " ERROR " not in log, log


def test_dele_and_quit_pipelined_then_reset(server: Server, maildir: Path) -> None:
    """The answer to the first DELE cannot be written, so QUIT is never reached: either way
    the outcome must match what the log says was processed."""
    before = files(maildir)
    watch = LogWatch(server)
    client = Pop(server.port)
    _dele_pipelined_with_quit_unread(client)
    client.reset()
    reason = watch.ended(client)
    after = files(maildir)
    if reason.startswith("QUIT"):  # the server read and ran everything before the reset
        assert len(after) == 2 and set(after) < set(before)
        next_session_sees(server, 2)
    else:
        assert after == before, reason
        next_session_sees(server, 4)


def test_quit_then_reset_at_once_commits(server: Server, maildir: Path) -> None:
    """QUIT was received: UPDATE runs to its end whether or not +OK can be delivered."""
    before = files(maildir)
    watch = LogWatch(server)
    client = Pop(server.port)
    _after_dele(client)
    client.send(b"QUIT\r\n")
    client.reset()  # in the middle of the QUIT answer (or before it was written)
    assert watch.ended(client).startswith("QUIT")
    third = "1700000003.M3P1.lab"  # DELE 1, 2 and 4 were committed
    assert files(maildir) == {third: before[third]}
    next_session_sees(server, 1)


def test_quit_then_reset_while_the_commit_runs(server: Server, maildir: Path) -> None:
    """Many deletions (a commit that takes a while) and the reset during it."""
    cur = maildir / "cur"
    for number in range(400):
        (cur / f"1800001{number:03d}.M{number}P2.lab,S=5,W=6").write_bytes(b"body\n")
    before = files(maildir)
    watch = LogWatch(server)
    client = Pop(server.port)
    _logged_in(client)
    client.send(b"".join(b"DELE %d\r\n" % n for n in range(5, 405)))
    for _ in range(400):
        assert client.line().startswith(b"+OK")
    client.send(b"QUIT\r\n")
    client.reset()
    assert watch.ended(client).startswith("QUIT")
    assert files(maildir) == {k: v for k, v in before.items() if not k.startswith("1800001")}
    next_session_sees(server, 4)
