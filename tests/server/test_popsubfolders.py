"""popsubfolders (Cyrus's ``user+folder`` logins, issue 14) against a real pop3d-master: a
login as ``alice+work`` is alice (her password, her name in the audit log, her login limit)
opening the Maildir++ folder ``.work`` of her Maildir, with USER/PASS, APOP and AUTH; a
folder that does not exist answers as Cyrus does and leaves the session in AUTHORIZATION;
names that would leave the Maildir are invalid user names; without the option
``alice+work`` is an unknown user like any other; fetchmail reads a folder."""

from __future__ import annotations

import base64
import poplib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pop3d.auth.identity import IdentityRules, split_folder, valid_folder
from tests.interop.conftest import run
from tests.interop.test_fetchmail import FETCHED, Fetchmail
from tests.support.lab import Lab, Server, start_server

TIMEOUT = 10
POP3TEST = "/usr/lib/cyrus/bin/pop3test"
LOCKED = b"+OK Mailbox locked and ready SESSIONID=<"
NO_FOLDER = b"-ERR [SYS/TEMP] Unable to open maildrop: Mailbox does not exist"
INVALID_NAME = b"-ERR [AUTH] Invalid user name"
WORK = [  # the messages of alice's folder .work, in delivery order
    ("1800000001.M1P1.work", b"Subject: work one\n\nfirst in the folder\n"),
    ("1800000002.M2P1.work", b"Subject: work two\n\nsecond in the folder\n"),
]


def _folder(lab: Lab, user: str, name: str, messages: list[tuple[str, bytes]]) -> Path:
    folder = lab.maildir(user) / f".{name}"
    for sub in ("tmp", "new", "cur"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "maildirfolder").touch()
    for file_name, data in messages:
        (folder / "new" / file_name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    lab = Lab(
        tmp_path_factory.mktemp("subfolders") / "lab",
        extra_config=(
            "popsubfolders: yes\nvirtdomains: userid\nmaxlogins_per_user: 2\n"
            # pop3test puts the host it dials in DIGEST-MD5's digest-uri
            "servername: localhost\nsasl_mech_list: SCRAM-SHA-256 DIGEST-MD5 CRAM-MD5 PLAIN\n"
        ),
    ).create()
    lab.set_password("dora@example.org", "explorer")
    running = start_server(lab)
    yield running
    running.stop()


@pytest.fixture
def lab(server: Server) -> Lab:
    for user in server.lab.users:
        server.lab.reset_maildrop(user)
    _folder(server.lab, "alice", "work", WORK)
    return server.lab


def _connect(server: Server) -> poplib.POP3:
    return poplib.POP3("127.0.0.1", server.port, timeout=TIMEOUT)


def _uidls(pop: poplib.POP3) -> list[bytes]:
    return [line.split()[1] for line in pop.uidl()[1]]


def _expect_error(text: bytes, call: object, *args: object) -> None:
    assert callable(call)
    with pytest.raises(poplib.error_proto) as caught:
        call(*args)
    assert caught.value.args == (text,)


def _log_since(server: Server, mark: int) -> str:
    with server.log.open("rb") as handle:
        handle.seek(mark)
        return handle.read().decode(errors="replace")


def test_user_pass_opens_the_folder_as_the_user(server: Server, lab: Lab) -> None:
    mark = server.log.stat().st_size
    pop = _connect(server)
    try:
        assert pop.user("alice+work") == b"+OK User name accepted, password please"
        assert pop.pass_("wonderland").startswith(LOCKED)
        assert pop.stat() == (2, sum(len(data) + data.count(b"\n") for _n, data in WORK))
        assert _uidls(pop) == [name.encode() for name, _data in WORK]
        assert b"\r\n".join(pop.retr(2)[1]) + b"\r\n" == WORK[1][1].replace(b"\n", b"\r\n")
        assert pop.dele(1).startswith(b"+OK")
        assert pop.quit().startswith(b"+OK")
    finally:
        pop.close()
    # the folder lost its message; the INBOX is untouched
    assert [p.name for p in (lab.maildir("alice") / ".work" / "new").iterdir()] == [WORK[1][0]]
    assert len(lab.messages("alice")) == 7
    log = _log_since(server, mark)
    assert re.search(r"login: \S+ \[\S+\] alice plaintext User logged in .*folder work", log), log
    assert "alice+work" not in log


def test_apop_and_auth_plain(server: Server, lab: Lab) -> None:
    pop = _connect(server)
    try:
        assert pop.apop("alice+work", "wonderland").startswith(LOCKED)
        assert _uidls(pop) == [name.encode() for name, _data in WORK]
    finally:
        pop.quit()
    for authcid, authzid in (("alice+work", ""), ("alice", "alice+work")):
        pop = _connect(server)
        try:
            token = base64.b64encode(f"{authzid}\0{authcid}\0wonderland".encode()).decode()
            assert pop._shortcmd(f"AUTH PLAIN {token}").startswith(LOCKED)
            assert _uidls(pop) == [name.encode() for name, _data in WORK], (authcid, authzid)
        finally:
            pop.quit()


@pytest.mark.interop
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "DIGEST-MD5", "CRAM-MD5"])
def test_cyrus_pop3test_authenticates_into_the_folder(
    server: Server, lab: Lab, mechanism: str
) -> None:
    """Cyrus's own client (libsasl2), as a Cyrus site's users log in to a folder."""
    args = ["-p", str(server.port), "-m", mechanism, "-a", "alice+work", "-u", "alice+work"]
    done = run([POP3TEST, *args, "-w", "wonderland", "localhost"], input=b"STAT\r\nQUIT\r\n")
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert "Authenticated." in out, out
    size = sum(len(data) + data.count(b"\n") for _n, data in WORK)
    assert f"+OK 2 {size}" in out, out


def test_each_folder_has_its_own_lock_and_the_users_limit(server: Server, lab: Lab) -> None:
    inbox, work, again, third = (_connect(server) for _ in range(4))
    try:
        inbox.user("alice")
        assert inbox.pass_("wonderland").startswith(LOCKED)
        work.user("alice+work")
        assert work.pass_("wonderland").startswith(LOCKED)  # not the INBOX's lock
        assert len(_uidls(inbox)) == 7 and len(_uidls(work)) == 2
        assert not set(_uidls(inbox)) & set(_uidls(work))  # UIDLs per folder
        # maxlogins_per_user: 2 counts alice, whatever folder she opened
        third.user("alice+work")
        _expect_error(
            b"-ERR [IN-USE] Too many open sessions for alice (2 of 2), try again later",
            third.pass_,
            "wonderland",
        )
        inbox.quit()
        again.user("alice+work")
        _expect_error(
            b"-ERR [IN-USE] Maildrop is locked by another session", again.pass_, "wonderland"
        )
    finally:
        for pop in (work, again, third):
            pop.close()


def test_a_missing_folder_answers_as_cyrus_and_the_session_goes_on(
    server: Server, lab: Lab
) -> None:
    pop = _connect(server)
    try:
        pop.user("alice+nowhere")
        _expect_error(NO_FOLDER, pop.pass_, "wonderland")
        # back in AUTHORIZATION: a good login works on the same connection
        assert pop.user("alice") == b"+OK User name accepted, password please"
        assert pop.pass_("wonderland").startswith(LOCKED)
    finally:
        pop.quit()
    assert not (lab.maildir("alice") / ".nowhere").exists()  # never created
    # a wrong password for a folder is a failed login, nothing about the folder
    pop = _connect(server)
    try:
        pop.user("alice+nowhere")
        _expect_error(b"-ERR [AUTH] Invalid login", pop.pass_, "not hers")
    finally:
        pop.close()


def test_a_maildir_linked_to_another_users_opens_none_of_its_folders(
    server: Server, lab: Lab
) -> None:
    """alice with her Maildir a link to bob's: ``alice+work`` opened bob's ``.work`` (the
    link was no longer the path's last component) and DELE removed bob's mail at QUIT
    (found probing). Refused now as her Maildir is: [SYS/TEMP], nothing of bob's touched."""
    bobs = _folder(lab, "bob", "work", [("1800000009.M9P1.bob", b"Subject: bob's\n\nbob\n")])
    alices = lab.maildir("alice")
    alices.rename(alices.with_name("Maildir.real"))
    alices.symlink_to(lab.maildir("bob"))
    try:
        for name in ("alice+work", "alice"):
            pop = _connect(server)
            try:
                pop.user(name)
                _expect_error(b"-ERR [SYS/TEMP] Unable to open maildrop", pop.pass_, "wonderland")
            finally:
                pop.quit()
    finally:
        alices.unlink()
        alices.with_name("Maildir.real").rename(alices)
    assert [p.name for p in (bobs / "new").iterdir()] == ["1800000009.M9P1.bob"]


def test_a_plus_without_a_folder_is_the_inbox(server: Server, lab: Lab) -> None:
    pop = _connect(server)
    try:
        pop.user("alice+")
        assert pop.pass_("wonderland").startswith(LOCKED)
        assert len(_uidls(pop)) == 7
    finally:
        pop.quit()


@pytest.mark.parametrize(
    "name",
    ["alice+../x", "alice+.", "alice+..", "alice+a/b", "alice+.work", "alice+work.", "alice+a\\b"],
)
def test_names_that_would_leave_the_maildir_are_invalid(
    server: Server, lab: Lab, name: str
) -> None:
    pop = _connect(server)
    try:
        _expect_error(INVALID_NAME, pop.user, name)
        _expect_error(b"-ERR [AUTH] Invalid login", pop.apop, name, "wonderland")
        token = base64.b64encode(f"\0{name}\0wonderland".encode()).decode()
        _expect_error(b"-ERR [AUTH] Invalid login", pop._shortcmd, f"AUTH PLAIN {token}")
    finally:
        pop.close()


def test_a_nul_in_the_folder_is_refused(server: Server, lab: Lab) -> None:
    pop = _connect(server)
    try:
        with pytest.raises(poplib.error_proto) as caught:
            pop._shortcmd("USER alice+wo\0rk")
        assert caught.value.args[0].startswith(b"-ERR "), caught.value.args
        assert pop.user("alice") == b"+OK User name accepted, password please"
    finally:
        pop.close()


def test_virtdomains_user_plus_folder_at_domain(server: Server, lab: Lab) -> None:
    _folder(lab, "dora@example.org", "travel", [("1800000003.M3P1.trip", b"Subject: t\n\nx\n")])
    pop = _connect(server)
    try:
        pop.user("dora+travel@example.org")
        assert pop.pass_("explorer").startswith(LOCKED)
        assert _uidls(pop) == [b"1800000003.M3P1.trip"]
    finally:
        pop.quit()
    shutil.rmtree(lab.maildir("dora@example.org"))


def test_without_the_option_a_plus_name_is_an_unknown_user(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab").create()
    _folder(lab, "alice", "work", WORK)
    running = start_server(lab)
    try:
        answers = []
        for name in ("alice+work", "nobody"):
            pop = poplib.POP3("127.0.0.1", running.port, timeout=TIMEOUT)
            try:
                answers.append(pop.user(name))
                with pytest.raises(poplib.error_proto) as caught:
                    pop.pass_("wonderland")
                answers.append(caught.value.args[0])
            finally:
                pop.close()
        assert answers[:2] == answers[2:]
        assert answers[1] == b"-ERR [AUTH] Invalid login"
    finally:
        running.stop()


@pytest.mark.interop
def test_fetchmail_reads_a_folder(tmp_path: Path, server: Server, lab: Lab) -> None:
    fetch = Fetchmail(tmp_path / "fm", "127.0.0.1", server.port, "alice+work", "wonderland")
    result = fetch("-p", "POP3", "--auth", "password", "--sslproto", "", "--uidl", "--keep")
    assert result.code == FETCHED, result.log
    assert "2 messages for alice+work at 127.0.0.1" in result.log
    for _name, data in WORK:
        assert data in result.delivered
    ids = fetch.ids.read_text()
    assert all(f"alice+work@127.0.0.1 {name}" in ids for name, _data in WORK), ids


def test_split_folder() -> None:
    on = IdentityRules(subfolders=True)
    assert split_folder("alice+work", on) == ("alice", "work")
    assert split_folder(b"alice+Work.Old", on) == ("alice", "Work.Old")  # case kept
    assert split_folder("alice+work@example.org", on) == ("alice@example.org", "work")
    assert split_folder("alice+", on) == ("alice", None)
    assert split_folder("alice", on) == ("alice", None)
    assert split_folder(b"alice+\xff", on) is None
    for bad in ("alice+.", "alice+..", "alice+../x", "alice+a/b", "alice+\0", "alice+a..b"):
        assert split_folder(bad, on) is None, bad
    assert split_folder("alice+work", IdentityRules()) == ("alice+work", None)
    assert not valid_folder("x" * 255) and valid_folder("x" * 254)
