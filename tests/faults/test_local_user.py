"""A local user who can write into their own Maildir (``maildir_path: /home/%u/Maildir``,
Maildirs owned by their users) against a server that can read more than they can (pop3d
does not drop privileges yet). SECURITY.md, "Malicious local user".

The hole these found: the Maildir code worked on path names and followed symbolic links,
so a planted link made the server list, serve and, at UPDATE, unlink files outside the
Maildir with its own rights. It now works on directory file descriptors opened with
O_NOFOLLOW and names relative to them (storage/maildir.py), so no check-then-use race is
left either."""

from __future__ import annotations

import poplib
from pathlib import Path

import pytest

from pop3d.storage.base import StorageError
from pop3d.storage.maildir import MaildirStore
from tests.support.lab import Lab, Server


def maildir_with_outside(tmp_path: Path) -> tuple[MaildirStore, Path, Path]:
    spool = tmp_path / "home"
    maildir = spool / "eve" / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    outside = tmp_path / "not-eves"  # another user's mail, or /etc
    outside.mkdir()
    (outside / "1700000000.M1P1.secret").write_bytes(b"not for eve\n")
    return MaildirStore(str(spool / "%u" / "Maildir")), maildir, outside


def test_a_symlinked_message_is_not_served(tmp_path: Path) -> None:
    store, maildir, outside = maildir_with_outside(tmp_path)
    (maildir / "new" / "1700000001.M2P1.link").symlink_to(outside / "1700000000.M1P1.secret")
    drop = store.open("eve")
    try:
        assert drop.uids == ()
    finally:
        drop.close()


def test_a_symlinked_folder_is_neither_listed_nor_emptied(tmp_path: Path) -> None:
    store, maildir, outside = maildir_with_outside(tmp_path)
    (maildir / "cur").rmdir()
    (maildir / "cur").symlink_to(outside)
    with pytest.raises(StorageError):  # refused as a whole: [SYS/TEMP] and a log line
        store.open("eve")
    assert (outside / "1700000000.M1P1.secret").exists()


def test_a_symlinked_maildir_is_refused(tmp_path: Path) -> None:
    store, maildir, outside = maildir_with_outside(tmp_path)
    for sub in ("tmp", "new", "cur"):
        (outside / sub).mkdir()
    maildir.rename(maildir.with_name("old"))
    maildir.symlink_to(outside)
    with pytest.raises(StorageError):
        store.open("eve")


def test_a_link_swapped_in_after_the_listing_is_not_followed(tmp_path: Path) -> None:
    store, maildir, outside = maildir_with_outside(tmp_path)
    message = maildir / "new" / "1700000001.M2P1.lab"
    message.write_bytes(b"eve's own\n")
    drop = store.open("eve")
    try:
        assert len(drop.uids) == 1
        message.unlink()
        message.symlink_to(outside / "1700000000.M1P1.secret")
        with pytest.raises(StorageError):
            drop.open_message(0)
        drop.commit((0,), None)  # the link itself may go; never its target
    finally:
        drop.close()
    assert (outside / "1700000000.M1P1.secret").read_bytes() == b"not for eve\n"


def test_a_fifo_is_not_a_message(tmp_path: Path) -> None:
    import os

    store, maildir, _outside = maildir_with_outside(tmp_path)
    os.mkfifo(maildir / "new" / "1700000001.M2P1.fifo")
    drop = store.open("eve")
    try:
        assert drop.uids == ()
    finally:
        drop.close()


def test_delivery_into_a_symlinked_new_folder_is_refused(tmp_path: Path) -> None:
    import io

    store, maildir, outside = maildir_with_outside(tmp_path)
    (maildir / "new").rmdir()
    (maildir / "new").symlink_to(outside)
    with pytest.raises(StorageError, match="cannot open .*eve/Maildir: Not a directory"):
        store.deliver("eve", io.BytesIO(b"Subject: x\n\nhi\n"))
    assert sorted(p.name for p in outside.iterdir()) == ["1700000000.M1P1.secret"]


def test_a_message_file_name_writes_no_log_line_of_its_own(server: Server, lab: Lab) -> None:
    """A Maildir's file names are the user's to choose: one with a line end and a terminal
    escape in it, listed and then swapped for a folder before RETR, is named in the error
    line escaped, not as a second line the user wrote (which fail2ban would take for the
    server's)."""
    forged = "2026-12-04 07:43:17,766 pop3d[1]: ERROR FORGED \x1b[31mred"
    message = lab.maildir("bob") / "new" / f"1800000001.M1P1Q1.lab\n{forged}"
    message.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    box = poplib.POP3("127.0.0.1", server.port, timeout=20)
    try:
        box.user("bob")
        box.pass_("builder")
        count = len(box.list()[1])
        message.unlink()
        message.mkdir()
        with pytest.raises(poplib.error_proto, match="SYS/TEMP"):
            box.retr(count)
        box.quit()
    finally:
        box.close()
    log = server.log_text()
    assert "\\x0a2026-12-04 07:43:17,766 pop3d[1]: ERROR FORGED \\x1b[31mred" in log
    assert not any(entry.startswith("2026-12-04 07:43:17,766") for entry in log.splitlines())
    assert "\x1b" not in log
