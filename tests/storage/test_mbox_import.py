"""pop3d-admin import --mbox (issue 14): an mbox moves to pop3d with X-UIDL honoured, else
the UIDL Dovecot made of X-UID, else one derived from its bytes; the body as stored (">From "
not unescaped, as Dovecot serves it), Content-Length honoured; the mbox bookkeeping headers
dropped; the source untouched; a second run adds nothing; a message that does not parse is
skipped."""

from __future__ import annotations

import hashlib
import io
import poplib
import subprocess
import sys
from pathlib import Path

from pop3d.storage.maildir import MaildirStore
from pop3d.storage.mbox_import import import_mbox, messages
from tests.support.lab import Lab, start_server

ADMIN = [sys.executable, "-m", "pop3d.cli.admin"]

ONE = b"X-UIDL: old-uidl-1\nStatus: RO\nSubject: one\n\nfirst\n"
TWO = b"Subject: two\n\n>From the top (escaped)\n>>From quoted\nmid From stays\n"
TWO_STORED = TWO  # served as stored: nothing is unescaped
THREE = b"X-UIDL: not valid\nX-Status: D\nSubject: three\r\n\r\ncrlf\r\n"
FOUR = b"X-UIDL:\n old-uidl-1\nSubject: four, its X-UIDL taken by one\n\nbody\n"
MESSAGES = [ONE, TWO, THREE, FOUR]
STORED = [ONE, TWO_STORED, THREE, FOUR]
# What the old server served and pop3d serves: without the mbox bookkeeping fields
SERVED = [
    b"X-UIDL: old-uidl-1\nSubject: one\n\nfirst\n",
    TWO,
    b"X-UIDL: not valid\nSubject: three\r\n\r\ncrlf\r\n",
    FOUR,
]


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).hexdigest().encode()


EXPECTED_UIDLS = [b"old-uidl-1", _sha(TWO), _sha(SERVED[2]), _sha(FOUR)]


def _mbox(root: Path, stored: list[bytes]) -> Path:
    path = root / "mail" / "erin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"".join(
            b"From sender@example.org Thu Nov  2 10:00:0%d 2023\n" % n + data + b"\n"
            for n, data in enumerate(stored)
        )
    )
    return path


def _admin(lab: Lab, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*ADMIN, "-C", str(lab.config), *args], capture_output=True, timeout=60, check=False
    )


def test_mbox_parsing(tmp_path: Path) -> None:
    path = _mbox(tmp_path, STORED)
    with path.open("rb") as handle:
        found = list(messages(handle))
    assert [data for _sep, data in found] == MESSAGES
    assert found[0][0].startswith(b"From sender@example.org")


def test_import_then_uidl_and_retr_over_a_real_server(lab: Lab) -> None:
    source = _mbox(lab.root, STORED)
    before = source.read_bytes()
    lab.reset_maildrop("erin")
    lab.set_password("erin", "secret")
    result = _admin(lab, "import", "--mbox", str(source), "--xuidl", "erin")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"erin: 4 imported, 0 already there, 0 skipped\n"
    again = _admin(lab, "import", "--mbox", str(source), "erin")
    assert again.stdout == b"erin: 0 imported, 4 already there, 0 skipped\n", again.stderr
    assert source.read_bytes() == before  # the source is only read
    names = sorted(p.name for p in lab.messages("erin"))
    assert len(names) == 4
    assert sum(n.endswith(":2,S") for n in names) == 1  # Status: RO
    assert sum(n.endswith(":2,T") for n in names) == 1  # X-Status: D
    server = start_server(lab)
    try:
        client = poplib.POP3("127.0.0.1", server.port, timeout=30)
        client.user("erin")
        client.pass_("secret")
        assert client.uidl()[1] == [b"%d %s" % (n, u) for n, u in enumerate(EXPECTED_UIDLS, 1)]
        for number, data in enumerate(SERVED, 1):
            wire = b"\r\n".join(client.retr(number)[1])
            assert wire == data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").rstrip(b"\r\n")
        client.quit()
    finally:
        server.stop()


def test_an_unparsable_message_is_skipped_and_a_later_one_added(tmp_path: Path) -> None:
    broken = b"no header here\n\nbody\n"
    source = _mbox(tmp_path, [ONE, broken, TWO_STORED])
    store = MaildirStore("%p/%u/Maildir", str(tmp_path / "spool"))
    lines: list[str] = []
    report = import_mbox(source, store, "fred", report=lines.append, reuse_xuidl=True)
    assert (report.imported, report.present) == (2, 0)
    assert len(report.skipped) == 1 and "message 2" in report.skipped[0]
    assert lines and "header does not parse" in lines[0]
    _mbox(tmp_path, [ONE, broken, TWO_STORED, THREE])  # new mail arrived in the mbox
    again = import_mbox(source, store, "fred", reuse_xuidl=True)
    assert (again.imported, again.present, len(again.skipped)) == (1, 2, 1)
    drop = store.open("fred")
    assert drop.uids == ("old-uidl-1", _sha(TWO).decode(), _sha(SERVED[2]).decode())
    drop.close()


def test_mail_deleted_since_is_not_brought_back_whatever_the_uidl_options(tmp_path: Path) -> None:
    """Found probing: a second run judged what was there by the UIDLs the target served, and
    UPDATE removes those of the messages it deletes: the mail came back. The record names a
    message by its bytes, so a run with other UIDL options does not copy it again either."""
    source = _mbox(tmp_path, [*STORED, ONE])  # ONE twice: two messages, the same bytes
    store = MaildirStore("%p/%u/Maildir", str(tmp_path / "spool"))
    assert import_mbox(source, store, "ida").imported == 5
    drop = store.open("ida")
    uids = drop.uids
    assert drop.commit((0, 2, 4), None) == (3, 0)
    drop.close()
    for again in (
        import_mbox(source, store, "ida"),
        import_mbox(source, store, "ida", reuse_xuidl=True),
    ):
        assert (again.imported, again.present) == (0, 5)
    drop = store.open("ida")
    assert drop.uids == (uids[1], uids[3])
    drop.close()


def test_x_uidl_is_not_taken_unless_asked(lab: Lab) -> None:
    """Found probing: X-UIDL was taken by default, where Dovecot's default does not take it,
    and any sender can write one: one equal to the UIDL of a message the user already had
    made the import take the new message for it, never imported, hidden from the client."""
    lab.reset_maildrop("erin")
    lab.set_password("erin", "secret")
    store = MaildirStore("%p/%u/Maildir", str(lab.root / "spool"))
    there = store.deliver("erin", io.BytesIO(b"Subject: mine\n\nx\n")).name.partition(",")[0]
    forged = b"X-UIDL: " + there.encode() + b"\nSubject: forged\n\nhidden?\n"
    source = _mbox(lab.root, [forged])
    result = _admin(lab, "import", "--mbox", str(source), "erin")
    assert result.stdout == b"erin: 1 imported, 0 already there, 0 skipped\n", result.stderr
    server = start_server(lab)
    try:
        client = poplib.POP3("127.0.0.1", server.port, timeout=30)
        client.user("erin")
        client.pass_("secret")
        assert [line.split()[1] for line in client.uidl()[1]] == [_sha(forged), there.encode()]
        client.quit()
    finally:
        server.stop()


def test_content_length_bodies_hidden_headers_and_x_uid(tmp_path: Path) -> None:
    """As Dovecot writes an mbox: X-IMAPbase in the first message, X-UID, Status,
    X-Keywords and Content-Length in each, and a body "From " line not escaped."""
    body_one = b"para\n\nFrom here on, a body line\n"
    body_two = b"second\n"
    path = tmp_path / "mbox"
    path.write_bytes(
        b"From a@b  Thu Nov  2 10:00:00 2023\nSubject: one\nX-IMAPbase: 1700000000 0000000008\n"
        b"X-UID: 7   \nStatus: RO\nX-Keywords:   \nContent-Length: %d\n\n%s\n"
        b"From a@b  Thu Nov  2 10:00:01 2023\nSubject: two\nX-UID: 8\nContent-Length: 999\n"
        b"X-Status: D\n\n%s\n" % (len(body_one), body_one, body_two)
    )
    with path.open("rb") as handle:
        found = [data for _sep, data in messages(handle)]
    assert len(found) == 2  # the "From here on" line did not split message one
    assert found[0].endswith(b"\n\n" + body_one)
    assert found[1].endswith(b"\n\n" + body_two)  # a bogus length is not followed
    store = MaildirStore("%p/%u/Maildir", str(tmp_path / "spool"))
    assert import_mbox(path, store, "gina").imported == 2
    drop = store.open("gina")
    assert drop.uids == ("000000076553f100", "000000086553f100")
    stored = sorted(
        (p.name.partition(":")[2], p.read_bytes())
        for sub in ("new", "cur")
        for p in (store.path_for("gina") / sub).iterdir()
    )
    assert stored == [
        ("2,S", b"Subject: one\n\n" + body_one),
        ("2,T", b"Subject: two\n\n" + body_two),
    ]
    drop.close()
    # the site's own format, and X-UIDL headers the old site did not serve
    other = MaildirStore("%p/%u/Maildir", str(tmp_path / "other"))
    path.write_bytes(path.read_bytes().replace(b"Subject: two\n", b"Subject: two\nX-UIDL: u2\n"))
    assert import_mbox(path, other, "gina", uidl_format="%v.%u", reuse_xuidl=False).imported == 2
    drop = other.open("gina")
    assert drop.uids == ("1700000000.7", "1700000000.8")
    drop.close()


def test_the_pseudo_message_is_not_imported(tmp_path: Path) -> None:
    path = tmp_path / "mbox"
    path.write_bytes(
        b"From MAILER-DAEMON Thu Nov  2 10:00:00 2023\nSubject: DON'T DELETE THIS MESSAGE -- "
        b"FOLDER INTERNAL DATA\nX-IMAP: 1700000000 0000000003\n\npseudo\n\n"
        b"From a@b Thu Nov  2 10:00:01 2023\nSubject: real\nX-UID: 2\n\nbody\n"
    )
    store = MaildirStore("%p/%u/Maildir", str(tmp_path / "spool"))
    assert import_mbox(path, store, "hal").imported == 1
    drop = store.open("hal")
    assert drop.uids == ("000000026553f100",)
    drop.close()
