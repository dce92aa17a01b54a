"""Moving a real Dovecot site to pop3d without a single re-download (issue 14).

Each test builds the old site with Debian's Dovecot 2.3 (tests/support/dovecot.py: its own
dovecot.conf, mail delivered by its own ``dovecot-lda``), lets ``fetchmail --keep --uidl``
fetch everything from it, imports the mailbox with ``pop3d-admin import``, and points the
same fetchmail (same id file, same host name 127.0.0.1, another port) at pop3d: it must
download nothing, and after one ``pop3d-admin deliver``, exactly that message. Python's
poplib compares what both servers say (UIDL, LIST, every message's lines) exactly.
"""

from __future__ import annotations

import os
import poplib
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.interop.test_fetchmail import FETCH_COMMAND, FETCHED, NO_MAIL, RECEIVED, Fetchmail
from tests.support.dovecot import MAIL_GID, MAIL_UID, MAILDIR, MBOX, Dovecot, running_dovecot
from tests.support.lab import Lab, start_server

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="Dovecot starts as root"),
]

ADMIN = [sys.executable, "-m", "pop3d.cli.admin"]
USER, PASSWORD = "carol", "migrate-me"
OPTIONS = ("-p", "POP3", "--auth", "password", "--sslproto", "", "--uidl", "--keep")


def _message(number: int, extra: bytes = b"") -> bytes:
    """Mail as an MTA hands it over: LF line ends; a dot-led line (dot-stuffing), a body
    line starting "From " after an empty line (mbox escaping), 8-bit text, one big message
    and one without a final line end (Dovecot's LIST leaves out the CRLF it adds)."""
    body = b"line one\n.a line with a leading dot\n\nFrom the start of a line\n"
    body += b">From quoted\ncaf\xc3\xa9 8-bit"
    body += b"" if number == 5 else b"\n"
    if number == 3:
        body += b"0123456789abcdef\n" * 4096  # 68 KiB
    return (
        b"From: Old Site <sender@dovecot.test>\nTo: carol@dovecot.test\n"
        + b"Subject: message %d\nMessage-ID: <carol.%d@dovecot.test>\n" % (number, number)
        + extra
        + b"\n"
        + body
    )


@dataclass
class Seen:
    """What one server tells poplib: UIDL and LIST lines, every message's lines."""

    uidl: list[bytes]
    listing: list[bytes]
    messages: list[list[bytes]]


def _look(port: int) -> Seen:
    client = poplib.POP3("127.0.0.1", port, timeout=30)
    try:
        client.user(USER)
        client.pass_(PASSWORD)
        uidl = client.uidl()[1]
        listing = client.list()[1]
        messages = [client.retr(n)[1] for n in range(1, len(listing) + 1)]
        client.rset()  # nothing marked: the old site's flags stay as fetchmail left them
    finally:
        client.quit()
    return Seen(uidl, listing, messages)


def _admin(lab: Lab, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*ADMIN, "-C", str(lab.config), *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def _lab(tmp_path: Path, extra: str = "") -> Lab:
    return Lab(tmp_path / "lab", extra_config=extra, users={USER: PASSWORD}).create()


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _fetch_all_from_dovecot(tmp_path: Path, old: Dovecot, count: int) -> Fetchmail:
    fetch = Fetchmail(tmp_path / "fm", "127.0.0.1", old.port, USER, PASSWORD)
    first = fetch(*OPTIONS)
    assert first.code == FETCHED, first.log
    assert len(RECEIVED.findall(first.delivered)) == count, first.log
    return fetch


def _switch_and_check(tmp_path: Path, lab: Lab, fetch: Fetchmail, before: Seen) -> None:
    """pop3d serves what Dovecot served; fetchmail, moved over, downloads nothing, then
    exactly the one new message."""
    server = start_server(lab)
    try:
        after = _look(server.port)
        assert after.uidl == before.uidl
        assert after.listing == before.listing
        assert after.messages == before.messages
        moved = Fetchmail(fetch.home, "127.0.0.1", server.port, USER, PASSWORD)
        count = len(before.uidl)
        nothing = moved(*OPTIONS)
        assert nothing.code == NO_MAIL, nothing.log
        assert f"{count} messages ({count} seen) for {USER} at 127.0.0.1" in nothing.log
        assert FETCH_COMMAND.findall(nothing.log) == []
        new = b"Subject: after the move\nMessage-ID: <carol.new@lab.test>\n\nnew\n"
        assert _admin(lab, "deliver", USER, stdin=new).returncode == 0
        one = moved(*OPTIONS)
        assert one.code == FETCHED, one.log
        assert FETCH_COMMAND.findall(one.log) == [str(count + 1)], one.log
        delivered = one.delivered[len(nothing.delivered) :]
        assert len(RECEIVED.findall(delivered)) == 1
        assert delivered.endswith(new)
    finally:
        server.stop()


def _import(lab: Lab, *args: str) -> str:
    done = _admin(lab, "import", *args, USER)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


# --- Maildir --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "uidl_format"),
    [
        ("", None),  # Dovecot's default, %08Xu%08Xv
        ("pop3_uidl_format = %v.%u\n", "%v.%u"),
        ("pop3_uidl_format = %f\n", "%f"),
        ("pop3_uidl_format = %g\n", "%g"),  # a Maildir message's GUID: its base name
        ("pop3_uidl_format = %v-%u\npop3_save_uidl = yes\n", "%v-%u"),
    ],
    ids=["default", "custom", "filename", "guid", "saved"],
)
def test_maildir_moves_without_a_download(
    tmp_path: Path, settings: str, uidl_format: str | None
) -> None:
    with running_dovecot({USER: PASSWORD}, MAILDIR, settings) as old:
        for number in range(1, 6):
            old.deliver(USER, _message(number))
        fetch = _fetch_all_from_dovecot(tmp_path, old, 5)
        before = _look(old.port)
        uidlist = (old.maildir(USER) / "dovecot-uidlist").read_text()
        assert (" P" in uidlist) == ("pop3_save_uidl" in settings), uidlist
        lab = _lab(tmp_path)
        source = str(old.maildir(USER))
        untouched = _tree(old.maildir(USER))
        args = ("--dovecot", source) + (("--uidl-format", uidl_format) if uidl_format else ())
        assert _import(lab, *args) == f"{USER}: 5 imported, 0 already there, 0 skipped\n"
        assert _import(lab, *args) == f"{USER}: 0 imported, 5 already there, 0 skipped\n"
        assert _tree(old.maildir(USER)) == untouched
    _switch_and_check(tmp_path, lab, fetch, before)


def test_mail_delivered_since_dovecot_last_listed_the_folder_comes_too(tmp_path: Path) -> None:
    """Found probing: a message Postfix or procmail put in new/ after Dovecot last wrote its
    uidlist was passed over, and the import said it was done. It comes with the UIDL pop3d
    gives any file (no client has one for it: Dovecot had not listed it), after the rest."""
    with running_dovecot({USER: PASSWORD}, MAILDIR) as old:
        for number in (1, 2, 3):
            old.deliver(USER, _message(number))
        before = _look(old.port)
        unlisted = f"{int(time.time()) + 1}.M1P999.postfix"
        (old.maildir(USER) / "new" / unlisted).write_bytes(_message(4))
        assert unlisted not in (old.maildir(USER) / "dovecot-uidlist").read_text()
        lab = _lab(tmp_path)
        source = ("--dovecot", str(old.maildir(USER)))
        done = f"{USER}: 4 imported (1 not in dovecot-uidlist), 0 already there, 0 skipped\n"
        assert _import(lab, *source) == done
        assert _import(lab, *source) == f"{USER}: 0 imported, 4 already there, 0 skipped\n"
    server = start_server(lab)
    try:
        after = _look(server.port)
    finally:
        server.stop()
    assert after.uidl == [*before.uidl, f"4 {unlisted}".encode()]
    assert after.messages == [*before.messages, _message(4).splitlines()]


def test_saved_uidls_survive_a_format_change(tmp_path: Path) -> None:
    """pop3_save_uidl = yes froze the UIDLs clients saw (the P field); the site then changed
    pop3_uidl_format: old messages keep the saved UIDL, newer ones have the new format."""
    saved = "pop3_save_uidl = yes\n"
    with running_dovecot({USER: PASSWORD}, MAILDIR, saved + "pop3_uidl_format = %v.%u\n") as old:
        for number in (1, 2, 3):
            old.deliver(USER, _message(number))
        fetch = _fetch_all_from_dovecot(tmp_path, old, 3)
        old.restart(saved)  # back to the default %08Xu%08Xv
        for number in (4, 5):
            old.deliver(USER, _message(number))
        second = fetch(*OPTIONS)
        assert FETCH_COMMAND.findall(second.log) == ["4", "5"], second.log
        before = _look(old.port)
        assert [line.split()[1].count(b".") for line in before.uidl] == [1, 1, 1, 0, 0]
        lab = _lab(tmp_path)
        assert _import(lab, "--dovecot", str(old.maildir(USER))).startswith(f"{USER}: 5 imported")
    _switch_and_check(tmp_path, lab, fetch, before)


def test_flags_kept_and_an_unreadable_message_skipped(tmp_path: Path) -> None:
    with running_dovecot({USER: PASSWORD}, MAILDIR) as old:
        for number in range(1, 6):
            old.deliver(USER, _message(number))
        old.doveadm("flags", "add", "-u", USER, "\\Deleted", "mailbox", "INBOX", "uid", "2")
        old.doveadm("flags", "add", "-u", USER, "\\Seen \\Flagged", "mailbox", "INBOX", "uid", "4")
        before = _look(old.port)
        maildir = old.maildir(USER)
        names = {p.name.partition(":")[0]: p for p in (maildir / "cur").iterdir()}
        uidlist = (maildir / "dovecot-uidlist").read_text().splitlines()[1:]
        by_uid = {int(line.split()[0]): line.rpartition(" :")[2] for line in uidlist}
        assert names[by_uid[2]].name.endswith(":2,T")
        assert names[by_uid[4]].name.endswith(":2,FS")
        # message 5 can no longer be read: a link planted in its place is not followed
        five = names[by_uid[5]]
        five.unlink()
        five.symlink_to(names[by_uid[1]])
        lab = _lab(tmp_path)
        done = _admin(lab, "import", "--dovecot", str(maildir), USER)
        assert done.returncode == 65, done.stderr  # EX_DATAERR: the rest is in
        assert done.stdout == f"{USER}: 4 imported, 0 already there, 1 skipped\n".encode()
        assert re.search(
            rf"UID 5 \({re.escape(by_uid[5])}\): skipped: "
            r"cannot read cur/\S+: a symbolic link, not followed",
            done.stderr.decode(),
        ), done.stderr
    flags = sorted(p.name.partition(":")[2] for p in lab.messages(USER))
    assert flags == ["2,", "2,", "2,FS", "2,T"]  # Dovecot moved all to cur/
    server = start_server(lab)
    try:
        after = _look(server.port)
    finally:
        server.stop()
    assert after.uidl == before.uidl[:4]  # Dovecot lists a \Deleted message too
    assert after.messages == before.messages[:4]
    # popuseimapflags: the message flagged deleted at the old site is not listed
    (lab.root / "imapd.conf").write_text(lab.config.read_text() + "popuseimapflags: yes\n")
    server = start_server(lab)
    try:
        hidden = _look(server.port)
    finally:
        server.stop()
    assert [line.split()[1] for line in hidden.uidl] == [
        before.uidl[n].split()[1] for n in (0, 2, 3)
    ]


def test_dovecots_pop3_order_is_kept(tmp_path: Path) -> None:
    """A uidlist with O fields (what a migration into Dovecot wrote to keep the order of
    the server before it): Dovecot's pop3 lists those messages first, by that order; the
    message numbers stay the same after the move to pop3d."""
    orders = {3: 1, 5: 7, 1: 7}  # UID -> O; UIDs 2 and 4 have none; 1 and 5 tie
    with running_dovecot({USER: PASSWORD}, MAILDIR) as old:
        for number in range(1, 6):
            old.deliver(USER, _message(number))
        _look(old.port)  # Dovecot writes its uidlist
        old.stop()
        maildir = old.maildir(USER)
        uidlist = maildir / "dovecot-uidlist"
        lines = uidlist.read_text().splitlines()
        for index, line in enumerate(lines[1:], 1):
            uid = int(line.split()[0])
            if uid in orders:
                lines[index] = line.replace(" :", f" O{orders[uid]} :", 1)
        uidlist.write_text("\n".join(lines) + "\n")
        for index in maildir.glob("dovecot.index*"):  # so it reads the uidlist again
            index.unlink()
        old.start()
        before = _look(old.port)
        lab = _lab(tmp_path)
        assert _import(lab, "--dovecot", str(maildir)).startswith(f"{USER}: 5 imported")
        again = _admin(lab, "import", "--dovecot", str(maildir), USER)
        assert again.stdout == f"{USER}: 0 imported, 5 already there, 0 skipped\n".encode()
    # Dovecot's order: O 1 (UID 3), the O 7 tie in UID order (1, 5), then 2 and 4
    subjects = [next(x for x in m if x.startswith(b"Subject:")) for m in before.messages]
    assert subjects == [b"Subject: message %d" % n for n in (3, 1, 5, 2, 4)]
    _check_served(lab, before)


def test_a_corrupt_uidlist_stops_the_import_and_changes_nothing(tmp_path: Path) -> None:
    with running_dovecot({USER: PASSWORD}, MAILDIR) as old:
        for number in (1, 2, 3):
            old.deliver(USER, _message(number))
        _look(old.port)  # Dovecot writes its uidlist
        uidlist = old.maildir(USER) / "dovecot-uidlist"
        lines = uidlist.read_text().splitlines()
        lines[2] = lines[2].replace(" :", " ", 1)  # the UID 2 line loses its file name
        uidlist.write_text("\n".join(lines) + "\n")
        lab = _lab(tmp_path)
        target = lab.root / "spool"
        untouched = _tree(target)
        done = _admin(lab, "import", "--dovecot", str(old.maildir(USER)), USER)
        assert done.returncode == 65, done.stderr  # EX_DATAERR: nothing was written
        assert done.stdout == b""
        assert (
            f"import refused: {uidlist}:3: not '<uid> [ext...] :<filename>'".encode() in done.stderr
        ), done.stderr
        assert _tree(target) == untouched


# --- mbox -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "with_xuidl", "args"),
    [
        ("", False, ()),  # %08Xu%08Xv of the X-UID and X-IMAPbase headers Dovecot wrote
        ("pop3_reuse_xuidl = yes\n", True, ("--xuidl",)),
        ("", True, ()),  # X-UIDL headers Dovecot did not serve (its default)
        ("", True, ("--no-xuidl",)),
        ("pop3_uidl_format = %v.%u\n", False, ("--uidl-format", "%v.%u")),
    ],
    ids=["x-uid", "x-uidl", "x-uidl-ignored", "x-uidl-ignored-as-asked", "custom"],
)
def test_mbox_moves_without_a_download(
    tmp_path: Path, settings: str, with_xuidl: bool, args: tuple[str, ...]
) -> None:
    with running_dovecot({USER: PASSWORD}, MBOX, settings) as old:
        for number in range(1, 6):
            extra = b"X-UIDL: old-popper-%d\n" % number if with_xuidl else b""
            old.deliver(USER, _message(number, extra))
        fetch = _fetch_all_from_dovecot(tmp_path, old, 5)
        before = _look(old.port)
        served_xuidl = [line.split()[1].startswith(b"old-popper-") for line in before.uidl]
        assert served_xuidl == ["--xuidl" in args] * 5
        lab = _lab(tmp_path)
        mbox = old.mbox(USER)
        untouched = mbox.read_bytes()
        assert b"X-UID: " in untouched and b"Content-Length: " in untouched
        assert _import(lab, "--mbox", str(mbox), *args) == (
            f"{USER}: 5 imported, 0 already there, 0 skipped\n"
        )
        assert _import(lab, "--mbox", str(mbox), *args) == (
            f"{USER}: 0 imported, 5 already there, 0 skipped\n"
        )
        assert mbox.read_bytes() == untouched
    _switch_and_check(tmp_path, lab, fetch, before)


@pytest.mark.parametrize(
    "mbox",
    [
        # a body line beginning "From " after an empty line, with no date: no separator
        b"From alice@example.com Thu Nov  2 10:00:00 2023\nSubject: one\n\nHello\n\n"
        b"From the desk of Bob: greetings\nregards\n\n"
        b"From bob@example.com Thu Nov  2 11:00:00 2023\nSubject: two\n\nsecond\n",
        # a From_ line with its sender and date, with no empty line before it: a separator;
        # the line end before it and the file's last are the separators'
        b"From a@b Thu Nov  2 10:00:00 2023\nSubject: one\n\nHello\n"
        b"From b@b Thu Nov  2 11:00:00 2023\nSubject: two\n\nsecond\n",
        b"From a@b Thu, 2 Nov 2023 10:00:00\r\nSubject: one\r\n\r\nFrom me, hi\r\n\r\n"
        b"From b@b  Thu Nov 2 11:00 CET 2023\r\nSubject: two\r\n\r\nsecond\r\n\r\n",
    ],
    ids=["from-the-desk", "no-empty-line", "other-dates-crlf"],
)
def test_an_mbox_splits_where_dovecot_splits_it(tmp_path: Path, mbox: bytes) -> None:
    """Found probing: a body line beginning "From " after an empty line split a message
    (and the report named a message Dovecot never had), and a real From_ line without an
    empty line before it did not. Dovecot (mbox_from_parse) is the judge."""
    with running_dovecot({USER: PASSWORD}, MBOX) as old:
        (old.home(USER) / "mail").mkdir(exist_ok=True)
        os.chown(old.home(USER) / "mail", MAIL_UID, MAIL_GID)
        old.mbox(USER).write_bytes(mbox)
        os.chown(old.mbox(USER), MAIL_UID, MAIL_GID)
        before = _look(old.port)  # Dovecot writes X-UID headers into the mbox
        assert len(before.uidl) == 2
        lab = _lab(tmp_path)
        done = _admin(lab, "import", "--mbox", str(old.mbox(USER)), USER)
        assert (done.returncode, done.stderr) == (0, b"")
    _check_served(lab, before)


# --- an import killed part way, then resumed -------------------------------------------


BULK = 300  # the import takes seconds (3 fsyncs a message): the kill lands after 20


def _kill_part_way(lab: Lab, args: tuple[str, ...], total: int) -> int:
    """Start a real import, SIGKILL it once some messages are in and before all are;
    returns how many were in."""
    sidecar = lab.maildir(USER) / "pop3d-uidl"
    process = subprocess.Popen(
        [*ADMIN, "-C", str(lab.config), "import", *args, USER],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if sidecar.exists() and sidecar.read_bytes().count(b"\n") >= 20:
                break
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, process.stderr
    copied = len(lab.messages(USER))
    assert 0 < copied < total, copied
    return copied


def _bulk_message(number: int) -> bytes:
    return _message(1).replace(b"message 1", b"bulk %d" % number) + b"x" * 2000 + b"\n"


@pytest.mark.slow
def test_a_killed_maildir_import_resumes_without_duplicates(tmp_path: Path) -> None:
    with running_dovecot({USER: PASSWORD}, MAILDIR) as old:
        new = old.maildir(USER) / "new"
        old.deliver(USER, _message(1))  # Dovecot makes the Maildir
        # the bulk as another MDA would leave it in new/ (dovecot-lda takes ~10 ms each)
        for number in range(2, BULK + 1):
            path = new / f"1700000000.M{number}P1.bulk"
            path.write_bytes(_bulk_message(number))
            os.chown(path, MAIL_UID, MAIL_GID)
        before = _look(old.port)  # Dovecot gives them UIDs in its uidlist
        assert len(before.uidl) == BULK
        lab = _lab(tmp_path)
        args = ("--dovecot", str(old.maildir(USER)))
        copied = _kill_part_way(lab, args, BULK)
        rest = _import(lab, *args)
        assert rest == f"{USER}: {BULK - copied} imported, {copied} already there, 0 skipped\n"
    _check_served(lab, before)


@pytest.mark.slow
def test_a_killed_mbox_import_resumes_without_duplicates(tmp_path: Path) -> None:
    with running_dovecot({USER: PASSWORD}, MBOX) as old:
        old.deliver(USER, _message(1))
        with old.mbox(USER).open("ab") as mbox:  # appended as another MDA would
            for number in range(2, BULK + 1):
                mbox.write(b"From sender@dovecot.test  Thu Nov  2 10:00:00 2023\n")
                mbox.write(_bulk_message(number).replace(b"\nFrom ", b"\n>From ") + b"\n")
        before = _look(old.port)  # Dovecot writes X-UID headers into the mbox
        assert len(before.uidl) == BULK
        lab = _lab(tmp_path)
        args = ("--mbox", str(old.mbox(USER)))
        copied = _kill_part_way(lab, args, BULK)
        rest = _import(lab, *args)
        assert rest == f"{USER}: {BULK - copied} imported, {copied} already there, 0 skipped\n"
    _check_served(lab, before)


def _check_served(lab: Lab, before: Seen) -> None:
    assert len(lab.messages(USER)) == len(before.uidl)
    server = start_server(lab)
    try:
        after = _look(server.port)
    finally:
        server.stop()
    assert after.uidl == before.uidl
    assert after.listing == before.listing
    assert after.messages == before.messages


# --- every user at once ---------------------------------------------------------------


def _look_as(port: int, user: str, password: str) -> list[bytes]:
    client = poplib.POP3("127.0.0.1", port, timeout=30)
    try:
        client.user(user)
        client.pass_(password)
        return client.uidl()[1]
    finally:
        client.quit()


def test_import_all_users_from_a_template(tmp_path: Path) -> None:
    users = {USER: PASSWORD, "dave": "dave-pw"}
    with running_dovecot(users, MAILDIR) as old:
        for number in (1, 2, 3):
            old.deliver(USER, _message(number))
        old.deliver("dave", _message(4))
        before = {user: _look_as(old.port, user, password) for user, password in users.items()}
        lab = Lab(tmp_path / "lab", users={**users, "erin": "no-mail"}).create()
        template = str(old.root / "home" / "%u" / "Maildir")
        for wrong in ((USER, "--all"), ()):
            refused = _admin(lab, "import", "--dovecot", template, *wrong)
            assert refused.returncode == 64, refused.stderr
            assert b"name one USER, or --all" in refused.stderr
        refused = _admin(lab, "import", "--dovecot", str(old.maildir(USER)), "--all")
        assert refused.returncode == 64 and b"names no user (%u or %n)" in refused.stderr
        refused = _admin(lab, "import", "--mbox", "/var/mail/%u%x", "--all")
        assert refused.returncode == 64 and b"unknown %x" in refused.stderr, refused.stderr
        done = _admin(lab, "import", "--dovecot", template, "--all")
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode().splitlines() == [
            f"{USER}: 3 imported, 0 already there, 0 skipped",
            "dave: 1 imported, 0 already there, 0 skipped",
            f"erin: nothing at {old.root / 'home' / 'erin' / 'Maildir'}",
        ]
        # one user's import stops (a corrupt uidlist): reported, the others go on, exit 65
        (old.maildir("dave") / "dovecot-uidlist").write_text("3 V1 N2\nx :y\n")
        again = _admin(lab, "import", "--dovecot", template, "--all")
        assert again.returncode == 65, again.stderr
        assert f"{USER}: 0 imported, 3 already there, 0 skipped" in again.stdout.decode()
        assert b"import refused: " in again.stderr and b"dovecot-uidlist:2:" in again.stderr
    server = start_server(lab)
    try:
        for user, password in users.items():
            assert _look_as(server.port, user, password) == before[user], user
    finally:
        server.stop()
