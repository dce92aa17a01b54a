"""Two files claiming one unique part (another delivery agent's mistake, a restore, a copy):
``new/1500000000.X.host`` (A) and ``cur/1500000000.X.host:2,S`` (B) are two messages.

Found probing: with A removed by another agent, RETR 1 served B as message 1 and DELE 1
unlinked B (the search for a renamed file took the first file of the unique part, even one
another listed message names); once A was deleted, B took A's UIDL in the next session (a
client that leaves mail on the server never fetched it), and B's own UIDL held its flags."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pop3d.storage import maildir as maildir_module
from pop3d.storage.base import MessageGone
from pop3d.storage.maildir import MaildirMaildrop, MaildirStore

UNIQUE = "1500000000.X.host"


def twins(tmp_path: Path) -> tuple[MaildirStore, Path, Path, Path]:
    """A Maildir with A in new/, B in cur/ (one unique part) and a message after them."""
    maildir = tmp_path / "spool" / "eve" / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    a = maildir / "new" / UNIQUE
    a.write_bytes(b"Subject: A\n\nmessage A\n")
    b = maildir / "cur" / f"{UNIQUE}:2,S"
    b.write_bytes(b"Subject: B\n\nmessage B\n")
    (maildir / "new" / "1600000000.Y.host").write_bytes(b"Subject: C\n\nmessage C\n")
    return MaildirStore(str(tmp_path / "spool" / "%u" / "Maildir")), maildir, a, b


def content(drop: MaildirMaildrop, index: int) -> bytes:
    with drop.open_message(index) as handle:
        return handle.read()


def test_twins_are_two_messages_with_two_uidls(tmp_path: Path) -> None:
    store, _maildir, _a, _b = twins(tmp_path)
    drop = store.open("eve")
    try:
        assert drop.uids[0] == UNIQUE  # the first listed has the unique part's own
        assert drop.uids[2] == "1600000000.Y.host"
        assert len(set(drop.uids)) == 3
        assert content(drop, 0).endswith(b"message A\n")
        assert content(drop, 1).endswith(b"message B\n")
    finally:
        drop.close()


def test_a_vanished_message_is_not_served_as_its_twin(tmp_path: Path) -> None:
    store, _maildir, a, b = twins(tmp_path)
    drop = store.open("eve")
    try:
        a.unlink()  # another agent removes A
        with pytest.raises(MessageGone):
            drop.open_message(0)
        assert content(drop, 1).endswith(b"message B\n")
        assert drop.commit((0,), None) == (1, 0)  # A is gone: the wish is fulfilled
    finally:
        drop.close()
    assert b.read_bytes().endswith(b"message B\n")  # B, which was not deleted, stays


def test_a_vanished_message_is_not_its_renamed_twin(tmp_path: Path) -> None:
    store, maildir, a, b = twins(tmp_path)
    drop = store.open("eve")
    try:
        a.unlink()
        b.rename(maildir / "cur" / f"{UNIQUE}:2,RS")  # and B's flags change
        with pytest.raises(MessageGone):
            drop.open_message(0)
        assert drop.commit((0,), None) == (1, 0)
    finally:
        drop.close()
    assert (maildir / "cur" / f"{UNIQUE}:2,RS").exists()


def test_twins_both_renamed_are_each_found(tmp_path: Path) -> None:
    store, maildir, a, b = twins(tmp_path)
    drop = store.open("eve")
    try:
        a.rename(maildir / "cur" / f"{UNIQUE}:2,F")
        b.rename(maildir / "cur" / f"{UNIQUE}:2,RS")
        assert content(drop, 1).endswith(b"message B\n")
        assert content(drop, 0).endswith(b"message A\n")
        assert drop.commit((1,), None) == (1, 0)
    finally:
        drop.close()
    assert sorted(p.name for p in (maildir / "cur").iterdir()) == [f"{UNIQUE}:2,F"]


def test_a_file_renamed_over_its_twin_is_neither(tmp_path: Path) -> None:
    """An agent that renames A onto B's name (flags) replaced B: message 2 is gone, and
    message 1, now under the name message 2 had, is not taken from it either (when in
    doubt, refuse): neither is served nor unlinked."""
    store, _maildir, a, b = twins(tmp_path)
    drop = store.open("eve")
    try:
        a.rename(b)
        for index in (0, 1):
            with pytest.raises(MessageGone):
                drop.open_message(index)
        assert drop.commit((0, 1), None) == (2, 0)
    finally:
        drop.close()
    assert b.read_bytes().endswith(b"message A\n")


def test_a_renamed_message_with_a_twin_appeared_since_is_refused(tmp_path: Path) -> None:
    """A lone message renamed while another file of its unique part appeared: which is it?
    Neither is served nor unlinked."""
    store, maildir, a, b = twins(tmp_path)
    b.unlink()
    drop = store.open("eve")
    try:
        a.rename(maildir / "cur" / f"{UNIQUE}:2,S")
        (maildir / "new" / f"{UNIQUE},S=20").write_bytes(b"Subject: D\n\nanother\n")
        with pytest.raises(MessageGone):
            drop.open_message(0)
        assert drop.commit((0,), None) == (1, 0)
    finally:
        drop.close()
    assert len(list((maildir / "cur").iterdir())) == 1
    assert len(list((maildir / "new").iterdir())) == 2


def test_a_twins_uidl_stays_once_the_other_is_deleted(tmp_path: Path) -> None:
    store, maildir, _a, b = twins(tmp_path)
    drop = store.open("eve")
    first = drop.uids
    assert drop.commit((0,), None) == (1, 0)  # the client deletes A
    drop.close()
    assert b.exists()
    drop = store.open("eve")
    try:
        assert drop.uids == first[1:]  # B keeps its UIDL; A's is not given again
    finally:
        drop.close()
    b.rename(maildir / "cur" / f"{UNIQUE}:2,RS")  # flags changed by another agent
    (maildir / "new" / "1600000000.Y.host").rename(maildir / "cur" / "1600000000.Y.host:2,S")
    drop = store.open("eve")
    try:
        assert drop.uids == first[1:]
        assert drop.commit((0,), None) == (1, 0)
    finally:
        drop.close()
    # The last file of the unique part gone, its pins go with it.
    assert not (maildir / "pop3d-uidl").exists()


def test_a_twins_uidl_stays_when_another_agent_removes_the_other(tmp_path: Path) -> None:
    store, maildir, a, b = twins(tmp_path)
    drop = store.open("eve")
    first = drop.uids
    drop.close()
    a.unlink()
    b.rename(maildir / "cur" / f"{UNIQUE}:2,FS")
    drop = store.open("eve")
    try:
        assert drop.uids == first[1:]
    finally:
        drop.close()


def test_a_twins_uidl_stays_when_flags_change(tmp_path: Path) -> None:
    store, maildir, a, b = twins(tmp_path)
    drop = store.open("eve")
    first = drop.uids
    drop.close()
    a.rename(maildir / "cur" / f"{UNIQUE}:2,")
    b.rename(maildir / "cur" / f"{UNIQUE}:2,RS")
    drop = store.open("eve")
    try:
        assert drop.uids == first
        assert content(drop, 0).endswith(b"message A\n")
    finally:
        drop.close()


def test_the_twin_left_with_the_unique_parts_uidl_keeps_it(tmp_path: Path) -> None:
    """A keeps the unique part's own UIDL once B is deleted, and still when a copy of it
    is restored beside it later, even one listed before it."""
    store, maildir, a, b = twins(tmp_path)
    a.rename(maildir / "cur" / f"{UNIQUE}:2,F")  # new/ is listed first: A is in cur/ now
    drop = store.open("eve")
    assert drop.uids[0] == UNIQUE
    assert content(drop, 0).endswith(b"message A\n")
    assert drop.commit((1,), None) == (1, 0)  # the client deletes B
    drop.close()
    (maildir / "new" / UNIQUE).write_bytes(b"Subject: A\n\nmessage A\n")  # a restore
    drop = store.open("eve")
    try:
        assert content(drop, 0).endswith(b"message A\n")
        assert content(drop, 1).endswith(b"message A\n")
        uids = drop.uids
        assert uids[1] == UNIQUE  # A, in cur/, after the copy in new/
        assert uids[0] not in (UNIQUE, "1600000000.Y.host")
    finally:
        drop.close()
    assert not b.exists()


def test_pins_keep_imported_lines_and_ignore_what_does_not_parse(tmp_path: Path) -> None:
    _store, maildir, a, _b = twins(tmp_path)
    inode = a.stat().st_ino
    (maildir / "pop3d-uidl").write_text(
        f"1600000000.Y.host imported-uidl\n{maildir_module.pin_key(UNIQUE, inode)} pinned-uidl\n"
        f"{UNIQUE}/x not-a-pin\n/{inode} no-prefix\n"
    )
    root = os.open(maildir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        kept = maildir_module.read_uidl_map(root)
    finally:
        os.close(root)
    assert dict(kept) == {
        "1600000000.Y.host": "imported-uidl",
        f"{UNIQUE}/{inode}": "pinned-uidl",
    }
    assert kept.pinned == {UNIQUE}
