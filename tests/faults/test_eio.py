"""Real EIO from the kernel under delivery, listing, RETR and the UPDATE commit.

The spool (``partition-default``) is a FUSE passthrough (tests/faults/eio_fs.py) mounted
over itself in a private mount namespace; pop3d-master and ``pop3d-admin deliver`` run in
that namespace (``nsenter``), so their system calls on the spool go through it and fail
with EIO where a test says: per operation, per path, after so many octets. The test
itself looks at the real directory underneath, which is what a crash would leave."""

from __future__ import annotations

import poplib
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.client import LogWatch, Pop, files
from tests.faults.eio_mount import FaultyMount
from tests.support.lab import Lab, Server, start_server

MAILDIR = "/bob/Maildir"  # bob's Maildir as the filesystem sees it
BIG = b"Subject: big\n\n" + (b"z" * 98 + b"\n") * 40_000  # 4 MB


@dataclass
class Rig:
    lab: Lab
    fs: FaultyMount

    @property
    def maildir(self) -> Path:
        return self.lab.maildir("bob")


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    why = FaultyMount.available()
    if why is not None:
        pytest.skip(why)
    # popuseimapflags: UPDATE also renames (RETR'd messages to cur/...:2,S)
    lab = Lab(tmp_path_factory.mktemp("eio") / "lab", "popuseimapflags: yes\n").create()
    fs = FaultyMount(lab.root / "spool", lab.root / "eio_fs.log").start()
    yield Rig(lab, fs)
    fs.stop()


@pytest.fixture(scope="module")
def server(mounted: Rig) -> Iterator[Server]:
    running = start_server(mounted.lab, wrapper=mounted.fs.enter)
    yield running
    running.stop()


@pytest.fixture
def rig(mounted: Rig) -> Iterator[Rig]:
    """bob's maildrop as the lab made it; no faults left at the end."""
    mounted.lab.reset_maildrop("bob")
    yield mounted
    mounted.fs.clear()


def deliver(rig: Rig, message: bytes) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "pop3d.cli.admin", "-C", str(rig.lab.config)]
    return subprocess.run(
        [*rig.fs.enter, *command, "deliver", "bob"], input=message, capture_output=True, timeout=60
    )


def login(server: Server) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", server.port, timeout=20)
    client.user("bob")
    client.pass_("builder")
    return client


# --- delivery -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        # the disk fails part-way through the file
        (("write", f"{MAILDIR}/tmp/*", 64 * 1024), r"cannot write tmp/\S+ in "),
        (("fsync", f"{MAILDIR}/tmp/*", None), r"cannot sync tmp/\S+ in "),
        (("create", f"{MAILDIR}/tmp/*", None), r"cannot create tmp/\S+ in "),
        (("link", f"{MAILDIR}/new/*", None), r"cannot link tmp/\S+ into new/ in "),
        # the link is made, but not durably: it must go
        (("fsyncdir", f"{MAILDIR}/new", None), r"cannot sync new/ in "),
    ],
    ids=["write", "fsync", "create", "link", "fsyncdir"],
)
def test_eio_while_delivering_is_tempfail_and_the_retry_delivers_once(
    rig: Rig, rule: tuple[str, str, int | None], says: str
) -> None:
    maildir = rig.maildir
    before = files(maildir)
    op, path, after = rule
    rig.fs.fail(op, path, after=after)
    failed = deliver(rig, BIG)
    assert rig.fs.hits() == [1]
    assert failed.returncode == 75, failed.stderr  # EX_TEMPFAIL: the MTA keeps it, retries
    stderr = failed.stderr.decode()
    assert re.fullmatch(
        rf"pop3d-admin: delivery to bob failed, message not stored: {says}"
        rf"{re.escape(str(maildir))}: Input/output error\n",
        stderr,
    ), stderr
    assert files(maildir) == before  # nothing in new/, whole or half
    assert list((maildir / "tmp").iterdir()) == []
    rig.fs.clear()
    retried = deliver(rig, BIG)
    assert retried.returncode == 0, retried.stderr
    after_retry = files(maildir)
    added = set(after_retry) - set(before)
    assert len(after_retry) == len(before) + 1 and after_retry[added.pop()] == BIG
    assert list((maildir / "tmp").iterdir()) == []


def test_eio_removing_the_temporary_name_after_delivery_is_not_a_failure(
    rig: Rig,
) -> None:
    """The message is in new/ and synced when tmp/'s name is removed: a failure then must
    not make the MTA deliver it a second time."""
    maildir = rig.maildir
    before = files(maildir)
    rig.fs.fail("unlink", f"{MAILDIR}/tmp/*")
    done = deliver(rig, b"Subject: once\n\nonly once\n")
    assert rig.fs.hits() == [1]
    assert done.returncode == 0, done.stderr
    after = files(maildir)
    assert len(after) == len(before) + 1


# --- listing at login -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "folder"), [("readdir", "new"), ("readdir", "cur"), ("opendir", "cur")]
)
def test_eio_listing_the_maildrop_is_sys_temp_and_the_lock_is_released(
    server: Server, rig: Rig, op: str, folder: str
) -> None:
    watch = LogWatch(server)
    rig.fs.fail(op, f"{MAILDIR}/{folder}")
    client = poplib.POP3("127.0.0.1", server.port, timeout=20)
    client.user("bob")
    with pytest.raises(poplib.error_proto) as refused:
        client.pass_("builder")
    assert refused.value.args[0] == b"-ERR [SYS/TEMP] Unable to open maildrop"
    assert rig.fs.hits() == [1]
    watch.wait_for(r"ERROR .*cannot open maildrop of bob: .*Input/output error")
    # The disk is back: the same connection may log in (no stale lock, no [IN-USE]) ...
    rig.fs.clear()
    client.user("bob")
    assert client.pass_("builder").startswith(b"+OK")
    assert client.stat()[0] == 3
    assert client.quit().startswith(b"+OK")
    # ... and so may the next one.
    again = login(server)
    assert again.stat()[0] == 3
    again.quit()


# --- reading mid-RETR -----------------------------------------------------------------------


def test_eio_mid_retr_ends_the_connection_without_the_dot(server: Server, rig: Rig) -> None:
    maildir = rig.maildir
    big = maildir / "new" / "1800000000.M1P1.big"
    big.write_bytes(BIG)
    watch = LogWatch(server)
    client = Pop(server.port)
    assert client.login().startswith(b"+OK")
    rig.fs.fail("read", f"{MAILDIR}/new/1800000000.*", after=1_000_000)
    assert client.ask(b"RETR 4") == b"+OK Message follows"
    received: list[bytes] = []
    with pytest.raises(ConnectionError, match="closed by the server"):
        while True:
            received.append(client.line())
    assert rig.fs.hits() == [1]
    # Part of the message, and no terminating dot: the client knows it is incomplete.
    assert b"." not in received and 0 < len(received) < 40_002
    assert received[0] == b"Subject: big" and set(received[2:]) == {b"z" * 98}
    assert watch.ended(client) == "read error while sending a message"
    watch.wait_for(r"ERROR session \S+: read error mid-message: .*Input/output error")
    assert "went away" not in watch.text()  # not taken for a client hanging up
    rig.fs.clear()
    assert big.read_bytes() == BIG  # still there, untouched
    # A real client library sees the same fault as an error, and the message whole after.
    rig.fs.fail("read", f"{MAILDIR}/new/1800000000.*", after=1_000_000)
    fresh = login(server)
    with pytest.raises(poplib.error_proto, match="EOF"):
        fresh.retr(4)
    rig.fs.clear()
    fresh = login(server)
    _reply, lines, _octets = fresh.retr(4)
    assert b"\n".join(lines) + b"\n" == BIG
    fresh.quit()


@pytest.mark.parametrize("op", ["open", "read"])
def test_eio_before_anything_is_sent_is_an_err_and_the_session_goes_on(
    server: Server, rig: Rig, op: str
) -> None:
    """Nothing of the message has gone out yet: the client can be told, and may go on
    (and QUIT its DELEs) instead of being cut off at every attempt to read it."""
    watch = LogWatch(server)
    client = login(server)
    rig.fs.fail(op, f"{MAILDIR}/new/1700000001.*")
    with pytest.raises(poplib.error_proto) as refused:
        client.retr(1)
    assert refused.value.args[0] == b"-ERR [SYS/TEMP] Unable to read message 1"
    assert rig.fs.hits() == [1]
    watch.wait_for(rf"ERROR session \S+: cannot {op} message: .*Input/output error")
    assert client.retr(3)[2] > 0
    client.dele(2)
    assert client.quit().startswith(b"+OK")
    assert len(rig.lab.messages("bob")) == 2


# --- the UPDATE commit ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "hits", "left"),
    [
        (("unlink", f"{MAILDIR}/new/*"), 2, 3),  # no deletion happens
        (("fsyncdir", f"{MAILDIR}/new"), 1, 1),  # they happen, but cannot be made durable
    ],
    ids=["unlink", "fsyncdir"],
)
def test_eio_while_committing_is_err_for_quit_and_loses_nothing(
    server: Server, rig: Rig, rule: tuple[str, str], hits: int, left: int
) -> None:
    maildir = rig.maildir
    before = files(maildir)
    watch = LogWatch(server)
    client = login(server)
    client.dele(1)
    client.dele(2)
    rig.fs.fail(*rule)
    with pytest.raises(poplib.error_proto) as refused:
        client.quit()  # RFC 1939 §6, RFC 2449 §8.1.2: -ERR when UPDATE could not finish
    assert refused.value.args[0] == (
        b"-ERR [SYS/TEMP] 2 of 2 deleted messages could not be removed"
    )
    assert rig.fs.hits() == [hits]
    watch.wait_for(r"ERROR session \S+: 2 deletions failed")
    after = files(maildir)
    third = next(name for name in before if name.startswith("1700000003"))
    assert after[third] == before[third]  # the message not deleted is untouched
    assert len(after) == left and all(after[name] == before[name] for name in after)
    rig.fs.clear()
    fresh = login(server)
    assert fresh.stat()[0] == left
    assert fresh.quit().startswith(b"+OK")


def test_eio_marking_a_message_seen_at_update_does_not_fail_quit(server: Server, rig: Rig) -> None:
    """popuseimapflags: a message RETR sent is renamed to cur/...:2,S at UPDATE, best
    effort. A rename that fails leaves it unseen in new/; the deletions still count."""
    maildir = rig.maildir
    first = next((maildir / "new").glob("1700000001.*"))
    client = login(server)
    client.retr(1)
    client.dele(2)
    rig.fs.fail("rename", f"{MAILDIR}/new/*")
    assert client.quit() == b"+OK Logging out, 1 message deleted"
    assert rig.fs.hits() == [1]
    assert first.exists()  # not renamed, not lost
    assert [path.name[:10] for path in rig.lab.messages("bob")] == ["1700000001", "1700000003"]
    rig.fs.clear()
    fresh = login(server)
    fresh.retr(1)
    assert fresh.quit().startswith(b"+OK")
    assert not first.exists()  # now it is seen
    assert list((maildir / "cur").glob("1700000001.*:2,S"))
