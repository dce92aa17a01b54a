"""Maildirs under folders their users own (``/home/%u/Maildir``): from the first folder the
template fills in per user, no component of the path is followed if it is a link, at
login, for a popsubfolders folder and at delivery. Found probing: O_NOFOLLOW on the whole
path guarded its last component only, so alice, replacing her ``mail`` folder (or her
Maildir, for ``alice+Sent``) by a link to bob's, was served bob's mail and had it deleted
at QUIT, and a delivery to her made a Maildir wherever her link pointed. The folders
before that first one are the administrator's, and a link there is followed."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from pop3d.storage.base import NoSuchFolder, StorageError
from pop3d.storage.maildir import MaildirStore

BOBS = ("1700000000.M1P1.host", b"Subject: bob's\n\nprivate\n")


def _maildir(path: Path, *messages: tuple[str, bytes]) -> Path:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    for name, data in messages:
        (path / "cur" / name).write_bytes(data)
    return path


def _names(path: Path) -> list[str]:
    return sorted(p.name for p in path.rglob("*") if p.is_file())


def test_a_link_above_the_maildir_in_the_users_folders_is_not_followed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    bobs = _maildir(home / "bob" / "mail" / "Maildir", BOBS)
    (home / "alice").mkdir()
    (home / "alice" / "mail").symlink_to(home / "bob" / "mail")
    store = MaildirStore(f"{home}/%u/mail/Maildir")
    with pytest.raises(StorageError, match="alice/mail: a symbolic link, not followed"):
        store.open("alice")
    with pytest.raises(StorageError, match="alice/mail: a symbolic link, not followed"):
        store.deliver("alice", io.BytesIO(b"Subject: x\n\nx\n"))
    assert _names(bobs) == [BOBS[0]]
    # pointed at a folder with no Maildir in it, a delivery made one there
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (home / "alice" / "mail").unlink()
    (home / "alice" / "mail").symlink_to(elsewhere)
    with pytest.raises(StorageError, match="a symbolic link, not followed"):
        store.deliver("alice", io.BytesIO(b"Subject: x\n\nx\n"))
    with pytest.raises(StorageError, match="a symbolic link, not followed"):
        store.open("alice")  # the first login would have made it too
    assert list(elsewhere.iterdir()) == []


def test_a_linked_maildir_is_refused_for_its_folders_too(tmp_path: Path) -> None:
    """popsubfolders: ``alice+Sent`` with alice's Maildir a link to bob's opened bob's
    ``.Sent`` (the link was not the path's last component any more)."""
    home = tmp_path / "home"
    _maildir(home / "bob" / "Maildir")
    sent = _maildir(home / "bob" / "Maildir" / ".Sent", BOBS)
    (home / "alice").mkdir()
    (home / "alice" / "Maildir").symlink_to(home / "bob" / "Maildir")
    store = MaildirStore(f"{home}/%u/Maildir")
    for folder in (None, "Sent"):
        with pytest.raises(StorageError, match="Maildir: a symbolic link, not followed") as caught:
            store.open("alice", folder)
        assert not isinstance(caught.value, NoSuchFolder)
    # the folder itself a link: refused the same way
    shutil.rmtree(home / "alice")
    _maildir(home / "alice" / "Maildir")
    (home / "alice" / "Maildir" / ".Sent").symlink_to(sent)
    with pytest.raises(StorageError, match="a symbolic link, not followed"):
        store.open("alice", "Sent")
    assert _names(sent) == [BOBS[0]]
    drop = store.open("bob", "Sent")  # bob's own folder opens
    assert len(drop.uids) == 1
    drop.close()


def test_the_users_own_folder_is_not_followed_either(tmp_path: Path) -> None:
    """The first folder the template fills in (``%u`` of ``/home/%u/Maildir``) is one
    its user may own too: a link there is refused, as for ``pop3d-admin import``."""
    home = tmp_path / "home"
    bobs = _maildir(home / "bob" / "Maildir", BOBS)
    (home / "alice").symlink_to(home / "bob")
    store = MaildirStore(f"{home}/%u/Maildir")
    with pytest.raises(StorageError, match="home/alice: a symbolic link, not followed"):
        store.open("alice")
    assert _names(bobs) == [BOBS[0]]


def test_the_administrators_links_are_followed(tmp_path: Path) -> None:
    """Before the first per-user folder the path is the administrator's: a spool that is
    a link (``/var/mail`` on many systems), or a partition that is one, works."""
    real = tmp_path / "spool-real"
    _maildir(real / "bob" / "Maildir", BOBS)
    (tmp_path / "spool").symlink_to(real)
    for store in (
        MaildirStore(f"{tmp_path}/spool/%u/Maildir"),
        MaildirStore("%p/%u/Maildir", partition=str(tmp_path / "spool")),
    ):
        drop = store.open("bob")
        assert len(drop.uids) == 1
        drop.close()
        store.deliver("newcomer", io.BytesIO(b"Subject: x\n\nx\n"))
    assert len(list((real / "newcomer" / "Maildir" / "new").iterdir())) == 2


def test_an_alias_domain_made_as_a_link_is_followed(tmp_path: Path) -> None:
    """A domain's folder is the administrator's: example.net a link to example.org serves
    bob@example.net from example.org's folder (refused for a day, found re-probing); bob's
    own folder there is still never followed."""
    spool = tmp_path / "spool"
    _maildir(spool / "example.org" / "bob", BOBS)
    (spool / "example.net").symlink_to(spool / "example.org")
    store = MaildirStore(f"{spool}/%d/%n")
    drop = store.open("bob@example.net")
    assert len(drop.uids) == 1
    drop.close()
    (spool / "example.org" / "eve").symlink_to(spool / "example.org" / "bob")
    with pytest.raises(StorageError, match="eve: a symbolic link, not followed"):
        store.open("eve@example.net")


def test_the_template_splits_where_it_first_names_a_user() -> None:
    store = MaildirStore("%p/mail/%d/%n/Maildir", partition="/srv/spool")
    where = store.location("bob@example.org")
    # the domain's folder is the administrator's (an alias domain may be a link to another)
    assert (str(where.followed), where.parts) == ("/srv/spool/mail/example.org", ("bob", "Maildir"))
    # no domain: %d is empty and leaves no folder of its own
    assert store.location("bob").parts == ("bob", "Maildir")
    assert str(store.location("bob").followed) == "/srv/spool/mail"
    assert store.location("bob", "Sent").parts == ("bob", "Maildir", ".Sent")
    # a literal %% before the user is the administrator's
    assert MaildirStore("/m%%u/%u").location("bob").followed == "/m%u"
    with pytest.raises(StorageError, match="refused"):
        MaildirStore("/home/%u/Maildir").location("..")
