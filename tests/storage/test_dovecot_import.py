"""pop3d-admin import --dovecot (issue 14): a Dovecot Maildir with its dovecot-uidlist moves
to pop3d with every POP3 UIDL kept, byte for byte; the source is untouched; a second run
adds nothing; a message that cannot be read is reported and skipped."""

from __future__ import annotations

import hashlib
import io
import os
import poplib
import subprocess
import sys
from pathlib import Path

import pytest

from pop3d.storage.dovecot_import import ImportFailed, expand_format, import_dovecot, parse_uidlist
from pop3d.storage.maildir import MaildirStore
from tests.support.lab import Lab, start_server

ADMIN = [sys.executable, "-m", "pop3d.cli.admin"]
UIDVALIDITY = 1700000000  # 0x6553f100

MESSAGES = [  # uid, Dovecot file name (new/ or cur/ with flags), uidlist extensions, bytes
    (1, "cur/1699990001.M1P1.old,S=40,W=42:2,S", "W42", b"Subject: one\n\nfirst\n"),
    (2, "new/1699990002.M2P1.old,S=30", "W31 P1699990002.old-kept", b"Subject: two\n\nno eol"),
    (5, "cur/1699990005.M5P1.old:2,", "", b"Subject: five\r\n\r\ncrlf\r\n"),
    (17, "new/1699990017.M17P1.old", "P", b"Subject: seventeen\n\n" + bytes(range(256))),
]


def _dovecot_maildir(root: Path, orders: dict[int, str] | None = None) -> Path:
    """The Dovecot Maildir of MESSAGES; ``orders``: UID -> an O field's value to add."""
    source = root / "dovecot" / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (source / sub).mkdir(parents=True, exist_ok=True)
    lines = [f"3 V{UIDVALIDITY} N18 G3085f01b7f11094c501100008c4a11c1"]
    for uid, name, given, data in MESSAGES:
        ext = f"{given} O{orders[uid]}".strip() if orders and uid in orders else given
        (source / name).write_bytes(data)
        base = name.split("/", 1)[1].partition(":")[0]
        lines.append(f"{uid} {ext} :{base}" if ext else f"{uid} :{base}")
    (source / "dovecot-uidlist").write_text("\n".join(lines) + "\n")
    return source


# What Dovecot 2.3's pop3 served: P where set, else %08Xu%08Xv (lower-case hex).
EXPECTED_UIDLS = [
    b"000000016553f100",
    b"1699990002.old-kept",
    b"000000056553f100",
    b"000000116553f100",  # an empty P field means none
]


def _tree(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _admin(lab: Lab, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*ADMIN, "-C", str(lab.config), *args], input=stdin, capture_output=True, timeout=60
    )


def test_uidl_format_expansion() -> None:
    assert expand_format("%08Xu%08Xv", 1, 1700000000, "f", "g") == "000000016553f100"
    assert expand_format("%v.%u", 7, 42, "f", "g") == "42.7"
    assert expand_format("%f%%%Ug", 1, 2, "name", "abc") == "name%ABC"
    with pytest.raises(ValueError, match="only %u %v %f %g"):
        expand_format("%m", 1, 2, "f", "g")


def test_a_corrupt_uidlist_names_its_line() -> None:
    with pytest.raises(ImportFailed, match=r"uidlist:3: UID 2 is not above"):
        parse_uidlist("3 V1 N3\n2 :a\n2 :b\n", "uidlist")
    with pytest.raises(ImportFailed, match=r"uidlist:2: not '<uid>"):
        parse_uidlist("3 V1 N3\nx :a\n", "uidlist")
    with pytest.raises(ImportFailed, match="version '1'"):
        parse_uidlist("1 1 3\n", "uidlist")


def test_a_crlf_uidlist_and_a_file_listed_twice(tmp_path: Path) -> None:
    """Found probing: a uidlist with CRLF line ends had every file name end in CR (nothing
    found, every message skipped), and a file listed on two lines was copied twice. Dovecot
    keeps the later line's UID for it (maildir-uidlist.c), and so does the import."""
    source = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (source / sub).mkdir(parents=True)
    (source / "cur" / "1699990001.M1P1.old:2,S").write_bytes(b"Subject: a\n\nx\n")
    (source / "new" / "1699990002.M2P1.old").write_bytes(b"Subject: b\n\ny\n")
    (source / "dovecot-uidlist").write_bytes(
        b"3 V1700000000 N4 G0\r\n1 :1699990001.M1P1.old\r\n2 :1699990002.M2P1.old\r\n"
        b"3 :1699990001.M1P1.old\r\n"
    )
    store = MaildirStore("%p/%u/Maildir", str(tmp_path / "spool"))
    lines: list[str] = []
    report = import_dovecot(source, store, "ivy", report=lines.append)
    assert (report.imported, report.skipped) == (2, []), report
    assert len(lines) == 1 and "dovecot-uidlist:4: 1699990001.M1P1.old listed again" in lines[0]
    drop = store.open("ivy")
    assert drop.uids == ("000000026553f100", "000000036553f100")
    drop.close()


def test_import_then_uidl_over_a_real_server_byte_for_byte(lab: Lab) -> None:
    source = _dovecot_maildir(lab.root)
    before = _tree(source)
    lab.reset_maildrop("carol")
    lab.set_password("carol", "secret")
    result = _admin(lab, "import", "--dovecot", str(source), "carol")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"carol: 4 imported, 0 already there, 0 skipped\n"
    again = _admin(lab, "import", "--dovecot", str(source), "carol")
    assert again.stdout == b"carol: 0 imported, 4 already there, 0 skipped\n", again.stderr
    assert _tree(source) == before  # the source is only read
    assert len(lab.messages("carol")) == 4
    # flags kept: the seen message stays in cur/ with :2,S
    assert any(p.name.endswith(":2,S") for p in lab.messages("carol"))
    server = start_server(lab)
    try:
        client = poplib.POP3("127.0.0.1", server.port, timeout=30)
        client.user("carol")
        client.pass_("secret")
        uidls = client.uidl()[1]
        assert uidls == [b"%d %s" % (n, u) for n, u in enumerate(EXPECTED_UIDLS, 1)]
        for number, (_uid, _name, _ext, data) in enumerate(MESSAGES, 1):
            body = client.retr(number)[1]
            wire = b"\r\n".join(body)
            assert wire.rstrip(b"\r\n") == data.replace(b"\r\n", b"\n").replace(
                b"\n", b"\r\n"
            ).rstrip(b"\r\n")
        client.quit()
    finally:
        server.stop()
    # a later delivery lists after the imported ones, with its own UIDL
    store = MaildirStore("%p/%u/Maildir", str(lab.root / "spool"))
    assert _admin(lab, "deliver", "carol", stdin=b"Subject: new\n\nx\n").returncode == 0
    drop = store.open("carol")
    assert drop.uids[:4] == tuple(u.decode() for u in EXPECTED_UIDLS)
    assert len(drop.uids) == 5
    drop.close()


def test_mail_deleted_at_pop3d_is_not_brought_back_by_a_second_run(lab: Lab) -> None:
    """Found probing: a second run judged what was there by the target's files and
    pop3d-uidl, which UPDATE removes: the mail a user had deleted came back. The target
    keeps a record of what was imported (pop3d-imported)."""
    source = _dovecot_maildir(lab.root)
    lab.reset_maildrop("carol")
    lab.set_password("carol", "secret")
    assert _admin(lab, "import", "--dovecot", str(source), "carol").returncode == 0
    server = start_server(lab)
    try:
        client = poplib.POP3("127.0.0.1", server.port, timeout=30)
        client.user("carol")
        client.pass_("secret")
        client.dele(1)
        client.dele(3)
        client.quit()
        again = _admin(lab, "import", "--dovecot", str(source), "carol")
        assert again.stdout == b"carol: 0 imported, 4 already there, 0 skipped\n", again.stderr
        client = poplib.POP3("127.0.0.1", server.port, timeout=30)
        client.user("carol")
        client.pass_("secret")
        assert client.uidl()[1] == [b"1 " + EXPECTED_UIDLS[1], b"2 " + EXPECTED_UIDLS[3]]
        client.quit()
    finally:
        server.stop()
    # A Maildir imported before there was a record: what is there is recorded as found
    record = lab.maildir("carol") / "pop3d-imported"
    lines = record.read_text().splitlines()
    assert len(lines) == 4 and all(line.startswith("dovecot ") for line in lines)
    record.unlink()
    assert _admin(lab, "import", "--dovecot", str(source), "carol").stdout.startswith(
        b"carol: 2 imported, 2 already there"
    )
    assert sorted(record.read_text().splitlines()) == sorted(lines)


def test_an_import_killed_again_and_again_then_run_again_has_each_message_once(
    tmp_path: Path,
) -> None:
    """Killed (SIGKILL) at any point, a run leaves what it wrote whole; the next one copies
    each message it had not finished, once, with its UIDL; and the record of what was
    imported, written as the runs went, keeps what the user deleted since from coming
    back (it came back: found probing)."""
    source = tmp_path / "dovecot" / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (source / sub).mkdir(parents=True)
    lines = [f"3 V{UIDVALIDITY} N81 G0"]
    for uid in range(1, 81):
        (source / "new" / f"1699990000.M{uid}P1.old").write_bytes(b"Subject: %d\n\nx\n" % uid)
        lines.append(f"{uid} :1699990000.M{uid}P1.old")
    (source / "dovecot-uidlist").write_text("\n".join(lines) + "\n")
    store = MaildirStore("%p/%u/Maildir", str(tmp_path / "spool"))
    config = tmp_path / "imapd.conf"
    config.write_text(f"configdirectory: {tmp_path}/config\npartition-default: {tmp_path}/spool\n")
    command = [*ADMIN, "-C", str(config), "import", "--dovecot", str(source), "kim"]
    target = store.path_for("kim")
    for reached in (1, 15, 30, 45, 60, 75):
        running = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while running.poll() is None:
            if (target / "new").is_dir() and len(os.listdir(target / "new")) >= reached:
                running.kill()
                break
        running.wait()
    done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    drop = store.open("kim")
    expected = tuple(f"{uid:08x}6553f100" for uid in range(1, 81))
    assert drop.uids == expected
    assert drop.commit(tuple(range(0, 80, 2)), None) == (40, 0)  # the user deletes half
    drop.close()
    again = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert again.stdout == b"kim: 0 imported, 80 already there, 0 skipped\n", again.stderr
    drop = store.open("kim")
    assert drop.uids == expected[1::2]
    drop.close()


def test_exact_bytes_and_an_unreadable_message_is_skipped(lab: Lab) -> None:
    source = _dovecot_maildir(lab.root)
    os.unlink(source / "cur" / "1699990005.M5P1.old:2,")
    store = MaildirStore("%p/%u/Maildir", str(lab.root / "spool"))
    lines: list[str] = []
    report = import_dovecot(source, store, "dave", report=lines.append)
    assert (report.imported, report.present) == (3, 0)
    assert len(report.skipped) == 1 and "UID 5" in report.skipped[0], report.skipped
    assert lines and "no such file" in lines[0]
    copied = sorted(
        p.read_bytes() for sub in ("new", "cur") for p in (store.path_for("dave") / sub).iterdir()
    )
    assert copied == sorted(data for uid, _n, _e, data in MESSAGES if uid != 5)
    assert import_dovecot(source, store, "dave").imported == 0


def test_the_pop3_order_field() -> None:
    parsed = parse_uidlist(
        "3 V1 N6\n1 O2 :a\n2 :b\n3 W10 O1 P7 :c\n4 Oxyz :d\n5 O4294967295 :e\n", "uidlist"
    )
    # no field, one that is not a number, and the largest are what Dovecot gives "none"
    assert [e.pop3_order for e in parsed.entries] == [2, None, 1, None, None]
    assert parsed.entries[0].unique(1) == "1.A0000000002I0000000001V1.dovecot"
    assert parsed.entries[1].unique(1) == "1.I0000000002V1.dovecot"


def test_messages_with_a_pop3_order_list_first_by_it(tmp_path: Path) -> None:
    store = MaildirStore("%p/%u/Maildir", str(tmp_path / "spool"))
    # UIDs 1, 2, 5, 17: 17 and 2 have O 3, 5 has O 9, 1 none -> 2, 17, 5, 1
    source = _dovecot_maildir(tmp_path, {17: "3", 2: "3", 5: "9"})
    assert import_dovecot(source, store, "erin").imported == 4
    drop = store.open("erin")
    assert drop.uids == tuple(EXPECTED_UIDLS[i].decode() for i in (1, 3, 2, 0))
    drop.close()
    assert import_dovecot(source, store, "erin").present == 4


def test_an_import_from_before_pop3_orders_is_not_repeated(tmp_path: Path) -> None:
    """A mailbox imported by a pop3d that did not read O fields holds the messages under
    names without the order: importing again must not copy them a second time."""
    store = MaildirStore("%p/%u/Maildir", str(tmp_path / "spool"))
    source = _dovecot_maildir(tmp_path)
    assert import_dovecot(source, store, "fay").imported == 4
    with_orders = _dovecot_maildir(tmp_path / "again", {1: "2", 17: "1"})
    report = import_dovecot(with_orders, store, "fay")
    assert (report.imported, report.present) == (0, 4)
    # nor when the orders change between two runs
    changed = _dovecot_maildir(tmp_path / "changed", {1: "5", 5: "1"})
    assert import_dovecot(changed, store, "gus").imported == 4
    changed = _dovecot_maildir(tmp_path / "changed-again", {1: "1", 5: "5", 2: "9"})
    assert import_dovecot(changed, store, "gus").present == 4
    drop = store.open("gus")
    assert len(drop.uids) == 4
    drop.close()
    assert (
        len(list((store.path_for("fay") / "new").iterdir()))
        + len(list((store.path_for("fay") / "cur").iterdir()))
        == 4
    )


def test_update_prunes_the_kept_uidls_of_deleted_messages(tmp_path: Path) -> None:
    """pop3d-uidl is read whole at every open: UPDATE drops the lines of the messages it
    removed, the others keep their UIDLs, and the file goes with the last of them."""
    store = MaildirStore("%p/%u/Maildir", str(tmp_path / "spool"))
    source = _dovecot_maildir(tmp_path)
    assert import_dovecot(source, store, "hal").imported == 4
    sidecar = store.path_for("hal") / "pop3d-uidl"
    assert len(sidecar.read_text().splitlines()) == 4
    # A message delivered since, without a line, and an orphan line (an import killed
    # between its line and its message) are left as they are.
    with sidecar.open("a") as handle:
        handle.write("1699990099.orphan orphan-uidl\n")
    store.deliver("hal", io.BytesIO(b"Subject: new\n\nx\n"))
    drop = store.open("hal")
    uids = drop.uids
    assert uids[:4] == tuple(u.decode() for u in EXPECTED_UIDLS)
    assert drop.commit((1, 4), None) == (2, 0)  # the second imported one, the delivered one
    drop.close()
    lines = sidecar.read_text().splitlines()
    assert len(lines) == 4 and not any("old-kept" in line for line in lines)
    assert lines[-1] == "1699990099.orphan orphan-uidl"
    drop = store.open("hal")
    assert drop.uids == (uids[0], uids[2], uids[3])  # the others keep theirs
    assert drop.commit((0, 1, 2), None) == (3, 0)
    drop.close()
    assert sidecar.read_text() == "1699990099.orphan orphan-uidl\n"
    # Nothing imported left, nothing kept but the orphan: with it gone the file goes.
    sidecar.write_text("1699990099.orphan orphan-uidl\n" * 2)
    (store.path_for("hal") / "new" / "1699990099.orphan").write_bytes(b"Subject: o\n\n")
    drop = store.open("hal")
    assert drop.uids == ("orphan-uidl",)
    assert drop.commit((0,), None) == (1, 0)
    drop.close()
    assert not sidecar.exists()
