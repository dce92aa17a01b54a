"""Maildir: listing without reading, stable UIDLs, the lock, durable commits, delivery."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pop3d.message import canonical_size
from pop3d.protocol.events import FailureKind, MaildropOpened, OpenMaildrop, StorageFailure
from pop3d.server.carry_out import TABLE, Work
from pop3d.storage.base import MaildropInUse, MessageGone, StorageError
from pop3d.storage.maildir import (
    LISTING_KEPT_FROM,
    WARM_SECONDS,
    MaildirStore,
    _Entry,
    _order_key,
    size_hint,
    uidl_for,
    unique_part,
    valid_uidl,
    with_size_hint,
)
from tests.support.lab import Lab


def store_for(lab: Lab) -> MaildirStore:
    return MaildirStore("%p/%u/Maildir", str(lab.root / "spool"))


def test_template_expansion() -> None:
    store = MaildirStore("/home/%n/Maildir-%d/%%", "/spool")
    assert store.path_for("alice@example.org") == Path("/home/alice/Maildir-example.org/%")
    assert MaildirStore("%p/%u", "/var/spool").path_for("bob") == Path("/var/spool/bob")


def test_unique_part_and_uidl() -> None:
    assert unique_part("1700000001.M1P1.host,S=10,W=12:2,S") == "1700000001.M1P1.host"
    assert unique_part("1700000001.M1P1.host:2,") == "1700000001.M1P1.host"
    assert size_hint("1.M1.h,S=10,W=12:2,S") == 12
    assert size_hint("1.M1.h,S=10:2,S") is None
    assert uidl_for("abc") == "abc"
    long_name = "x" * 71
    hashed = uidl_for(long_name)
    assert hashed == uidl_for(long_name) and 0 < len(hashed) <= 70
    assert all(0x21 <= ord(c) <= 0x7E for c in uidl_for("caf\u00e9 \u00fcml"))


@given(st.text(max_size=80) | st.text(alphabet=st.characters(max_codepoint=0x80), max_size=80))
def test_valid_uidl_is_rfc_1939s_definition(text: str) -> None:
    assert valid_uidl(text) == (0 < len(text) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in text))


_NAMES = st.text(alphabet="0123456789,:=.SWMPQ2\u00b2x", max_size=30) | st.text(max_size=30)


@given(_NAMES)
def test_name_fields_as_defined(name: str) -> None:
    """The listing's parsers of a Maildir file name against their plain definitions."""
    cut = min((i for i in (name.find(","), name.find(":")) if i >= 0), default=len(name))
    assert unique_part(name) == name[:cut]
    fields = name.split(":", 1)[0].split(",")[1:]
    hints = [
        int(f[2:])
        for f in fields
        if f.startswith("W=") and f[2:] and set(f[2:]) <= set("0123456789") and len(f) <= 17
    ]
    assert size_hint(name) == (hints[0] if hints else None)
    digits = ""
    for ch in unique_part(name):
        if ch not in "0123456789":
            break
        digits += ch
    entry = _Entry("cur", name, unique_part(name))
    assert _order_key(entry) == (int(digits or "0"), unique_part(name))


def test_a_size_hint_is_ascii_digits_of_a_sane_length() -> None:
    """str.isdigit() takes other scripts' digits, which int() reads (",W=\u0661\u0662" was
    12) or refuses (a superscript failed the whole listing); 32 nines were listed as is."""
    assert size_hint("1.a.h,W=\u0661\u0662") is None
    assert size_hint("1.a.h,W=²") is None
    assert size_hint("1.a.h,W=" + "9" * 32) is None
    assert size_hint("1.a.h,W=" + "9" * 15) == 10**15 - 1
    assert size_hint("1.a.h,W=\u0661,S=3,W=21:2,S") == 21
    corrected = with_size_hint("1.a.h,W=\u0661,S=3,W=25,W=9:2,FS", 21)
    assert corrected == "1.a.h,W=\u0661,S=3,W=21,W=9:2,FS"


def test_a_message_whose_size_hint_is_refused_is_measured(lab: Lab) -> None:
    data = b"Subject: b\n\nhello\n"
    for unique, hint in (("1000000002.b1.h", "\u0661\u0662"), ("1000000002.b2.h", "9" * 32)):
        (lab.maildir("bob") / "cur" / f"{unique},W={hint}").write_bytes(data)
    drop = store_for(lab).open("bob")
    try:
        refused = (drop.uids.index("1000000002.b1.h"), drop.uids.index("1000000002.b2.h"))
        assert [drop.sizes[index] for index in refused] == [None, None]
        assert drop.measure(refused) == [21, 21]
    finally:
        drop.close()


def test_a_wrong_size_hint_is_corrected_in_the_name_only(lab: Lab) -> None:
    """The rename keeps the folder, the unique part and the flags; it never replaces
    another file, nor renames a file other than the one measured."""
    cur = lab.maildir("bob") / "cur"
    wrong = cur / "1000000002.b.h,S=18,W=25:2,S"
    wrong.write_bytes(b"Subject: b\n\nhello\n")
    inode = wrong.stat().st_ino
    drop = store_for(lab).open("bob")
    try:
        index = drop.uids.index("1000000002.b.h")
        assert drop.sizes[index] == 25
        with pytest.raises(StorageError, match="no longer the file measured"):
            drop.correct_size_hint(index, inode + 1, 21)
        (cur / "1000000002.b.h,S=18,W=21:2,S").mkdir()
        with pytest.raises(StorageError, match="exists already"):
            drop.correct_size_hint(index, inode, 21)
        (cur / "1000000002.b.h,S=18,W=21:2,S").rmdir()
        assert wrong.exists()
        renamed = ("1000000002.b.h,S=18,W=25:2,S", "1000000002.b.h,S=18,W=21:2,S")
        assert drop.correct_size_hint(index, inode, 21) == renamed
        assert drop.correct_size_hint(index, inode, 21) == (renamed[1], renamed[1])  # already
        with drop.open_message(index) as handle:  # the session finds it at its new name
            assert handle.read() == b"Subject: b\n\nhello\n"
    finally:
        drop.close()
    assert not wrong.exists()
    assert (cur / renamed[1]).stat().st_ino == inode
    drop = store_for(lab).open("bob")
    try:
        assert drop.sizes[drop.uids.index("1000000002.b.h")] == 21
        unsized = next(p for p in lab.messages("bob") if p.name.startswith("1700000002."))
        assert "," not in unsized.name  # no size in its name: nothing to correct
        index = drop.uids.index(unsized.name)
        assert drop.correct_size_hint(index, unsized.stat().st_ino, 1) is None
    finally:
        drop.close()


def test_a_file_name_starting_with_a_superscript_digit_is_listed(lab: Lab) -> None:
    """str.isdigit() takes "\u00b2", int() does not: the listing orders by ASCII digits."""
    odd = lab.maildir("alice") / "cur" / "\u00b2.M1P1.host:2,S"
    odd.write_bytes(b"Subject: odd\r\n\r\nbody\r\n")
    drop = store_for(lab).open("alice")
    try:
        assert uidl_for("\u00b2.M1P1.host") in drop.uids
        assert len(drop.uids) == 8
    finally:
        drop.close()


def test_a_big_maildrop_unchanged_is_not_listed_again(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder of LISTING_KEPT_FROM messages or more is read again only when new/ or cur/
    changed: each delivery, flag change (a rename) and removal shows at the next open."""
    store = store_for(lab)
    cur = lab.maildir("bigbox") / "cur"
    cur.mkdir(parents=True)
    (cur.parent / "new").mkdir()
    for i in range(LISTING_KEPT_FROM):
        (cur / f"{1700000000 + i}.M{i}P1.lab,S=5:2,").write_bytes(b"hi\r\n")
    reads: list[Path] = []
    scan = MaildirStore._scan

    def counted(path: Path, folders: Any) -> Any:
        reads.append(path)
        return scan(path, folders)

    monkeypatch.setattr(MaildirStore, "_scan", staticmethod(counted))

    def listed() -> tuple[tuple[str, ...], tuple[int | None, ...]]:
        drop = store.open("bigbox")
        try:
            return drop.uids, drop.sizes
        finally:
            drop.close()

    def settle() -> None:  # a directory changed in the last 2 s is always read again
        time.sleep(2.2)

    settle()
    first = listed()
    assert listed() == first and listed() == first
    assert len(reads) == 2  # seen big, then listed with its stamp; the third kept
    assert len(first[0]) == LISTING_KEPT_FROM

    store.deliver("bigbox", io.BytesIO(b"Subject: new\r\n\r\nmail\r\n"))
    assert len(listed()[0]) == LISTING_KEPT_FROM + 1  # new/ changed: read again
    settle()
    listed()
    reads.clear()
    assert len(listed()[0]) == LISTING_KEPT_FROM + 1 and not reads

    # a rename (a flag change: same count) once the kept listing's stamp is settled
    old = next(cur.iterdir())
    renamed = cur / old.name.replace(",S=5:2,", ",S=5,W=77:2,S")
    old.rename(renamed)
    settle()
    assert 77 in listed()[1] and reads  # another stamp: read again
    renamed.unlink()
    after = listed()
    assert len(after[0]) == LISTING_KEPT_FROM and 77 not in after[1]


def test_listing_does_not_read_messages(lab: Lab) -> None:
    for message in lab.messages("alice"):
        message.chmod(0)  # unreadable: a listing that opened them would fail
    try:
        drop = store_for(lab).open("alice")
        assert len(drop.uids) == 7
        assert drop.sizes == (1000, None, 800, None, 5000, None, 300)
        drop.close()
    finally:
        for message in lab.messages("alice"):
            message.chmod(0o600)


def test_uidl_survives_flag_changes_and_new_to_cur(lab: Lab) -> None:
    store = store_for(lab)
    drop = store.open("alice")
    before = drop.uids
    drop.close()
    for message in lab.messages("alice")[:3]:
        message.rename(lab.maildir("alice") / "cur" / (message.name + ":2,RS"))
    drop = store.open("alice")
    assert drop.uids == before
    assert len(set(drop.uids)) == len(drop.uids)
    drop.close()


def test_measure_matches_canonical_size(lab: Lab) -> None:
    drop = store_for(lab).open("alice")
    sizes = drop.measure(tuple(range(7)))
    for index, message in enumerate(sorted(lab.messages("alice"))):
        assert sizes[index] == canonical_size([message.read_bytes()])
    assert sizes == [1000, 700, 800, 900, 5000, 20000, 300]
    drop.close()


def test_lock_is_exclusive_within_one_process(lab: Lab) -> None:
    store = store_for(lab)
    first = store.open("bob")
    with pytest.raises(MaildropInUse):
        store.open("bob")
    first.close()
    store.open("bob").close()


def test_lock_dies_with_the_process(lab: Lab) -> None:
    """A crashed session leaves no stale lock: the kernel drops flock with the process."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pop3d.storage.maildir import MaildirStore
        drop = MaildirStore("%p/%u/Maildir", {str(lab.root / "spool")!r}).open("bob")
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline() == b"locked\n"
    with pytest.raises(MaildropInUse):
        store_for(lab).open("bob")
    child.kill()
    child.wait(timeout=10)
    child.stdout.close()
    store_for(lab).open("bob").close()


def test_commit_removes_exactly_the_deleted(lab: Lab) -> None:
    drop = store_for(lab).open("bob")
    names = [p.name for p in lab.messages("bob")]
    assert drop.commit((0, 2), None) == (2, 0)
    drop.close()
    assert [p.name for p in lab.messages("bob")] == [names[1]]


def test_commit_reports_a_failed_unlink_and_keeps_the_rest(lab: Lab) -> None:
    if os.geteuid() == 0:
        # root ignores directory permissions; make the unlink fail another way
        drop = store_for(lab).open("bob")
        victim = lab.messages("bob")[0]
        victim.unlink()
        victim.mkdir()  # unlink() of a directory fails with EISDIR
        removed, failed = drop.commit((0, 1), None)
        drop.close()
        assert (removed, failed) == (1, 1)
        assert victim.is_dir()
    else:  # pragma: no cover - CI runs as root
        pytest.fail("run as root")


def test_last_login_bookkeeping(lab: Lab) -> None:
    drop = store_for(lab).open("bob")
    assert drop.last_login is None
    drop.commit((), 1234567890.0)
    drop.close()
    assert store_for(lab).open("bob").last_login == 1234567890.0


def test_open_message_gone(lab: Lab) -> None:
    drop = store_for(lab).open("bob")
    lab.messages("bob")[0].unlink()
    with pytest.raises(MessageGone):
        drop.open_message(0)
    drop.close()


def test_delivery_is_atomic_and_sized(lab: Lab) -> None:
    store = store_for(lab)
    data = b"Subject: x\n\n.body\nlast"
    path = store.deliver("carol", io.BytesIO(data))
    assert path.parent == lab.root / "spool" / "carol" / "Maildir" / "new"
    assert path.read_bytes() == data
    assert size_hint(path.name) == canonical_size([data])
    assert list((path.parent.parent / "tmp").iterdir()) == []
    assert path.stat().st_mode & 0o777 == 0o600


def test_failed_delivery_leaves_nothing(lab: Lab) -> None:
    class Broken(io.RawIOBase):
        def __init__(self) -> None:
            self.calls = 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 2:
                raise OSError(5, "Input/output error")
            return b"x" * 10

    store = store_for(lab)
    with pytest.raises(StorageError, match="cannot read the message: Input/output"):
        store.deliver("carol", Broken())  # type: ignore[arg-type]
    maildir = lab.root / "spool" / "carol" / "Maildir"
    assert list((maildir / "new").iterdir()) == []
    assert list((maildir / "tmp").iterdir()) == []


def test_a_maildrop_opened_a_moment_ago_is_opened_on_the_loop(lab: Lab) -> None:
    """carry_out's fast path for OpenMaildrop: only a Maildir this process opened in the
    last WARM_SECONDS is opened without a thread (a cold one may wait for a disk)."""
    store = store_for(lab)
    work = Work(authenticator=None, store=store)  # type: ignore[arg-type]
    fast = TABLE[OpenMaildrop].fast
    assert fast is not None
    assert not store.recently_opened("bob")
    assert fast(work, OpenMaildrop("bob")) is None  # never opened here: the thread
    assert isinstance(TABLE[OpenMaildrop].run(work, OpenMaildrop("bob")), MaildropOpened)
    work.release()
    assert store.recently_opened("bob") and not store.recently_opened("alice")
    assert not store.recently_opened("bob", "work")  # a popsubfolders folder is its own
    assert isinstance(fast(work, OpenMaildrop("bob")), MaildropOpened)  # on the loop
    # an open on the loop answers like one in a thread, [IN-USE] included
    other = Work(authenticator=None, store=store)  # type: ignore[arg-type]
    refused = fast(other, OpenMaildrop("bob"))
    assert isinstance(refused, StorageFailure) and refused.kind is FailureKind.IN_USE
    work.release()
    # a failed open does not make a Maildir warm
    (lab.root / "spool" / "carol").mkdir(parents=True, exist_ok=True)
    (lab.root / "spool" / "carol" / "Maildir").symlink_to(lab.root / "elsewhere")
    assert isinstance(TABLE[OpenMaildrop].run(work, OpenMaildrop("carol")), StorageFailure)
    assert not store.recently_opened("carol")
    # warm for WARM_SECONDS only
    store._opened[("bob", None)] = time.monotonic() - WARM_SECONDS - 1
    assert fast(work, OpenMaildrop("bob")) is None


def test_a_maildrop_that_was_costly_to_open_is_not_opened_on_the_loop(lab: Lab) -> None:
    """However recently opened, a maildrop whose open took more than WARM_OPEN_CPU of CPU
    (10,000 names here: tens of milliseconds on any machine) goes to a thread: on the loop
    every other session of the worker would wait for it. Deliveries shrinking it back make
    it warm again."""
    store = store_for(lab)
    cur = lab.maildir("bob") / "cur"
    for n in range(10_000):
        (cur / f"{1700000000 + n}.M{n}P1.lab:2,S").write_bytes(b"Subject: x\n\nx\n")
    store.open("bob").close()
    assert not store.recently_opened("bob")
    store.open("alice").close()
    assert store.recently_opened("alice")  # the small one beside it is warm
    for path in cur.iterdir():
        path.unlink()
    store.open("bob").close()
    assert store.recently_opened("bob")


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_an_idle_maildrop_holds_only_its_lock(lab: Lab) -> None:
    """Between commands a session keeps one descriptor (the lock), not the Maildir's three
    directories: what lets a worker hold ten thousand idle sessions (server/fdlimit.py)."""
    before = _open_descriptors()
    drop = store_for(lab).open("bob")
    assert _open_descriptors() == before + 1
    with drop.open_message(0) as handle:
        assert handle.read(1)
        assert _open_descriptors() == before + 2  # the message itself while it is read
    drop.measure((0, 1))
    drop.commit((), 1234567890.0)
    assert _open_descriptors() == before + 1
    drop.close()
    assert _open_descriptors() == before


def test_a_maildir_swapped_for_another_during_the_session_is_refused(lab: Lab) -> None:
    """The directories opened again for a command must be the ones the listing read: bob's
    folder replaced by a link to alice's (the Maildir's own name is no link, so O_NOFOLLOW
    alone would not see it) serves and deletes nothing of alice's."""
    drop = store_for(lab).open("bob")
    spool = lab.root / "spool"
    alice = sorted(p.name for p in lab.messages("alice"))
    (spool / "bob").rename(spool / "bob.away")
    (spool / "bob").symlink_to(spool / "alice")
    with pytest.raises(StorageError, match="was replaced during the session"):
        drop.open_message(0)
    assert drop.commit((0, 1), None) == (0, 2)
    drop.close()
    assert sorted(p.name for p in lab.messages("alice")) == alice


def test_a_folder_replaced_by_a_fresh_directory_is_refused(lab: Lab) -> None:
    drop = store_for(lab).open("bob")
    folder = sorted(lab.messages("bob"))[0].parent  # where message 1 is
    folder.rename(folder.with_name("old"))
    folder.mkdir()
    with pytest.raises(StorageError, match="was replaced during the session"):
        drop.measure((0,))
    drop.close()


def test_folders_made_at_the_first_login_are_the_user_s_alone(tmp_path: Path) -> None:
    """Every folder made for a first login is 0700, not only the Maildir itself: the user's
    folder above it was 0755 (Path.mkdir gives parents the umask's mode), so anyone on
    the host could list who has mail."""
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o755)
    store = MaildirStore(str(spool / "%u" / "deep" / "Maildir"))
    store.open("newcomer").close()
    for folder in ("newcomer", "newcomer/deep", "newcomer/deep/Maildir"):
        assert stat.S_IMODE((spool / folder).stat().st_mode) == 0o700, folder
    assert stat.S_IMODE(spool.stat().st_mode) == 0o755  # what was there is left alone
