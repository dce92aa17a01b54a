"""Storage faults on real files: a full filesystem (a 256 KiB tmpfs in a private mount
namespace) under delivery, and permissions taken away while the server lists, reads and
commits. The server runs without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (``setpriv``),
so file modes bind it although the tests run as root.

Real EIO from the kernel, under delivery, listing, RETR and the UPDATE commit, is in
tests/faults/test_eio.py (a FUSE filesystem that fails on demand). A full disk under the
server itself matters only for the LOGIN-DELAY record, which is best effort by design
(commit removes, it does not write)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.client import WITHOUT_DAC_OVERRIDE, LogWatch, Pop, files
from tests.support.lab import ROOT, Lab, Server, start_server

# --- a full disk while delivering --------------------------------------------------------


def test_delivery_to_a_full_filesystem_is_tempfail_and_leaves_nothing(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to mount a private tmpfs")
    lab = Lab(tmp_path / "lab").create()
    spool = lab.maildir("bob").parent
    done = subprocess.run(
        [unshare, "--mount", "--propagation", "private", sys.executable, "-m"]
        + ["tests.faults.full_disk", str(lab.config), str(spool), "Maildir"],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    if report["mount"] != "ok":
        pytest.skip(f"cannot mount a tmpfs: {report['mount']}")
    empty: dict[str, list[str]] = {"tmp": [], "new": [], "cur": []}
    for case in ("too_big", "full"):
        assert report[case]["code"] == 75, report[case]  # EX_TEMPFAIL: the MTA retries
        assert "message not stored" in report[case]["stderr"]
        assert "No space left on device" in report[case]["stderr"]
    assert report["after_too_big"] == empty  # no partial file in tmp/ or new/
    assert report["small"]["code"] == 0, report["small"]
    assert len(report["after_small"]["new"]) == 1 and report["after_small"]["tmp"] == []
    assert report["after_full"] == report["after_small"]  # nothing added, nothing lost
    # Outside the namespace the spool is untouched.
    assert len(lab.messages("bob")) == 3


def test_an_import_onto_a_full_filesystem_leaves_no_torn_uidl_line(tmp_path: Path) -> None:
    """Found probing: the kept-UIDL line was one os.write whose count was not looked at; a
    full disk cut it short, the next run's line was glued to it, and that message was
    served under a UIDL no client had."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to mount a private tmpfs")
    lab = Lab(tmp_path / "lab").create()
    source = tmp_path / "dovecot"
    for sub in ("new", "cur", "tmp"):
        (source / sub).mkdir(parents=True)
    uidlist = ["3 V1700000000 N3 G0"]
    for uid in (1, 2):
        (source / "new" / f"1699990000.M{uid}P1.old").write_bytes(b"Subject: %d\n\nx\n" % uid)
        uidlist.append(f"{uid} :1699990000.M{uid}P1.old")
    (source / "dovecot-uidlist").write_text("\n".join(uidlist) + "\n")
    done = subprocess.run(
        [unshare, "--mount", "--propagation", "private", sys.executable, "-m"]
        + ["tests.faults.full_import", str(lab.config), str(lab.maildir("bob").parent)]
        + [str(source)],
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    if report["mount"] != "ok":
        pytest.skip(f"cannot mount a tmpfs: {report['mount']}")
    assert report["full"]["code"] == 75, report["full"]
    assert "No space left on device" in report["full"]["stderr"]
    assert report["after_full"] == report["before"]  # cut back: no torn line
    assert report["again"]["code"] == 0, report["again"]
    assert report["uidls"] == ["000000016553f100", "000000026553f100"]


# --- permissions under a running server ---------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run the server without DAC override")
    lab = Lab(tmp_path_factory.mktemp("storage") / "lab").create()
    running = start_server(lab, wrapper=WITHOUT_DAC_OVERRIDE)
    yield running
    running.stop()


@pytest.fixture
def maildir(server: Server) -> Iterator[Path]:
    lab = server.lab
    lab.reset_maildrop("bob")
    path = lab.maildir("bob")
    yield path
    for folder in (path, path / "new", path / "cur"):
        folder.chmod(0o700)


def logged_in(server: Server) -> Pop:
    client = Pop(server.port)
    reply = client.login()
    assert reply.startswith(b"+OK Mailbox locked"), reply
    return client


@pytest.mark.parametrize("folder", ["Maildir", "new", "cur"])
def test_an_unreadable_maildrop_is_sys_temp_and_the_session_goes_on(
    server: Server, maildir: Path, folder: str
) -> None:
    target = maildir if folder == "Maildir" else maildir / folder
    before = files(maildir)
    watch = LogWatch(server)
    target.chmod(0)
    client = Pop(server.port)
    assert client.login() == b"-ERR [SYS/TEMP] Unable to open maildrop"
    # Still in AUTHORIZATION: the client may try again, and QUIT cleanly.
    target.chmod(0o700)
    assert client.login().startswith(b"+OK Mailbox locked")  # no stale lock, no [IN-USE]
    assert client.stat()[0] == 3
    assert client.ask(b"QUIT").startswith(b"+OK")
    client.close()
    assert files(maildir) == before
    watch.wait_for(r"ERROR .*cannot open maildrop of bob: .*Permission denied")


def test_a_message_unreadable_when_it_is_measured(server: Server, maildir: Path) -> None:
    """bob's second message has no ,W= size: LIST measures it, and cannot. It costs only
    itself (STAT and LIST failed for the whole session): listed as 0 octets, a size that
    stands for the session, and measured again by the next."""
    second = next((maildir / "new").glob("1700000002.*"))
    client = logged_in(server)
    watch = LogWatch(server)
    second.chmod(0)
    assert client.ask(b"LIST") == b"+OK 3 messages (4000 octets)"
    assert client.multiline() == [b"1 1000", b"2 0", b"3 3000"]
    assert client.ask(b"STAT") == b"+OK 3 4000"
    assert client.ask(b"RETR 2") == b"-ERR [SYS/TEMP] Unable to read message 2"
    assert client.ask(b"RETR 1") == b"+OK Message follows"  # the others are still served
    assert len(b"\r\n".join(client.multiline())) + 2 == 1000
    second.chmod(0o600)
    assert client.ask(b"LIST 2") == b"+OK 2 0"
    assert client.ask(b"QUIT").startswith(b"+OK")
    client.close()
    watch.wait_for(r"ERROR session \S+: message 1700000002\.\S+ cannot be measured; listed as 0")
    client = logged_in(server)
    assert client.ask(b"LIST 2") == b"+OK 2 2000"
    assert client.ask(b"QUIT").startswith(b"+OK")
    client.close()


@pytest.mark.parametrize("how", ["mode 000", "replaced by a directory"])
def test_a_message_that_cannot_be_read_at_retr(server: Server, maildir: Path, how: str) -> None:
    first = next((maildir / "new").glob("1700000001.*"))
    content = first.read_bytes()
    client = logged_in(server)
    watch = LogWatch(server)
    if how == "mode 000":
        first.chmod(0)
    else:
        first.unlink()
        first.mkdir()
    assert client.ask(b"RETR 1") == b"-ERR [SYS/TEMP] Unable to read message 1"
    assert client.ask(b"TOP 1 0") == b"-ERR [SYS/TEMP] Unable to read message 1"
    assert client.ask(b"RETR 3") == b"+OK Message follows"  # the session goes on
    assert len(b"\r\n".join(client.multiline())) + 2 == 3000
    assert client.ask(b"QUIT").startswith(b"+OK")
    client.close()
    watch.wait_for(r"ERROR session \S+: cannot open message: ")
    if how == "mode 000":
        first.chmod(0o600)
        assert first.read_bytes() == content


def test_permissions_taken_away_mid_retr_change_nothing(server: Server, maildir: Path) -> None:
    """An open file stays readable: the message goes out whole, with its dot."""
    big = maildir / "new" / "1800000000.M1P1.big"
    big.write_bytes((b"z" * 98 + b"\n") * 40_000)  # 4 MB
    client = logged_in(server)
    client.send(b"RETR 4\r\n")
    assert client.line() == b"+OK Message follows"
    big.chmod(0)
    (maildir / "new").chmod(0)
    received = client.multiline()
    assert len(received) == 40_000 and all(line == b"z" * 98 for line in received)
    (maildir / "new").chmod(0o700)
    assert client.ask(b"QUIT").startswith(b"+OK")
    client.close()


def test_read_only_folders_at_update(server: Server, maildir: Path) -> None:
    """new/ read-only (its messages cannot be unlinked), cur/ writable: the deletions that
    can be done are, the others are reported, nothing else is touched, and the lock is
    released for the next session."""
    in_cur = maildir / "cur" / "1700000004.M4P1.lab,S=5,W=6:2,S"
    in_cur.write_bytes(b"body\n")
    before = files(maildir)
    watch = LogWatch(server)
    client = logged_in(server)
    for number in (1, 2, 4):  # 1 and 2 are in new/, 4 in cur/
        assert client.ask(b"DELE %d" % number).startswith(b"+OK")
    (maildir / "new").chmod(0o500)
    assert client.ask(b"QUIT") == b"-ERR [SYS/TEMP] 2 of 3 deleted messages could not be removed"
    assert client.sock.recv(1) == b""  # the session ends
    (maildir / "new").chmod(0o700)
    after = files(maildir)
    assert after == {name: data for name, data in before.items() if name != "1700000004.M4P1.lab"}
    assert watch.ended(client) == "QUIT (update failed)"
    watch.wait_for(r"ERROR session \S+: 2 deletions failed")
    fresh = logged_in(server)
    assert fresh.stat()[0] == 3
    assert fresh.ask(b"QUIT").startswith(b"+OK")
    fresh.close()
