"""pop3d-sizes: sizes measured once (messages without ``,W=``) are kept for later sessions,
trusted only while the file is the one measured, and the file itself is never a way in."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pop3d.message import canonical_size
from pop3d.storage.base import MessageGone, StorageError
from pop3d.storage.maildir import SIZE_CACHE_NAME, MaildirStore, read_size_cache
from tests.support.lab import USERS, Lab

# alice's maildrop (vectors/maildrops/alice): messages 2, 4 and 6 have no ,W= in their names
UNSIZED = (1, 3, 5)


def store_for(lab: Lab) -> MaildirStore:
    return MaildirStore("%p/%u/Maildir", str(lab.root / "spool"))


def measure(lab: Lab, indexes: tuple[int, ...] = UNSIZED) -> list[int]:
    drop = store_for(lab).open("alice")
    try:
        assert all(drop.sizes[index] is None for index in indexes)
        return drop.measure(indexes)
    finally:
        drop.close()


def message(lab: Lab, index: int) -> Path:
    return lab.messages("alice")[index]


def kept_in(lab: Lab) -> dict[str, tuple[int, int, int, int]]:
    root = os.open(lab.maildir("alice"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        return read_size_cache(root, 1_000)
    finally:
        os.close(root)


def flattened(data: bytes) -> bytes:
    """``data`` as one line of the same length: every line end but the last made spaces."""
    return data[:-1].replace(b"\r", b" ").replace(b"\n", b" ") + data[-1:]


def rewrite_keeping_inode_size_and_mtime(path: Path) -> None:
    """An in-place edit that only the content shows: the canonical (CRLF) size shrinks
    while the octets on disk stay the same."""
    before = path.stat()
    data = path.read_bytes()
    changed = flattened(data)
    assert len(changed) == len(data) and data.count(b"\n") > 1
    with path.open("r+b") as handle:
        handle.write(changed)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert canonical_size([changed]) != canonical_size([data])


def test_measured_sizes_are_kept_for_the_next_session(lab: Lab) -> None:
    first = measure(lab)
    assert first == [canonical_size([message(lab, i).read_bytes()]) for i in UNSIZED]
    kept = kept_in(lab)
    assert sorted(kept) == sorted(message(lab, i).name for i in UNSIZED)
    # Content changed behind unchanged inode, size and mtime: only a read would see it.
    # The second session answers from pop3d-sizes, so it answers what the first measured.
    rewrite_keeping_inode_size_and_mtime(message(lab, 3))
    assert measure(lab) == first


def test_a_kept_size_counts_only_for_the_file_it_was_measured_on(lab: Lab) -> None:
    first = measure(lab)
    # index 1: replaced by another file (new inode) of the same size and mtime
    path = message(lab, 1)
    info = path.stat()
    data = flattened(path.read_bytes())
    spare = path.with_name("replacement")
    spare.write_bytes(data)
    os.utime(spare, ns=(info.st_atime_ns, info.st_mtime_ns))
    spare.rename(path)
    # index 3: grown in place; index 5: same content, touched (a new mtime)
    with message(lab, 3).open("ab") as handle:
        handle.write(b"one more line\n")
    os.utime(message(lab, 5), ns=(0, message(lab, 5).stat().st_mtime_ns + 10**9))
    again = measure(lab)
    assert again == [canonical_size([message(lab, i).read_bytes()]) for i in UNSIZED]
    assert again[0] != first[0] and again[1] == first[1] + len(b"one more line\r\n")
    assert again[2] == first[2]


def test_flag_changes_and_the_move_to_cur_keep_the_sizes(lab: Lab) -> None:
    first = measure(lab)
    cur = lab.maildir("alice") / "cur"
    unsized = [message(lab, index) for index in UNSIZED]
    moved = [path.rename(cur / f"{path.name}:2,S") for path in unsized]
    rewrite_keeping_inode_size_and_mtime(moved[2])  # read again, it would show
    assert measure(lab) == first


def test_sizes_of_messages_gone_leave_the_file_at_its_next_write(lab: Lab) -> None:
    measure(lab)
    gone = message(lab, 1).name
    message(lab, 1).unlink()
    (lab.maildir("alice") / "new" / "1700000009.M9P1.lab").write_bytes(b"Subject: new\n\nhi\n")
    drop = store_for(lab).open("alice")
    try:
        unsized = tuple(i for i, size in enumerate(drop.sizes) if size is None)
        assert len(unsized) == 3  # two kept, one new
        drop.measure(unsized)
    finally:
        drop.close()
    kept = kept_in(lab)
    assert gone not in kept and "1700000009.M9P1.lab" in kept and len(kept) == 3


def test_a_mangled_size_file_costs_only_a_measurement(lab: Lab) -> None:
    truth = [canonical_size([message(lab, i).read_bytes()]) for i in UNSIZED]
    cache = lab.maildir("alice") / SIZE_CACHE_NAME
    name = message(lab, 1).name
    inode, octets = message(lab, 1).stat().st_ino, message(lab, 1).stat().st_size
    for junk in (
        b"",
        b"\xff\xfe garbage\n",
        f"pop3d-sizes 1\n{name} {inode} {octets} x 7\n{name} 1 2\n".encode(),
        f"pop3d-sizes 2\n{name} {inode} {octets} 0 7\n".encode(),  # another format
    ):
        cache.write_bytes(junk)
        assert measure(lab) == truth
        assert cache.read_bytes().startswith(b"pop3d-sizes 1\n")  # written anew


def test_the_size_file_is_never_followed_or_written_through(lab: Lab) -> None:
    maildir = lab.maildir("alice")
    victim = lab.root / "victim"
    name = message(lab, 1).name
    info = message(lab, 1).stat()
    lie = f"pop3d-sizes 1\n{name} {info.st_ino} {info.st_size} {info.st_mtime_ns} 7\n"
    victim.write_text(lie)
    (maildir / SIZE_CACHE_NAME).symlink_to(victim)  # read through it, it would say 7
    (maildir / "pop3d-sizes.new").symlink_to(victim)
    truth = [canonical_size([message(lab, i).read_bytes()]) for i in UNSIZED]
    assert measure(lab) == truth
    assert victim.read_text() == lie
    assert not (maildir / SIZE_CACHE_NAME).is_symlink()
    # a hard link planted where the new file is written: unlinked, not truncated
    os.link(victim, maildir / "pop3d-sizes.new")
    (maildir / SIZE_CACHE_NAME).unlink()
    assert measure(lab) == truth
    assert victim.read_text() == lie


def test_a_size_file_that_cannot_be_written_fails_nothing(lab: Lab) -> None:
    (lab.maildir("alice") / "pop3d-sizes.new").mkdir()  # unlink and create both fail
    truth = [canonical_size([message(lab, i).read_bytes()]) for i in UNSIZED]
    assert measure(lab) == truth
    assert measure(lab) == truth
    assert not (lab.maildir("alice") / SIZE_CACHE_NAME).exists()


def test_a_client_sees_the_kept_sizes_in_its_next_session(lab: Lab) -> None:
    """End to end (pop3d -X): the first session's STAT measures, the second's answers
    from pop3d-sizes (a change only a read would see is not seen)."""
    password = USERS["alice"]
    commands = f"USER alice\r\nPASS {password}\r\nSTAT\r\nQUIT\r\n".encode()

    def stat_line() -> bytes:
        done = subprocess.run(lab.pop3d_x(), input=commands, capture_output=True, timeout=60)
        lines = done.stdout.split(b"\r\n")
        assert done.returncode == 0, done.stderr
        return lines[3]

    total = sum(canonical_size([path.read_bytes()]) for path in lab.messages("alice"))
    first = stat_line()
    assert first == f"+OK 7 {total}".encode()
    assert (lab.maildir("alice") / SIZE_CACHE_NAME).is_file()
    rewrite_keeping_inode_size_and_mtime(message(lab, 3))
    assert stat_line() == first


def test_one_message_is_measured_without_the_size_file(lab: Lab) -> None:
    """LIST n: the message alone is read, pop3d-sizes neither read nor written (a client
    listing a big maildrop message by message would read the whole file each time)."""
    path = message(lab, 1)
    info = path.stat()
    cache = lab.maildir("alice") / SIZE_CACHE_NAME
    lie = f"pop3d-sizes 1\n{path.name} {info.st_ino} {info.st_size} {info.st_mtime_ns} 7\n"
    cache.write_text(lie)
    assert measure(lab, (1,)) == [canonical_size([path.read_bytes()])]
    assert cache.read_text() == lie
    assert measure(lab, (1, 3))[0] == 7  # two at once: the file is used (and trusted)


def test_a_size_file_too_big_for_the_maildrop_is_not_read(lab: Lab) -> None:
    """Whoever can write the Maildir could plant a file of millions of lines for a worker
    to parse at each STAT: a file bigger than twice the longest lines of the listing is
    ignored (and replaced), however valid its lines."""
    path = message(lab, 1)
    info = path.stat()
    lie = f"{path.name} {info.st_ino} {info.st_size} {info.st_mtime_ns} 7\n"
    cache = lab.maildir("alice") / SIZE_CACHE_NAME
    cache.write_text("pop3d-sizes 1\n" + lie * 20)  # within the bound: read, believed
    assert measure(lab, (1, 3))[0] == 7
    cache.write_text("pop3d-sizes 1\n" + lie * 200)  # seven messages: far beyond it
    truth = canonical_size([path.read_bytes()])
    assert measure(lab, (1, 3))[0] == truth
    assert cache.stat().st_size < 1_000  # written anew for what is listed


def test_a_name_that_cannot_be_kept_does_not_rewrite_the_file(lab: Lab) -> None:
    """A name with a space cannot be a line of pop3d-sizes: it is measured each session,
    and that alone does not rewrite the file (each rewrite is a new file, a new inode)."""
    odd = lab.maildir("alice") / "new" / "1700000008.M8P1.lab with space"
    odd.write_bytes(b"Subject: odd\n\nline\n")
    drop = store_for(lab).open("alice")
    unsized = tuple(i for i, size in enumerate(drop.sizes) if size is None)
    drop.close()
    assert len(unsized) == 4

    def stat_all() -> list[int]:
        drop = store_for(lab).open("alice")
        try:
            return drop.measure(unsized)
        finally:
            drop.close()

    first = stat_all()
    written = (lab.maildir("alice") / SIZE_CACHE_NAME).stat().st_ino
    assert stat_all() == first
    assert (lab.maildir("alice") / SIZE_CACHE_NAME).stat().st_ino == written
    assert len(kept_in(lab)) == 3


def test_a_message_that_cannot_be_measured_costs_only_itself(lab: Lab) -> None:
    """Gone since the listing, or no longer a regular file: its error in its place, the
    others measured (and kept); a folder replaced is still the maildrop's failure."""
    gone, readable, unreadable = (message(lab, index) for index in UNSIZED)
    drop = store_for(lab).open("alice")
    try:
        gone.unlink()
        unreadable.unlink()
        unreadable.mkdir()
        sizes = drop.measure(UNSIZED)
        assert isinstance(sizes[0], MessageGone)
        assert sizes[1] == canonical_size([readable.read_bytes()])
        assert isinstance(sizes[2], StorageError) and "no longer a regular file" in str(sizes[2])
        assert list(kept_in(lab)) == [readable.name]
        assert isinstance(drop.measure((1,))[0], MessageGone)  # LIST n's way too
        cur = lab.maildir("alice") / "cur"
        cur.rename(lab.maildir("alice") / "cur.old")
        cur.mkdir()
        with pytest.raises(StorageError, match="replaced"):
            drop.measure(UNSIZED)
        with pytest.raises(StorageError, match="replaced"):
            drop.measure((3,))
    finally:
        drop.close()
