"""A local user who can write into their own Maildir (``maildir_path: /home/%u/Maildir``,
Maildirs owned by their users) against a server that can read more than they can (pop3d
does not drop privileges yet). SECURITY.md, "Malicious local user".

Known hole, kept as strict xfails until it is closed: the Maildir code works on path names
and follows symbolic links, so a planted link makes the server list, serve and, at UPDATE,
unlink files outside the Maildir with its own rights. Closing it needs directory file
descriptors (O_NOFOLLOW, ``dir_fd=`` for open, scandir and unlink) or a per-user
privilege drop; a check by path at open time would leave a swap race."""

from __future__ import annotations

from pathlib import Path

import pytest

from pop3d.storage.maildir import MaildirStore

HOLE = "Maildir follows symbolic links (SECURITY.md, malicious local user)"


def maildir_with_outside(tmp_path: Path) -> tuple[MaildirStore, Path, Path]:
    spool = tmp_path / "home"
    maildir = spool / "eve" / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    outside = tmp_path / "not-eves"  # another user's mail, or /etc
    outside.mkdir()
    (outside / "1700000000.M1P1.secret").write_bytes(b"not for eve\n")
    return MaildirStore(str(spool / "%u" / "Maildir")), maildir, outside


@pytest.mark.xfail(strict=True, reason=HOLE)
def test_a_symlinked_message_is_not_served(tmp_path: Path) -> None:
    store, maildir, outside = maildir_with_outside(tmp_path)
    (maildir / "new" / "1700000001.M2P1.link").symlink_to(outside / "1700000000.M1P1.secret")
    drop = store.open("eve")
    try:
        assert drop.uids == ()
    finally:
        drop.close()


@pytest.mark.xfail(strict=True, reason=HOLE)
def test_a_symlinked_folder_is_neither_listed_nor_emptied(tmp_path: Path) -> None:
    store, maildir, outside = maildir_with_outside(tmp_path)
    (maildir / "cur").rmdir()
    (maildir / "cur").symlink_to(outside)
    drop = store.open("eve")
    try:
        if drop.uids:  # listed: then at least UPDATE must not reach outside the Maildir
            drop.commit(tuple(range(len(drop.uids))), None)
    finally:
        drop.close()
    assert (outside / "1700000000.M1P1.secret").exists()
    assert drop.uids == ()
