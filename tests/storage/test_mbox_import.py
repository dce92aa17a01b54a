"""pop3d-admin import --mbox (issue 14): an mbox moves to pop3d with X-UIDL honoured and
every other message given a UIDL derived from its bytes; ">From " unescaped as mboxrd; the
source untouched; a second run adds nothing; a message that does not parse is skipped."""

from __future__ import annotations

import hashlib
import poplib
import subprocess
import sys
from pathlib import Path

from pop3d.storage.maildir import MaildirStore
from pop3d.storage.mbox_import import import_mbox, messages
from tests.support.lab import Lab, start_server

ADMIN = [sys.executable, "-m", "pop3d.cli.admin"]

ONE = b"X-UIDL: old-uidl-1\nStatus: RO\nSubject: one\n\nfirst\n"
TWO = b"Subject: two\n\nFrom the top (mboxrd escaped)\n>From quoted\nmid From stays\n"
TWO_STORED = b"Subject: two\n\n>From the top (mboxrd escaped)\n>>From quoted\nmid From stays\n"
THREE = b"X-UIDL: not valid\nX-Status: D\nSubject: three\r\n\r\ncrlf\r\n"
FOUR = b"X-UIDL:\n old-uidl-1\nSubject: four, its X-UIDL taken by one\n\nbody\n"
MESSAGES = [ONE, TWO, THREE, FOUR]
STORED = [ONE, TWO_STORED, THREE, FOUR]


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).hexdigest().encode()


EXPECTED_UIDLS = [b"old-uidl-1", _sha(TWO), _sha(THREE), _sha(FOUR)]


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


def test_mboxrd_parsing(tmp_path: Path) -> None:
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
    result = _admin(lab, "import", "--mbox", str(source), "erin")
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
        for number, data in enumerate(MESSAGES, 1):
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
    report = import_mbox(source, store, "fred", report=lines.append)
    assert (report.imported, report.present) == (2, 0)
    assert len(report.skipped) == 1 and "message 2" in report.skipped[0]
    assert lines and "header does not parse" in lines[0]
    _mbox(tmp_path, [ONE, broken, TWO_STORED, THREE])  # new mail arrived in the mbox
    again = import_mbox(source, store, "fred")
    assert (again.imported, again.present, len(again.skipped)) == (1, 2, 1)
    drop = store.open("fred")
    assert drop.uids == ("old-uidl-1", _sha(TWO).decode(), _sha(THREE).decode())
    drop.close()
