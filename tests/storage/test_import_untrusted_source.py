"""pop3d-admin import reads sources that belong to users (a Dovecot Maildir or an mbox in a
home folder) with more rights than they have: nothing of a source is followed through a
symbolic link, only folders and regular files are read, never a FIFO (it would hang the
import) and never more than a cap (SECURITY.md, "Malicious local user").

The hole these found: a link planted as the source's ``cur/`` (to the configuration
directory) and a uidlist line naming ``pop3d.passwd`` copied the credential file into the
user's Maildir, for them to RETR; ``~atk/mbox`` linked to bob's mbox imported bob's mail
into atk's Maildir; a FIFO as the uidlist hung the import, a link to /dev/zero ended in a
MemoryError traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pop3d.storage.dovecot_import import UIDLIST_MAX, import_dovecot
from pop3d.storage.imap_import import uidl_format_from_config
from pop3d.storage.importing import MESSAGE_MAX, ImportFailed, SourcePath, SourceRefused
from pop3d.storage.maildir import MaildirStore
from pop3d.storage.mbox_import import _PIECE, import_mbox, messages
from tests.support.lab import Lab

ADMIN = [sys.executable, "-m", "pop3d.cli.admin"]
MESSAGE = b"Subject: mine\n\nmy own mail\n"


def _admin(lab: Lab, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*ADMIN, "-C", str(lab.config), *args],
        capture_output=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _dovecot(folder: Path, names: list[str]) -> Path:
    """A Dovecot Maildir whose uidlist lists ``names`` (UIDs 1, 2, ...); new/ and cur/
    exist and are empty."""
    for sub in ("new", "cur", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    lines = ["3 V1700000005 N9 G0", *(f"{n} :{name}" for n, name in enumerate(names, 1))]
    (folder / "dovecot-uidlist").write_text("\n".join(lines) + "\n")
    return folder


def _no_maildrop(lab: Lab, user: str) -> None:
    shutil.rmtree(lab.maildir(user))


def _imported(lab: Lab, user: str) -> list[bytes]:
    maildir = lab.maildir(user)
    if not maildir.exists():
        return []
    return [p.read_bytes() for sub in ("new", "cur") for p in sorted((maildir / sub).iterdir())]


@pytest.mark.parametrize("linked", ["cur", "new"])
def test_a_linked_message_folder_does_not_copy_the_credential_file(lab: Lab, linked: str) -> None:
    source = _dovecot(lab.root / "old", ["pop3d.passwd"])
    (source / linked).rmdir()
    (source / linked).symlink_to(lab.root / "config")  # where pop3d.passwd is
    _no_maildrop(lab, "bob")
    result = _admin(lab, "import", "--dovecot", str(source), "bob")
    assert result.returncode == 65, result.stderr
    refused = f"import refused: {source}/{linked}: a symbolic link, not followed"
    assert result.stderr == f"pop3d-admin: {refused}\n".encode()
    assert _imported(lab, "bob") == []


def test_a_fifo_uidlist_is_refused_at_once(lab: Lab) -> None:
    source = _dovecot(lab.root / "old", [])
    (source / "dovecot-uidlist").unlink()
    os.mkfifo(source / "dovecot-uidlist")
    result = _admin(lab, "import", "--dovecot", str(source), "bob", timeout=20)
    assert result.returncode == 65, result.stderr
    assert b"dovecot-uidlist: a FIFO, not a regular file" in result.stderr


def test_a_uidlist_linked_to_dev_zero_is_refused_without_a_traceback(lab: Lab) -> None:
    source = _dovecot(lab.root / "old", [])
    (source / "dovecot-uidlist").unlink()
    (source / "dovecot-uidlist").symlink_to("/dev/zero")
    result = _admin(lab, "import", "--dovecot", str(source), "bob", timeout=20)
    assert result.returncode == 65, result.stderr
    assert b"dovecot-uidlist: a symbolic link, not followed" in result.stderr
    assert b"Traceback" not in result.stderr


def test_an_oversized_uidlist_is_refused_unread(tmp_path: Path) -> None:
    source = _dovecot(tmp_path / "old", [])
    os.truncate(source / "dovecot-uidlist", UIDLIST_MAX + 1)  # sparse: no disk, all memory
    store = MaildirStore("%p/%u/Maildir", str(tmp_path / "spool"))
    with pytest.raises(SourceRefused, match=f"dovecot-uidlist: larger than {UIDLIST_MAX}"):
        import_dovecot(source, store, "bob")


def test_linked_fifo_and_oversized_messages_are_skipped_the_rest_copied(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"Subject: not yours\n\nsecret\n")
    source = _dovecot(tmp_path / "old", ["a-link", "b-fifo", "c-huge", "d-mine"])
    (source / "cur" / "a-link:2,S").symlink_to(outside)
    os.mkfifo(source / "new" / "b-fifo")
    with (source / "new" / "c-huge").open("wb") as huge:
        huge.truncate(MESSAGE_MAX + 1)  # sparse
    (source / "new" / "d-mine").write_bytes(MESSAGE)
    store = MaildirStore("%p/%u/Maildir", str(tmp_path / "spool"))
    lines: list[str] = []
    report = import_dovecot(source, store, "bob", report=lines.append)
    assert report.imported == 1
    assert [line.partition("skipped: ")[2] for line in lines] == [
        "cannot read cur/a-link:2,S: a symbolic link, not followed",
        "cannot read new/b-fifo: a FIFO, not a regular file",
        f"new/c-huge: larger than {MESSAGE_MAX} bytes",
    ]
    maildir = store.path_for("bob")
    copied = [p.read_bytes() for sub in ("new", "cur") for p in (maildir / sub).iterdir()]
    assert copied == [MESSAGE]


def test_a_source_named_on_the_command_line_is_not_followed_if_a_link(lab: Lab) -> None:
    """The administrator types a path into a user's home folder: the user can make its last
    component a link between the typing and the run. Folders before it are followed."""
    real = _dovecot(lab.root / "real", [])
    (lab.root / "home").mkdir()
    (lab.root / "home" / "Maildir").symlink_to(real)
    result = _admin(lab, "import", "--dovecot", str(lab.root / "home" / "Maildir"), "bob")
    assert result.returncode == 65
    assert b"/home/Maildir: a symbolic link, not followed" in result.stderr
    (lab.root / "admins-link").symlink_to(lab.root / "real")
    mbox = lab.root / "real" / "mbox"
    mbox.write_bytes(b"From a@b Thu Nov  2 10:00:00 2023\n" + MESSAGE + b"\n")
    _no_maildrop(lab, "bob")
    result = _admin(lab, "import", "--mbox", str(lab.root / "admins-link" / "mbox"), "bob")
    assert result.returncode == 0, result.stderr
    assert _imported(lab, "bob") == [MESSAGE]


def test_import_all_does_not_read_another_users_mbox_through_a_link(lab: Lab) -> None:
    home = lab.root / "home"
    for user in ("alice", "bob"):
        (home / user).mkdir(parents=True)
    bobs = home / "bob" / "mbox"
    bobs.write_bytes(b"From x Thu Nov  2 10:00:00 2023\nSubject: bob's private mail\n\nhi\n")
    (home / "alice" / "mbox").symlink_to(bobs)
    _no_maildrop(lab, "alice")
    _no_maildrop(lab, "bob")
    result = _admin(lab, "import", "--mbox", str(home / "%u" / "mbox"), "--all")
    assert result.returncode == 65, result.stderr
    assert f"{home}/alice/mbox: a symbolic link, not followed".encode() in result.stderr
    assert _imported(lab, "alice") == []
    assert len(_imported(lab, "bob")) == 1  # the others go on


def test_import_all_follows_no_link_from_the_users_folder_on(lab: Lab) -> None:
    """``<root>/homes/%u/mail/Maildir``: the folders before %u are the administrator's (a
    link there is followed), alice's own ``mail`` folder is hers, and a link there is not."""
    (lab.root / "homes-real" / "alice").mkdir(parents=True)
    (lab.root / "homes-real" / "bob").mkdir(parents=True)
    (lab.root / "homes").symlink_to(lab.root / "homes-real")
    bobs = _dovecot(lab.root / "homes-real" / "bob" / "mail" / "Maildir", ["m"])
    (bobs / "new" / "m").write_bytes(MESSAGE)
    (lab.root / "homes-real" / "alice" / "mail").symlink_to(bobs.parent)
    _no_maildrop(lab, "alice")
    _no_maildrop(lab, "bob")
    template = str(lab.root / "homes" / "%u" / "mail" / "Maildir")
    result = _admin(lab, "import", "--dovecot", template, "--all")
    assert result.returncode == 65, result.stderr
    assert b"/homes/alice/mail: a symbolic link, not followed" in result.stderr
    assert _imported(lab, "alice") == []
    assert _imported(lab, "bob") == [MESSAGE]


def test_a_template_splits_at_the_first_variable() -> None:
    source = SourcePath.from_template("/srv/homes/%u/mail/Maildir", "alice")
    assert source == SourcePath(Path("/srv/homes"), ("alice", "mail", "Maildir"))
    assert SourcePath.from_template("/var/mail/%u", "bob").followed == Path("/var/mail")
    assert SourcePath.given(Path("/var/mail/bob")) == SourcePath(Path("/var/mail"), ("bob",))


def test_an_empty_variable_keeps_the_template_s_folder() -> None:
    """Found probing: "%d/%n" for a user without a domain expanded to "/bob", and the walk
    began at the root instead of under the administrator's folder."""
    source = SourcePath.from_template("/srv/mail/%d/%n", "bob")
    assert source == SourcePath(Path("/srv/mail"), ("bob",))
    assert str(source) == "/srv/mail/bob"


def test_import_all_skips_names_a_single_import_would_refuse(lab: Lab) -> None:
    """Found probing: a credential file's "a/b" read a's home under --all."""
    home = lab.root / "home"
    (home / "alice" / "b").mkdir(parents=True)
    (home / "alice" / "b" / "mbox").write_bytes(b"From x Thu Nov  2 10:00:00 2023\n\nhi\n")
    with lab.credentials.open("a") as credentials:
        credentials.write(lab.credentials.read_text().splitlines()[-1].replace("bob", "alice/b", 1))
        credentials.write("\n")
    result = _admin(lab, "import", "--mbox", str(home / "%u" / "mbox"), "--all")
    assert result.returncode == 65, result.stderr
    assert b"alice/b: not a valid user name, not imported" in result.stderr


def test_an_oversized_body_of_a_valid_content_length_is_skipped_whole(tmp_path: Path) -> None:
    """Found probing: a body over the cap was split at the "From " lines inside it, so a
    message planted in the body of a big one was imported as a message of its own."""
    planted = b"x\n\nFrom attacker Thu Nov  2 10:00:00 2023\nSubject: injected\n\nfake\n"
    body = planted + b"y" * 200 + b"\n"
    path = tmp_path / "mbox"
    path.write_bytes(
        b"From a Thu Nov  2 10:00:00 2023\nSubject: big\nContent-Length: "
        + str(len(body)).encode()
        + b"\n\n"
        + body
        + b"\nFrom b Thu Nov  2 10:00:01 2023\nSubject: next\n\nhello\n\n"
    )
    with path.open("rb") as handle:
        found = list(messages(handle, limit=150))
    assert [data for _, data in found] == [None, b"Subject: next\n\nhello\n"], found


def test_an_oversized_mbox_message_is_skipped_and_long_lines_come_whole(tmp_path: Path) -> None:
    """A message is held only up to its cap (a sparse mbox costs a user no disk); a line
    longer than a read piece is neither cut nor taken for a separator at a piece's start."""
    long_line = b"x" * (_PIECE - 1) + b"\nFrom inside a long line\n"
    path = tmp_path / "mbox"
    path.write_bytes(
        b"From a Thu Nov  2 10:00:00 2023\nSubject: big\n\n" + b"y" * 5000 + b"\n\n"
        b"From b Thu Nov  2 10:00:01 2023\nSubject: long\n\n" + long_line + b"\n"
        b"From c Thu Nov  2 10:00:02 2023\nSubject: last\n\nend\n\n"
    )
    with path.open("rb") as handle:
        found = [stored for _separator, stored in messages(handle, limit=4096 * 1024)]
    assert len(found) == 3 and found[1] == b"Subject: long\n\n" + long_line
    with path.open("rb") as handle:
        found = [stored for _separator, stored in messages(handle, limit=1000)]
    assert found == [None, None, b"Subject: last\n\nend\n"]
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as handle:
        handle.write(b"From a Thu Nov  2 10:00:00 2023\nSubject: huge\n\n")
        handle.truncate(MESSAGE_MAX + 1000)
        handle.seek(0, os.SEEK_END)
        handle.write(b"\n\nFrom b Thu Nov  2 10:00:01 2023\n" + MESSAGE)
    store = MaildirStore("%p/%u/Maildir", str(tmp_path / "spool"))
    lines: list[str] = []
    report = import_mbox(sparse, store, "bob", lines.append)
    assert (report.imported, len(report.skipped)) == (1, 1)
    assert lines == [f"{sparse}: message 1: skipped: larger than {MESSAGE_MAX} bytes"]


def test_the_old_sites_imapd_conf_is_never_read_whole_past_a_cap() -> None:
    with pytest.raises(ImportFailed, match="/dev/zero: larger than"):
        uidl_format_from_config(Path("/dev/zero"))
