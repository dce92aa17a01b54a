"""popuseimapflags (issue 14): Maildir flags obeyed and set. T (trashed) hides a message;
a message RETR sent whole is marked seen at QUIT (new/ -> cur/ with :2,S), its UIDL kept."""

from __future__ import annotations

import os
import poplib

import pytest

from pop3d.storage.base import MessageGone
from pop3d.storage.maildir import MaildirStore, flags_of, seen_name
from tests.support.lab import Lab, start_server


def test_flag_names() -> None:
    assert flags_of("1.M1.h,S=1,W=2:2,ST") == "ST"
    assert flags_of("1.M1.h") == "" and flags_of("1.M1.h:1,xyz") == ""
    assert seen_name("1.M1.h,W=2") == "1.M1.h,W=2:2,S"
    assert seen_name("1.M1.h:2,FR") == "1.M1.h:2,FRS"
    assert seen_name("1.M1.h:2,S") is None
    assert seen_name("1.M1.h:1,x") is None


def _trash_second(lab: Lab, user: str) -> None:
    maildir = lab.maildir(user)
    second = sorted(os.listdir(maildir / "new"))[1]
    os.rename(maildir / "new" / second, maildir / "cur" / f"{second}:2,ST")


def test_store_hides_trashed_and_marks_seen(lab: Lab) -> None:
    _trash_second(lab, "bob")
    plain = MaildirStore("%p/%u/Maildir", str(lab.root / "spool"))
    drop = plain.open("bob")
    assert len(drop.uids) == 3  # without the option, T is not looked at
    drop.close()
    store = MaildirStore("%p/%u/Maildir", str(lab.root / "spool"), use_flags=True)
    drop = store.open("bob")
    uids = drop.uids
    assert uids == ("1700000001.M1P1.lab", "1700000003.M3P1.lab")
    assert drop.commit((), None, seen=(0, 1)) == (0, 0)
    drop.close()
    assert sorted(os.listdir(lab.maildir("bob") / "cur")) == [
        "1700000001.M1P1.lab,S=979,W=1000:2,S",
        "1700000002.M2P1.lab:2,ST",
        "1700000003.M3P1.lab,S=2946,W=3000:2,S",
    ]
    assert os.listdir(lab.maildir("bob") / "new") == []
    drop = store.open("bob")
    assert drop.uids == uids
    assert drop.commit((), None, seen=(0,)) == (0, 0)  # already seen: no rename
    drop.close()


def test_without_the_option_nothing_is_renamed(lab: Lab) -> None:
    store = MaildirStore("%p/%u/Maildir", str(lab.root / "spool"))
    drop = store.open("bob")
    assert drop.commit((), None, seen=(0, 1, 2)) == (0, 0)
    drop.close()
    assert len(os.listdir(lab.maildir("bob") / "new")) == 3


def test_a_real_session(lab: Lab) -> None:
    lab.config.write_text(lab.config.read_text() + "popuseimapflags: yes\n")
    _trash_second(lab, "alice")
    server = start_server(lab)
    try:
        client = poplib.POP3("127.0.0.1", server.port, timeout=30)
        client.user("alice")
        client.pass_("wonderland")
        assert client.stat()[0] == 6  # 7 messages, one trashed
        uidls = client.uidl()[1]
        assert b"1700000002.M2P1.lab" not in b" ".join(uidls)
        client.retr(1)
        client.top(2, 0)  # TOP does not mark seen
        client.retr(3)
        client.dele(3)  # deleted: removed, not renamed
        client.quit()
        cur = sorted(os.listdir(lab.maildir("alice") / "cur"))
        assert cur == ["1700000001.M1P1.lab,S=1000,W=1000:2,S", "1700000002.M2P1.lab:2,ST"]
        assert len(os.listdir(lab.maildir("alice") / "new")) == 4
        client = poplib.POP3("127.0.0.1", server.port, timeout=30)
        client.user("alice")
        client.pass_("wonderland")
        kept = [line.split()[1] for line in uidls if not line.startswith(b"3 ")]
        assert [line.split()[1] for line in client.uidl()[1]] == kept  # UIDLs unchanged
        client.quit()
    finally:
        server.stop()


def test_rset_forgets_what_was_retrieved(lab: Lab) -> None:
    """RSET clears the seen marks as well as the deleted ones, as Cyrus's does
    (pop3d.c:966-969): RETR, RSET, QUIT leaves the message unseen in new/; a RETR after
    the RSET marks it again."""
    lab.config.write_text(lab.config.read_text() + "popuseimapflags: yes\n")
    server = start_server(lab)
    try:
        client = poplib.POP3("127.0.0.1", server.port, timeout=30)
        client.user("alice")
        client.pass_("wonderland")
        client.retr(1)
        client.retr(2)
        client.dele(2)
        client.rset()
        client.retr(3)
        client.quit()
        cur = sorted(os.listdir(lab.maildir("alice") / "cur"))
        assert len(cur) == 1
        assert cur[0].startswith("1700000003.M3P1.lab,") and cur[0].endswith(":2,S")
        assert len(os.listdir(lab.maildir("alice") / "new")) == 6
    finally:
        server.stop()


def test_a_trashed_twin_is_not_served_or_deleted_for_a_vanished_message(lab: Lab) -> None:
    """A trashed file (hidden) claiming the unique part of a listed message is another
    message: with the listed file removed by another agent, RETR served the trashed one
    and DELE unlinked it (found probing). Now the message is gone, as any vanished one."""
    maildir = lab.maildir("alice")
    listed = maildir / "new" / "1700000009.M9P1.lab"
    listed.write_bytes(b"Subject: listed\n\nlisted\n")
    trashed = maildir / "cur" / "1700000009.M9P1.lab:2,T"
    trashed.write_bytes(b"Subject: trashed\n\nanother message\n")
    store = MaildirStore("%p/%u/Maildir", str(lab.root / "spool"), use_flags=True)
    drop = store.open("alice")
    index = drop.uids.index("1700000009.M9P1.lab")
    with drop.open_message(index) as handle:
        assert b"listed" in handle.read()
    listed.unlink()
    with pytest.raises(MessageGone):
        drop.open_message(index)
    assert drop.commit((index,), None) == (1, 0)  # gone already: as the client wished
    drop.close()
    assert trashed.read_bytes() == b"Subject: trashed\n\nanother message\n"
    # renamed by another agent (flags), the listed file is still found
    listed.write_bytes(b"Subject: listed\n\nlisted\n")
    drop = store.open("alice")
    index = drop.uids.index("1700000009.M9P1.lab")
    listed.rename(maildir / "cur" / "1700000009.M9P1.lab:2,S")
    with drop.open_message(index) as handle:
        assert b"listed" in handle.read()
    drop.close()
