"""The maildrop lock both ways (storage/locks.py): pop3d.lock in each Maildir, or one byte
per maildrop in a table the process keeps one descriptor to. Each excludes a second
session of the same process and of another process, leaves other maildrops alone, is
released on close and dies with its process; the table's byte names the directory itself,
whatever path reached it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pop3d.storage.base import MaildropInUse, StorageError
from pop3d.storage.importing import ImportFailed, locked_target
from pop3d.storage.locks import TABLE_NAME, check_table
from pop3d.storage.maildir import MaildirStore
from tests.support.lab import Lab

MODES = ("maildir", "table")


def _table(lab: Lab) -> Path:
    return lab.root / "config" / "lock" / TABLE_NAME


def _store(lab: Lab, mode: str, template: str = "%p/%u/Maildir") -> MaildirStore:
    table = _table(lab) if mode == "table" else None
    return MaildirStore(template, str(lab.root / "spool"), lock_table=table)


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("mode", MODES)
def test_a_second_session_of_the_process_is_refused_until_the_first_ends(
    lab: Lab, mode: str
) -> None:
    first = _store(lab, mode).open("bob")
    with pytest.raises(MaildropInUse):
        _store(lab, mode).open("bob")  # another store of the process: the same lock
    other = _store(lab, mode).open("alice")  # another maildrop is not held up
    first.close()
    _store(lab, mode).open("bob").close()
    other.close()


@pytest.mark.parametrize("mode", MODES)
def test_another_process_is_refused_and_the_lock_dies_with_its_holder(lab: Lab, mode: str) -> None:
    table = repr(str(_table(lab))) if mode == "table" else "None"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from pop3d.storage.maildir import MaildirStore
        table = {table}
        store = MaildirStore("%p/%u/Maildir", {str(lab.root / "spool")!r},
                             lock_table=Path(table) if table else None)
        drop = store.open("bob")
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == b"locked\n"
        with pytest.raises(MaildropInUse):
            _store(lab, mode).open("bob")
        _store(lab, mode).open("alice").close()
    finally:
        child.kill()
        child.wait(timeout=10)
        child.stdout.close()
    _store(lab, mode).open("bob").close()


def test_a_table_lock_costs_no_descriptor_per_maildrop(lab: Lab) -> None:
    store = _store(lab, "table")
    store.open("carol").close()  # the table is opened once, at first use
    before = _descriptors()
    drops = [store.open(user) for user in ("alice", "bob", "dave", "erin")]
    assert _descriptors() == before
    for drop in drops:
        drop.close()
    assert not (lab.maildir("bob") / "pop3d.lock").exists()


def test_the_table_names_the_maildir_not_the_path_to_it(lab: Lab) -> None:
    """Two templates reaching bob's Maildir by different paths (one through a link in a
    parent) lock the same maildrop."""
    spool = lab.root / "spool"
    (lab.root / "alias").symlink_to(spool)
    drop = _store(lab, "table").open("bob")
    aliased = MaildirStore(f"{lab.root}/alias/%u/Maildir", lock_table=_table(lab))
    with pytest.raises(MaildropInUse):
        aliased.open("bob")
    drop.close()
    aliased.open("bob").close()


@pytest.mark.parametrize("mode", MODES)
def test_an_import_and_a_session_exclude_each_other(lab: Lab, mode: str) -> None:
    store = _store(lab, mode)
    drop = store.open("bob")
    with pytest.raises(ImportFailed, match="in use"), locked_target(store, "bob"):
        pass
    drop.close()
    with locked_target(store, "bob"), pytest.raises(MaildropInUse):
        store.open("bob")
    store.open("bob").close()


def test_an_unusable_table_is_a_storage_error(lab: Lab) -> None:
    blocker = lab.root / "config" / "lock"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the lock folder should be\n")
    store = _store(lab, "table")
    with pytest.raises(StorageError, match="lock table") as caught:
        store.open("bob")
    assert not isinstance(caught.value, MaildropInUse)
    with pytest.raises(ImportFailed):
        with locked_target(store, "bob"):
            pass
    # The failed login released nothing it did not take: the maildir way still works.
    _store(lab, "maildir").open("bob").close()


def test_check_config_sees_what_would_stop_the_table_and_makes_nothing(lab: Lab) -> None:
    table = _table(lab)
    assert check_table(table) is None
    assert not table.parent.exists()  # checking made nothing
    table.mkdir(parents=True)
    (lab.root / "elsewhere").write_text("")
    (table / "07").symlink_to(lab.root / "elsewhere")
    assert "07 is not a regular file" in (check_table(table) or "")
    with pytest.raises(StorageError, match="lock table"):
        _store(lab, "table").open("bob")
    (table / "07").unlink()
    (table / "07").mkdir()
    assert "07 is not a regular file" in (check_table(table) or "")
    (table / "07").rmdir()
    _store(lab, "table").open("bob").close()
    assert sorted(p.name for p in table.iterdir()) == [f"{n:02x}" for n in range(256)]
    table.rename(lab.root / "moved")
    table.symlink_to(lab.root / "moved")
    assert "is not a folder" in (check_table(table) or "")


class _Holder:
    """Another process with a store of the lab, driven a line at a time: ``open USER``,
    ``commit`` (delete the first message of what it opened), each answered on stdout."""

    SCRIPT = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from pop3d.storage.base import StorageError
        from pop3d.storage.maildir import MaildirStore
        spool, table = sys.argv[1], sys.argv[2]
        store = MaildirStore("%p/%u/Maildir", spool, lock_table=Path(table) if table else None)
        drops = []
        for line in sys.stdin:
            verb, _, user = line.split(" ")[0], None, line.split(" ")[-1].strip()
            if verb == "open":
                try:
                    drops.append(store.open(user))
                    print("opened", flush=True)
                except StorageError as exc:
                    print(type(exc).__name__, flush=True)
            else:
                print(*drops[0].commit((0,), None), flush=True)
        """
    )

    def __init__(self, lab: Lab, mode: str) -> None:
        table = str(_table(lab)) if mode == "table" else ""
        self.child = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, str(lab.root / "spool"), table],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, line: str) -> str:
        assert self.child.stdin is not None and self.child.stdout is not None
        self.child.stdin.write(line + "\n")
        self.child.stdin.flush()
        return self.child.stdout.readline().strip()

    def end(self) -> None:
        self.child.kill()
        self.child.wait(timeout=10)
        for stream in (self.child.stdin, self.child.stdout):
            if stream is not None:
                stream.close()


def _remove_the_lock(lab: Lab, how: str) -> None:
    """What a hostile hand or a careless cleanup does to the file a holder has locked."""
    lock = lab.maildir("bob") / "pop3d.lock"
    if how == "unlink":
        lock.unlink()
    elif how == "rename":
        lab.maildir("bob").joinpath("planted").write_text("")
        lab.maildir("bob").joinpath("planted").rename(lock)
    else:
        shutil.rmtree(lab.root / "config" / "lock")


REMOVALS = (("maildir", "unlink"), ("maildir", "rename"), ("table", "rmtree"))


@pytest.mark.parametrize(("mode", "how"), REMOVALS)
def test_a_holder_whose_lock_file_went_takes_the_new_one_before_its_update(
    lab: Lab, mode: str, how: str
) -> None:
    holder = _Holder(lab, mode)
    try:
        assert holder.ask("open bob") == "opened"
        _remove_the_lock(lab, how)
        before = len(lab.messages("bob"))
        assert holder.ask("commit") == "1 0"
        assert len(lab.messages("bob")) == before - 1
        # The holder now holds the file a new locker finds.
        with pytest.raises(MaildropInUse):
            _store(lab, mode).open("bob")
    finally:
        holder.end()


@pytest.mark.parametrize(("mode", "how"), REMOVALS)
def test_a_holder_whose_lock_another_took_in_the_new_file_carries_out_nothing(
    lab: Lab, mode: str, how: str
) -> None:
    holder = _Holder(lab, mode)
    try:
        assert holder.ask("open bob") == "opened"
        _remove_the_lock(lab, how)
        # The limit SECURITY.md states: the second session gets the maildrop...
        second = _store(lab, mode).open("bob")
        before = len(lab.messages("bob"))
        # ...and the first, finding it held, does not carry out its UPDATE.
        assert holder.ask("commit") == "0 1"
        assert len(lab.messages("bob")) == before
        second.close()
    finally:
        holder.end()


def test_a_process_whose_table_went_moves_its_held_locks_to_the_new_one(lab: Lab) -> None:
    """Any lock the process takes after the table was removed brings the maildrops it holds
    into the new table, before another process can take them there."""
    holder = _Holder(lab, "table")
    try:
        assert holder.ask("open bob") == "opened"
        _remove_the_lock(lab, "rmtree")
        assert holder.ask("open alice") == "opened"
        with pytest.raises(MaildropInUse):
            _store(lab, "table").open("bob")
        with pytest.raises(MaildropInUse):
            _store(lab, "table").open("alice")
        _store(lab, "table").open("carol").close()
    finally:
        holder.end()
