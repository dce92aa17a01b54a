"""pop3d-admin and pop3d-master command lines."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.lab import Lab, free_port, login_and_stat, stat_once_served

ADMIN = [sys.executable, "-m", "pop3d.cli.admin"]
MASTER = [sys.executable, "-m", "pop3d.cli.master"]


def admin(lab: Lab, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*ADMIN, "-C", str(lab.config), *args], input=stdin, capture_output=True, timeout=60
    )


def test_users_lists_names_and_schemes(lab: Lab) -> None:
    result = admin(lab, "users")
    assert result.returncode == 0
    schemes = b"ARGON2ID,PLAIN.B64,SCRAM-SHA-1,SCRAM-SHA-256,SCRAM-SHA-512"
    assert result.stdout == b"alice\t" + schemes + b"\nbob\t" + schemes + b"\n"


def test_passwd_set_and_delete(lab: Lab) -> None:
    assert admin(lab, "passwd", "Carol", stdin=b"s3cret\n").returncode == 0
    # canonical name: lower case; schemes: what the lab's config enables (APOP is on)
    assert b"carol\tARGON2ID,PLAIN.B64,SCRAM-SHA-256,SCRAM-SHA-512\n" in admin(lab, "users").stdout
    assert admin(lab, "passwd", "--no-legacy", "dave", stdin=b"s3cret\n").returncode == 0
    assert b"dave\tARGON2ID,SCRAM-SHA-256,SCRAM-SHA-512\n" in admin(lab, "users").stdout
    assert admin(lab, "passwd", "-d", "carol").returncode == 0
    missing = admin(lab, "passwd", "-d", "carol")
    assert missing.returncode == 67 and b"no such user 'carol'" in missing.stderr
    assert admin(lab, "passwd", "../x", stdin=b"pw\n").returncode == 65
    assert admin(lab, "passwd", "#x", stdin=b"pw\n").returncode == 65  # a comment line
    assert admin(lab, "passwd", "erin", stdin=b"\n").returncode == 65  # empty password


NOBODY = 65534  # Debian's nobody:nogroup


def test_passwd_as_root_keeps_the_credential_files_owner(lab: Lab) -> None:
    """The server reads the file as cyrus_user (mode 0600): rewritten by root as root's
    own, it would lock the server out of every password."""
    path = lab.credentials
    os.chown(path, NOBODY, NOBODY)
    assert admin(lab, "passwd", "carol", stdin=b"s3cret\n").returncode == 0
    assert admin(lab, "passwd", "-d", "bob").returncode == 0
    info = path.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (NOBODY, NOBODY, 0o600)
    assert Path(f"{path}.lock").stat().st_uid == NOBODY  # its own runs can take the lock
    assert b"carol\t" in admin(lab, "users").stdout


def test_passwd_as_root_gives_a_new_credential_file_to_cyrus_user(lab: Lab) -> None:
    path = lab.root / "fresh" / "deeper" / "pop3d.passwd"
    with lab.config.open("a") as config:
        config.write(f"credentials_file: {path}\ncyrus_user: nobody\n")
    assert admin(lab, "passwd", "carol", stdin=b"s3cret\n").returncode == 0
    for made in (path, path.parent, path.parent.parent):
        assert (made.stat().st_uid, made.stat().st_gid) == (NOBODY, NOBODY), made


@pytest.mark.parametrize("planted", ["symlink", "hard link"])
@pytest.mark.parametrize("at", ["lock", "file"])
def test_passwd_as_root_follows_nothing_the_server_s_account_planted(
    lab: Lab, planted: str, at: str
) -> None:
    """Found probing: the credential file's folder is the server account's (cyrus_user),
    and root's `passwd` opened `<file>.lock` following a link the account put there, and
    gave the link's target to it (with /etc/shadow as the target: root). Nor is the file
    itself read through a link (root would read what the link names). Refused, exit 78,
    the target untouched."""
    path = lab.credentials
    os.chown(path, NOBODY, NOBODY)
    os.chown(path.parent, NOBODY, NOBODY)
    target = lab.root / "roots-own"
    target.write_text("root secret\n")
    target.chmod(0o600)
    name = Path(f"{path}.lock") if at == "lock" else path
    name.unlink(missing_ok=True)
    if planted == "symlink":
        name.symlink_to(target)
    else:
        os.link(target, name)
    result = admin(lab, "passwd", "carol", stdin=b"s3cret\n")
    assert result.returncode == 78, result.stderr
    assert b"refusing" in result.stderr and b"Traceback" not in result.stderr
    info = target.stat()
    assert (info.st_uid, info.st_mode & 0o777) == (0, 0o600)
    assert target.read_text() == "root secret\n"


def test_passwd_that_cannot_write_says_why_without_a_traceback(lab: Lab) -> None:
    blocker = lab.root / "a-file"
    blocker.write_text("not a folder")
    with lab.config.open("a") as config:
        config.write(f"credentials_file: {blocker}/pop3d.passwd\n")
    result = admin(lab, "passwd", "carol", stdin=b"s3cret\n")
    assert result.returncode == 73, result.stderr
    assert result.stderr.startswith(b"pop3d-admin: cannot update "), result.stderr
    assert b"Traceback" not in result.stderr


def test_deliver(lab: Lab) -> None:
    before = len(lab.messages("bob"))
    assert admin(lab, "deliver", "bob", stdin=b"Subject: x\n\nhi\n").returncode == 0
    assert len(lab.messages("bob")) == before + 1
    unknown = admin(lab, "deliver", "nobody", stdin=b"x")
    assert unknown.returncode == 67


@pytest.mark.parametrize(
    "setting",
    [
        "sasl_pwcheck_method: saslauthd",
        "sasl_pwcheck_method: kerberos5",
        "sasl_mech_list: GSSAPI PLAIN",
        "sasl_keytab: /etc/pop.keytab",
        # one service's: its users log in without the file too
        "pop3s_sasl_pwcheck_method: saslauthd",
        "pop3s_sasl_mech_list: GSSAPI PLAIN",
    ],
)
def test_deliver_to_a_user_who_logs_in_without_the_credential_file(lab: Lab, setting: str) -> None:
    """Users saslauthd, the KDC or a Kerberos mechanism vouch for have no line in the
    credential file, and their mail is accepted: it was exit 67, and the MTA bounced it."""
    with lab.config.open("a") as config:
        config.write(setting + "\n")
    lab.credentials.unlink()  # such a site may have none at all
    delivered = admin(lab, "deliver", "dave", stdin=b"Subject: x\n\nhi\n")
    assert delivered.returncode == 0, delivered.stderr
    assert len(lab.messages("dave")) == 1
    refused = admin(lab, "deliver", "#x", stdin=b"Subject: x\n\nhi\n")
    assert refused.returncode == 65, refused.stderr  # still a name the rules accept


@pytest.mark.parametrize("setting", ["", "sasl_pwcheck_method: saslauthd\n"])
def test_deliver_after_double_dash_takes_the_user_literally(lab: Lab, setting: str) -> None:
    """The man page's Postfix line passes `deliver -- ${user}`: found probing, without the
    `--` a recipient named --help had deliver print its help, exit 0, the message lost.
    After it, --help is a name, and a name beginning with "-" names nobody (exit 65, also
    where any name saslauthd vouches for is accepted); a real user still delivers."""
    with lab.config.open("a") as config:
        config.write(setting)
    for name in ("--help", "-h", "-x"):
        refused = admin(lab, "deliver", "--", name, stdin=b"Subject: x\n\nhi\n")
        assert refused.returncode == 65, (name, refused.stdout, refused.stderr)
        assert refused.stdout == b""
    assert sorted(p.name for p in (lab.root / "spool").iterdir()) == ["alice", "bob"]
    before = len(lab.messages("alice"))
    delivered = admin(lab, "deliver", "--", "alice", stdin=b"Subject: x\n\nhi\n")
    assert delivered.returncode == 0, delivered.stderr
    assert len(lab.messages("alice")) == before + 1
    assert admin(lab, "passwd", "--", "-x", stdin=b"pw\n").returncode == 65


@pytest.mark.parametrize("name", ["demo+folder", "demo+", "demo+folder@example.org", "demo+.x"])
def test_deliver_refuses_a_name_popsubfolders_splits(lab: Lab, name: str) -> None:
    """Found probing: with users beyond the credential file, "demo+folder" was stored
    (exit 0) in a Maildir of its own that no login opens: logging in as demo+folder opens
    demo's folder .folder, demo+ demo's INBOX. Refused as no such user, as before users
    beyond the file were accepted, so the MTA bounces it; a plain name still delivers."""
    with lab.config.open("a") as config:
        config.write("sasl_pwcheck_method: saslauthd\npopsubfolders: yes\n")
    refused = admin(lab, "deliver", name, stdin=b"Subject: x\n\nhi\n")
    assert refused.returncode == 67, refused.stderr
    assert b"popsubfolders" in refused.stderr
    assert sorted(p.name for p in (lab.root / "spool").iterdir()) == ["alice", "bob"]
    assert admin(lab, "deliver", "demo", stdin=b"Subject: x\n\nhi\n").returncode == 0
    assert len(lab.messages("demo")) == 1


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (b"", b"the message is empty"),
        (b"Subject: x\n\nnul\0here\n", b"the message contains NUL octets"),
    ],
)
def test_deliver_refuses_what_no_client_should_be_served(
    lab: Lab, message: bytes, why: bytes
) -> None:
    """Found probing: an empty message, or one with NUL octets (RFC 5322 forbids them;
    Cyrus's lmtpd refuses them, 554 5.6.0), was stored and served as is. Refused for good
    (EX_DATAERR: the MTA bounces it rather than trying again), nothing left in tmp/ or new/."""
    before = len(lab.messages("bob"))
    result = admin(lab, "deliver", "bob", stdin=message)
    assert result.returncode == 65, result.stderr
    assert b"refused, not stored: " + why in result.stderr
    assert len(lab.messages("bob")) == before
    assert list((lab.maildir("bob") / "tmp").iterdir()) == []


def test_deliver_removes_deliveries_abandoned_in_tmp(lab: Lab) -> None:
    """Found probing: a delivery killed mid-way left its file in tmp/ for good. A delivery
    removes files in tmp/ unchanged for 36 hours (the Maildir convention), nothing
    younger, and never what a link points at."""
    tmp = lab.maildir("bob") / "tmp"
    old, young, target = tmp / "1.M1P1.dead", tmp / "2.M2P2.writing", lab.root / "elsewhere"
    for path in (old, young, target):
        path.write_bytes(b"Subject: x\n\npart")
    link = tmp / "3.M3P3.link"
    link.symlink_to(target)
    long_ago = time.time() - 37 * 3600
    for path in (old, target):
        os.utime(path, (long_ago, long_ago))
    os.utime(link, (long_ago, long_ago), follow_symlinks=False)
    assert admin(lab, "deliver", "bob", stdin=b"Subject: x\n\nhi\n").returncode == 0
    assert sorted(p.name for p in tmp.iterdir()) == [young.name, link.name]
    assert target.exists()


def test_deliver_failure_is_tempfail_and_stores_nothing(lab: Lab) -> None:
    new = lab.maildir("bob") / "new"
    new.chmod(0o500)
    blocker = lab.maildir("bob") / "tmp"
    os.rmdir(blocker)
    blocker.write_text("not a directory")  # tmp/ unusable even for root
    try:
        result = admin(lab, "deliver", "bob", stdin=b"Subject: x\n\nhi\n")
    finally:
        new.chmod(0o700)
    assert result.returncode == 75
    assert b"message not stored" in result.stderr
    assert len(lab.messages("bob")) == 3


def test_check_config_reports_every_problem_with_file_and_line(lab: Lab) -> None:
    cyrus_conf = lab.root / "cyrus.conf"
    cyrus_conf.write_text('SERVICES {\n  pop3 cmd="pop3d" listen="1110"\n}\n')
    clean = admin(lab, "check-config", "-M", str(cyrus_conf))
    assert clean.stdout.strip() == b"configuration OK", clean.stdout
    text = lab.config.read_text().replace("allowplaintext: yes\n", "")
    first = len(text.splitlines()) + 1
    lab.config.write_text(text + "allowplaintext: perhaps\nfrob: 1\n")
    cyrus_conf.write_text('SERVICES {\n  pop3 cmd="pop3d" listen="99999"\n}\n')
    result = admin(lab, "check-config", "-M", str(cyrus_conf))
    lines = result.stdout.decode().splitlines()
    assert result.returncode == 78
    assert f"{lab.config}:{first}: error: allowplaintext: 'perhaps' is not a switch" in lines[0]
    assert any(
        f"{lab.config}:{first + 1}: warning: unknown option 'frob'" in line for line in lines
    )
    assert any(f"{cyrus_conf}:2: error: service pop3: port 99999" in line for line in lines)


def test_check_config_warnings_are_said_and_exit_0_as_the_master_runs_them(lab: Lab) -> None:
    """Found probing: any warning was exit 78, and contrib's unit runs check-config before
    the master (RestartPreventExitStatus=78): one cyrus.conf serving Cyrus's master too
    (imapd is not pop3d), 'poptimeout: 5' and an unknown option kept pop3d down though the
    master runs them. Now they are printed and exit 0; --strict refuses them; an error
    whose text holds ': warning: ' is still an error."""
    with lab.config.open("a") as config:
        config.write("poptimeout: 5\nfrobnicate: 1\n")
    for _attempt in range(5):  # exit 71: another test took the port free_port() found
        port = free_port()
        conf = lab.root / "cyrus.conf"
        conf.write_text(
            "SERVICES {\n"
            '  imap cmd="imapd" listen="imap" prefork=0\n'
            f'  pop3 cmd="pop3d" listen="127.0.0.1:{port}" prefork=1\n'
            '  lmtpunix cmd="lmtpd" listen="/run/cyrus/socket/lmtp" prefork=0\n'
            "}\n"
        )
        checked = admin(lab, "check-config", "-M", str(conf))
        lines = checked.stdout.decode().splitlines()
        assert checked.returncode == 0, lines
        assert lines[-1] == "configuration OK, with 4 warnings", lines
        assert f"{conf}:2: warning: service imap: imapd is not pop3d (skipped)" in lines
        assert any(": warning: poptimeout: 300s is below" in line for line in lines), lines
        strict = admin(lab, "check-config", "-M", str(conf), "--strict")
        assert strict.returncode == 78, strict.stdout
        refusal = [*lines[:-1], "4 warnings, refused with --strict"]
        assert strict.stdout.decode().splitlines() == refusal
        master = subprocess.Popen(
            [*MASTER, "-C", str(lab.config), "-M", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 20
            while master.poll() is None:
                try:
                    answer = login_and_stat(socket.AF_INET, ("127.0.0.1", port), "bob", "builder")
                    break
                except OSError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
        finally:
            if master.poll() is None:
                master.send_signal(signal.SIGTERM)
            code = master.wait(timeout=15)
            assert master.stderr is not None
            errors = master.stderr.read()
            master.stderr.close()
        if code == 71 and b"Address already in use" in errors:
            continue
        assert code == 0, errors
        assert answer.startswith(b"+OK 3 "), answer
        break
    lab.configure("allowplaintext: maybe: warning: x\n")
    refused = admin(lab, "check-config", "-M", str(conf))
    assert refused.returncode == 78, refused.stdout
    assert b": error: allowplaintext: 'maybe: warning: x' is not a switch" in refused.stdout


def test_check_config_refuses_what_the_master_and_the_logins_would(lab: Lab) -> None:
    """Found probing, each said "configuration OK" and then failed: no service, a cmd the
    master refuses, two services on one address, a numeric address that is none, and a
    maildir_path that cannot name each user's Maildir."""
    cyrus_conf = lab.root / "cyrus.conf"
    text = lab.config.read_text()
    for services, expected in (
        ("", "no pop3d service in SERVICES"),
        (
            '  pop3 cmd="pop3d -Z" listen="1110"\n',
            ":2: service pop3: pop3d: option -Z not recognized",
        ),
        ('  pop3 cmd="pop3d -X" listen="1110"\n', "-X is not supported under the master"),
        (
            '  pop3 cmd="pop3d -U \u0661" listen="1110"\n',
            ":2: service pop3: pop3d: -U '\u0661': expected a whole number",
        ),
        (
            '  pop3 cmd="pop3d" listen="1110"\n  pop3b cmd="pop3d" listen="1110"\n',
            ":3: error: service pop3b: listens where service pop3 does (line 2)",
        ),
        ('  pop3 cmd="pop3d" listen="999.1.1.1:110"\n', "999.1.1.1 is not an IPv4 address"),
    ):
        cyrus_conf.write_text("SERVICES {\n" + services + "}\n")
        result = admin(lab, "check-config", "-M", str(cyrus_conf))
        assert result.returncode == 78 and expected in result.stdout.decode(), result.stdout
    cyrus_conf.write_text('SERVICES {\n  pop3 cmd="pop3d" listen="1110"\n}\n')
    for template, expected in (
        ("", "an empty value"),
        ("%p/Maildir", "names no user"),
        ("%p/%x/Maildir", "%x is not one of"),
        ("%p/%u/%", "a lone % at the end"),
        ("mail/%u", "must be an absolute path"),
    ):
        lab.config.write_text(text + f"maildir_path: {template}\n")
        result = admin(lab, "check-config", "-M", str(cyrus_conf))
        assert result.returncode == 78, (template, result.stdout)
        assert f"maildir_path: {expected}" in result.stdout.decode(), result.stdout


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("25010", "127.0.0.1:25010", "listen 127.0.0.1:25010 overlaps service one's *:25010"),
        ("127.0.0.1:25010", "25010", "listen *:25010 overlaps service one's 127.0.0.1:25010"),
        ("[::1]:25010", "[0::1]:25010", "listen [0::1]:25010 overlaps service one's [::1]:25010"),
        ("25010", "25010 proto=tcp6", "listen *:25010 overlaps service one's *:25010"),
        ("[::]:25010", "[::1]:25010 proto=tcp6", "overlaps service one's [::]:25010"),
        ("nonexist.invalid:25010", None, "service one: listen nonexist.invalid:25010: no address"),
        ("[::1%lo]:25010", None, "service one: listen [::1%lo]:25010: no address"),
    ],
)
def test_check_config_resolves_listen_as_the_master_binds_it(
    lab: Lab, first: str, second: str | None, expected: str
) -> None:
    """Found probing: each was "configuration OK", and the master then exited 71: two
    services whose addresses overlap once resolved (a port alone is each family's
    wildcard), a name that resolves to nothing, a scope on an address that takes none.
    Each is an error at the line of the service, exit 78; services apart are OK."""
    cyrus_conf = lab.root / "cyrus.conf"

    def entry(name: str, listen: str) -> str:
        address, _, flags = listen.partition(" ")
        return f'  {name} cmd="pop3d" listen="{address}" {flags}\n'

    services = entry("one", first) + (entry("two", second) if second is not None else "")
    cyrus_conf.write_text("SERVICES {\n" + services + "}\n")
    result = admin(lab, "check-config", "-M", str(cyrus_conf))
    line = 2 if second is None else 3
    assert result.returncode == 78, result.stdout
    assert f"{cyrus_conf}:{line}: error: " in result.stdout.decode(), result.stdout
    assert expected in result.stdout.decode(), result.stdout
    # The master refuses it the same way, before it binds anything (it was a bind's 71)
    started = subprocess.run(
        [*MASTER, "-C", str(lab.config), "-M", str(cyrus_conf)], capture_output=True, timeout=60
    )
    assert started.returncode == 78, started.stderr
    assert expected in started.stderr.decode(), started.stderr
    cyrus_conf.write_text(
        "SERVICES {\n"
        + entry("one", "127.0.0.1:25010")
        + entry("two", "127.0.0.2:25010")
        + entry("three", "[::1]:25010")
        + entry("four", "25011 proto=tcp4")
        + entry("five", "25011 proto=tcp6")
        + "}\n"
    )
    fine = admin(lab, "check-config", "-M", str(cyrus_conf))
    assert fine.returncode == 0 and fine.stdout.endswith(b"configuration OK\n"), fine.stdout


def test_check_config_sees_a_group_readable_credential_file(lab: Lab) -> None:
    lab.credentials.chmod(0o660)
    cyrus_conf = lab.root / "cyrus.conf"
    cyrus_conf.write_text('SERVICES {\n  pop3 cmd="pop3d" listen="1110"\n}\n')
    result = admin(lab, "check-config", "-M", str(cyrus_conf))
    assert result.returncode == 78
    assert b"mode 0660" in result.stdout


def _write_cyrus_conf(lab: Lab, port: int, flags: str = "") -> Path:
    path = lab.root / "cyrus.conf"
    path.write_text(
        f'SERVICES {{\n  pop3 cmd="pop3d {flags}" listen="127.0.0.1:{port}" prefork=1\n}}\n'
    )
    return path


def test_master_refuses_bad_configurations(lab: Lab) -> None:
    port = free_port()
    conf = _write_cyrus_conf(lab, port, "-s")  # -s without a certificate
    result = subprocess.run(
        [*MASTER, "-C", str(lab.config), "-M", str(conf)], capture_output=True, timeout=60
    )
    assert result.returncode == 78
    assert b"TLS needs tls_server_cert" in result.stderr
    empty = lab.root / "empty.conf"
    empty.write_text("SERVICES {\n}\n")
    result = subprocess.run(
        [*MASTER, "-C", str(lab.config), "-M", str(empty)], capture_output=True, timeout=60
    )
    assert result.returncode == 78 and b"no pop3d service" in result.stderr
    result = subprocess.run([*MASTER, "-x"], capture_output=True, timeout=60)
    assert result.returncode == 64 and b"option -x not recognized" in result.stderr


def test_master_cannot_bind_a_busy_port(lab: Lab) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        conf = _write_cyrus_conf(lab, port)
        result = subprocess.run(
            [*MASTER, "-C", str(lab.config), "-M", str(conf)], capture_output=True, timeout=60
        )
    assert result.returncode == 71
    # which service, where in cyrus.conf, which address, and why
    assert re.search(
        rb"cyrus.conf:2: service pop3 cannot listen on 127.0.0.1:%d: Address already in use" % port,
        result.stderr,
    ), result.stderr
    assert b"Traceback" not in result.stderr


def test_master_daemonizes_with_a_pidfile(lab: Lab) -> None:
    pidfile = lab.root / "master.pid"
    _write_cyrus_conf(lab, free_port()).rename(lab.root / "second.conf")
    for _attempt in range(5):  # the master binds before it forks: a taken port is exit 71
        port = free_port()
        conf = _write_cyrus_conf(lab, port)
        result = subprocess.run(
            [*MASTER, "-C", str(lab.config), "-M", str(conf), "-p", str(pidfile), "-d"],
            capture_output=True,
            timeout=60,
        )
        if result.returncode != 71:
            break
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 20
    pid = int(pidfile.read_text())  # -d returns once the daemon has started
    try:
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    assert sock.recv(100).startswith(b"+OK")
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("daemonized master never answered")
        # A second master given the same pid file refuses it: it overwrote it, and
        # removed it when it stopped, leaving the first without one (found probing).
        second = _master_exit(lab, "-p", str(pidfile), conf=lab.root / "second.conf")
        assert second.returncode == 73, second.stderr
        assert f"pop3d-master (pid {pid}) is running".encode() in second.stderr
        assert pidfile.read_text() == f"{pid}\n"
    finally:
        os.kill(pid, signal.SIGTERM)
    while pidfile.exists() and time.monotonic() < deadline + 10:
        time.sleep(0.05)
    assert not pidfile.exists()


def test_the_pid_file_is_removed_when_no_codec_can_be_imported(lab: Lab) -> None:
    """Found probing: after the drop to cyrus_user, the master removing its pid file read it
    with read_text(encoding="ascii"); the codec, imported on first use, was one the account
    could not read, so it stopped with LookupError's traceback, exit 70, the file left.
    Here no codec can be imported from the master's start, as there after the drop."""
    pidfile = lab.root / "master.pid"
    without_codecs = (
        "import sys; sys.modules['encodings.ascii'] = None; "
        "from pop3d.cli.start import master; master()"
    )
    for _attempt in range(5):  # exit 71: another test took the port free_port() found
        port = free_port()
        conf = _write_cyrus_conf(lab, port)
        master = subprocess.Popen(
            [sys.executable, "-c", without_codecs, "-C", str(lab.config), "-M", str(conf),
             "-p", str(pidfile)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while master.poll() is None and not pidfile.exists():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            if master.poll() is None:
                stat_once_served(socket.AF_INET, ("127.0.0.1", port), "bob", "builder", deadline)
                master.send_signal(signal.SIGTERM)
            code = master.wait(timeout=15)
        finally:
            if master.poll() is None:
                master.kill()
                master.wait()
            assert master.stderr is not None
            errors = master.stderr.read()
            master.stderr.close()
        if code != 71 or b"Address already in use" not in errors:
            break
    assert code == 0, errors
    assert b"Traceback" not in errors, errors
    assert not pidfile.exists()


def _master_exit(
    lab: Lab, *flags: str, conf: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The master run with ``flags`` until it exits by itself, on a port of its own (a
    port another test took meanwhile is tried again)."""
    for _attempt in range(5):
        cyrus_conf = conf or _write_cyrus_conf(lab, free_port())
        result = subprocess.run(
            [*MASTER, "-C", str(lab.config), "-M", str(cyrus_conf), *flags],
            capture_output=True,
            timeout=60,
        )
        if result.returncode != 71 or b"service pop3 cannot listen" not in result.stderr:
            break
    return result


def test_a_pid_file_that_cannot_be_written_is_one_line_and_exit_73(lab: Lab) -> None:
    pidfile = lab.root / "missing" / "master.pid"
    result = _master_exit(lab, "-p", str(pidfile))
    assert result.returncode == 73, result.stderr
    assert result.stderr == (
        b"pop3d-master: cannot write the pid file %s: No such file or directory\n"
        % str(pidfile).encode()
    )


def test_detached_master_that_cannot_start_says_so_and_exits_with_its_status(lab: Lab) -> None:
    """-d exits only once the daemon runs: a failure after the fork (a pid file it cannot
    write, the metrics port taken) is its error on -d's standard error and its exit
    status, not exit 0 from a daemon that then died with its error on /dev/null."""
    pidfile = lab.root / "missing" / "master.pid"
    result = _master_exit(lab, "-d", "-p", str(pidfile))
    assert result.returncode == 73, result.stderr
    assert b"pop3d-master: cannot write the pid file %s" % str(pidfile).encode() in result.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        metrics_port = busy.getsockname()[1]
        with lab.config.open("a") as config:
            config.write(f"prometheus_enabled: yes\nprometheus_listen: 127.0.0.1:{metrics_port}\n")
        result = _master_exit(lab, "-d")
    assert result.returncode == 71, result.stderr
    assert (
        b"pop3d-master: cannot serve metrics on 127.0.0.1:%d: Address already in use\n"
        % metrics_port
    ) in result.stderr
    assert b"Traceback" not in result.stderr


def test_a_syslog_socket_that_does_not_answer_stops_the_start(lab: Lab) -> None:
    """Exit 78 naming the socket; it started anyway, with a traceback for every line."""
    absent = lab.root / "absent.sock"
    with lab.config.open("a") as config:
        config.write(f"syslog_socket: {absent}\n")
    line = len(lab.config.read_text().splitlines())
    for flags in ((), ("-d",)):
        result = _master_exit(lab, *flags)
        assert result.returncode == 78, result.stderr
        assert result.stderr.endswith(
            f"pop3d-master: {lab.config}:{line}: error: syslog_socket {absent}: No such file "
            "or directory\n".encode()
        )
        assert b"Logging error" not in result.stderr and b"Traceback" not in result.stderr


def test_the_pid_file_is_written_through_no_planted_link(lab: Lab) -> None:
    """In a folder others may write: links planted at every name the temporary could
    have had (it was ``.NAME.PID``) and at the pid file's own name are never written
    through. The pid file ends up a regular file of the master's, the links' targets as
    they were."""
    folder = lab.root / "run"
    folder.mkdir()
    folder.chmod(0o1777)
    victim, other = lab.root / "victim", lab.root / "other"
    for file in (victim, other):
        file.write_text("precious\n")
        file.chmod(0o600)
    pidfile = folder / "master.pid"
    pidfile.symlink_to(other)
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    for pid in range(last + 1, last + 3000):  # whatever this test's children are numbered
        (folder / f".master.pid.{pid}").symlink_to(victim)
    planted = set(folder.iterdir())
    master = None
    for _attempt in range(5):
        port = free_port()
        conf = _write_cyrus_conf(lab, port)
        master = subprocess.Popen(
            [*MASTER, "-C", str(lab.config), "-M", str(conf), "-p", str(pidfile)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while master.poll() is None and time.monotonic() < deadline:
            if not pidfile.is_symlink():
                break
            time.sleep(0.05)
        if master.poll() != 71:
            break
    assert master is not None
    try:
        assert master.poll() is None, master.communicate(timeout=15)[1]
        assert not pidfile.is_symlink() and pidfile.is_file()
        assert pidfile.read_text() == f"{master.pid}\n"
        assert pidfile.stat().st_mode & 0o777 == 0o644
        assert victim.read_text() == other.read_text() == "precious\n"
        assert set(folder.iterdir()) == planted  # the temporary renamed, nothing else left
        master.send_signal(signal.SIGTERM)
        assert master.wait(timeout=15) == 0
    finally:
        if master.poll() is None:
            master.kill()
        errors = master.communicate(timeout=15)[1]
    assert b"Traceback" not in errors, errors
    assert not pidfile.exists()


def _free_port_v6() -> int:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        return int(sock.getsockname()[1])


def test_master_serves_ipv4_ipv6_and_unix_listeners_and_stops_on_sigterm(lab: Lab) -> None:
    """Every listen= form of cyrus.conf, served by one master; SIGTERM ends it with 0 and
    removes the unix socket it made."""
    unix_path = lab.root / "pop3.sock"
    conf = lab.root / "cyrus.conf"
    for _attempt in range(5):
        port4, port6 = free_port(), _free_port_v6()
        conf.write_text(
            "SERVICES {\n"
            f'  pop3 cmd="pop3d" listen="127.0.0.1:{port4}" prefork=1\n'
            f'  pop3v6 cmd="pop3d" listen="[::1]:{port6}" prefork=1\n'
            f'  pop3local cmd="pop3d" listen="{unix_path}" prefork=1\n'
            "}\n"
        )
        master = subprocess.Popen(
            [*MASTER, "-C", str(lab.config), "-M", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # The master binds in file order: once the unix socket exists, every bind worked.
        # Exit 71 means another test's connection took a port free_port() had found.
        while not unix_path.exists() and master.poll() is None:
            time.sleep(0.02)
        if master.poll() != 71:
            break
        assert master.stderr is not None
        assert b"Address already in use" in master.stderr.read()
    user, password = next(iter(lab.users.items()))
    targets = [
        (socket.AF_INET, ("127.0.0.1", port4)),
        (socket.AF_INET6, ("::1", port6)),
        (socket.AF_UNIX, str(unix_path)),
    ]
    try:
        deadline = time.monotonic() + 30
        for family, address in targets:
            assert stat_once_served(family, address, user, password, deadline).startswith(b"+OK ")
        master.send_signal(signal.SIGTERM)
        assert master.wait(timeout=15) == 0
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
        assert master.stderr is not None
        errors = master.stderr.read()
    assert b"Traceback" not in errors
    assert not unix_path.exists()


def _refused_at_check_and_start(lab: Lab, problem: bytes) -> None:
    """check-config and the master both refuse the configuration (exit 78), naming it."""
    conf = _write_cyrus_conf(lab, free_port())
    checked = admin(lab, "check-config", "-M", str(conf))
    assert checked.returncode == 78
    assert problem in checked.stdout
    started = subprocess.run(
        [*MASTER, "-C", str(lab.config), "-M", str(conf)], capture_output=True, timeout=60
    )
    assert started.returncode == 78
    assert problem in started.stderr


def test_a_lock_table_needs_a_configuration_directory(lab: Lab) -> None:
    """maildrop_lock: table keeps its files in <configdirectory>/lock/: without one, the
    configuration is refused at check-config and at start, not at the first login."""
    lab.credentials.rename(lab.root / "pop3d.passwd")
    text = lab.config.read_text().replace(f"configdirectory: {lab.root}/config\n", "")
    lab.config.write_text(
        text + f"credentials_file: {lab.root}/pop3d.passwd\nmaildrop_lock: table\n"
    )
    _refused_at_check_and_start(lab, b"maildrop_lock: table needs configdirectory")


def test_a_lock_table_that_cannot_be_made_stops_the_start(lab: Lab) -> None:
    """Checked at start, not found out by every login: here a file stands where the table's
    folder should be."""
    (lab.root / "config" / "lock").write_text("not a folder\n")
    with lab.config.open("a") as config:
        config.write("maildrop_lock: table\n")
    _refused_at_check_and_start(lab, b"maildrop_lock: cannot open the maildrop lock table")


def test_a_unix_socket_is_anyone_s_and_not_taken_from_a_live_master(lab: Lab) -> None:
    """Found probing: a second master on the same unix socket path unlinked the first one's
    live socket and bound its own (whichever stopped first removed the other's path), and
    the socket had root's umask, so only root could connect. Now the second one exits 71
    naming the path, the first serves on, and the socket is 0777 as Cyrus binds it; a
    socket nobody listens on (a killed master's) is replaced."""
    unix_path = lab.root / "pop3.sock"
    conf = lab.root / "cyrus.conf"
    conf.write_text(f'SERVICES {{\n  pop3local cmd="pop3d" listen="{unix_path}" prefork=1\n}}\n')
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(unix_path))  # bound, never listening: what a killed master leaves
    stale.close()
    first = subprocess.Popen(
        [*MASTER, "-C", str(lab.config), "-M", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        user, password = next(iter(lab.users.items()))
        deadline = time.monotonic() + 30
        stat = stat_once_served(socket.AF_UNIX, str(unix_path), user, password, deadline)
        assert stat.startswith(b"+OK ")
        assert unix_path.stat().st_mode & 0o777 == 0o777
        second = subprocess.run(
            [*MASTER, "-C", str(lab.config), "-M", str(conf)], capture_output=True, timeout=60
        )
        assert second.returncode == 71, second.stderr
        assert b"another server is listening on" in second.stderr
        assert login_and_stat(socket.AF_UNIX, str(unix_path), user, password).startswith(b"+OK")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=15) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


@pytest.mark.parametrize("name", ["demo+folder", "demo+"])
def test_passwd_and_import_refuse_a_name_popsubfolders_splits(lab: Lab, name: str) -> None:
    """Found probing: with popsubfolders a login as demo+folder opens demo's folder, so a
    password set for that name, or mail imported under it, could never be reached. Refused
    (exit 65), nothing written; deleting such a line (an older file's) still works."""
    with lab.config.open("a") as config:
        config.write("popsubfolders: yes\n")
    before = lab.credentials.read_bytes()
    refused = admin(lab, "passwd", name, stdin=b"s3cret\n")
    assert refused.returncode == 65, refused.stderr
    assert b"names a folder (popsubfolders), not a user" in refused.stderr
    assert lab.credentials.read_bytes() == before
    source = lab.root / "old.mbox"
    source.write_bytes(b"From a@b Thu Jan  1 00:00:00 1970\nSubject: x\n\nhi\n")
    imported = admin(lab, "import", "--mbox", str(source), name)
    assert imported.returncode == 65, imported.stderr
    assert sorted(p.name for p in (lab.root / "spool").iterdir()) == ["alice", "bob"]
    missing = admin(lab, "passwd", "-d", name)
    assert missing.returncode == 67, missing.stderr  # looked for, not refused as a name


def test_passwd_reads_no_further_than_a_password_can_be(lab: Lab) -> None:
    """Found probing: `passwd x </dev/zero` read one endless line until MemoryError (a
    traceback, exit 70). Now at most what a login line could carry is read; longer is
    refused, exit 65, nothing stored."""
    before = lab.credentials.read_bytes()
    endless = admin(lab, "passwd", "carol", stdin=b"\0" * (1 << 20))  # a MiB, no line end
    assert endless.returncode == 65, endless.stderr
    assert b"the password is longer than 8185 octets" in endless.stderr
    assert b"Traceback" not in endless.stderr
    assert lab.credentials.read_bytes() == before
    longest = admin(lab, "passwd", "carol", stdin=b"p" * 8185 + b"\n")
    assert longest.returncode == 0, longest.stderr


@pytest.mark.parametrize(
    ("flags", "extra", "problem"),
    [
        # a service's own -C file, broken
        ("-C {root}/other.conf", "", b"poptimeout: 'banana' is not a duration"),
        ("-s", "", b"TLS"),  # implicit TLS without a certificate
        ("", "prometheus_enabled: yes\nprometheus_listen: nonsense\n", b"prometheus_listen"),
    ],
)
def test_check_config_refuses_what_the_master_refuses_at_start(
    lab: Lab, flags: str, extra: str, problem: bytes
) -> None:
    """Found probing: each was "configuration OK", and the master then exited 78."""
    (lab.root / "other.conf").write_text(lab.config.read_text() + "poptimeout: banana\n")
    with lab.config.open("a") as config:
        config.write(extra)
    conf = _write_cyrus_conf(lab, free_port(), flags.format(root=lab.root))
    _both_refuse(lab, conf, problem)


def _both_refuse(lab: Lab, conf: Path, problem: bytes) -> None:
    """check-config and the master both exit 78 saying ``problem``: what one refuses, the
    other does."""
    checked = admin(lab, "check-config", "-M", str(conf))
    assert checked.returncode == 78, checked.stdout
    assert problem in checked.stdout, checked.stdout
    started = subprocess.run(
        [*MASTER, "-C", str(lab.config), "-M", str(conf)], capture_output=True, timeout=60
    )
    assert started.returncode == 78, started.stderr
    assert problem in started.stderr, started.stderr


def test_a_relative_partition_is_refused_where_mail_would_be_stored(lab: Lab) -> None:
    """Found probing: a relative partition-default checked clean, and deliver, run by
    Postfix's pipe in its queue folder, stored mail under it, where no login looked."""
    text = lab.config.read_text().replace(f"partition-default: {lab.root}/spool", "")
    lab.config.write_text(text + "partition-default: spool\n")
    conf = _write_cyrus_conf(lab, free_port())
    _both_refuse(lab, conf, b"partition-default: 'spool' is not an absolute path")
    elsewhere = lab.root / "queue"
    elsewhere.mkdir()
    delivered = subprocess.run(
        [*ADMIN, "-C", str(lab.config), "deliver", "alice"],
        input=b"Subject: x\n\nhi\n",
        cwd=elsewhere,
        capture_output=True,
        timeout=60,
    )
    assert delivered.returncode == 78, delivered.stderr
    assert list(elsewhere.iterdir()) == []


def test_check_config_refuses_what_the_master_cannot_log_to_or_serve_on(lab: Lab) -> None:
    """Found probing, each "configuration OK": a syslog_socket nothing listens on (the
    master exited 78), prometheus_listen where a service listens (the master bound the
    service, then failed on the endpoint: exit 71), a partition-default that is a file
    (every login and delivery failed)."""
    port = free_port()
    conf = _write_cyrus_conf(lab, port)
    text = lab.config.read_text()
    lab.config.write_text(text + f"syslog_socket: {lab.root}/nosock\n")
    _both_refuse(lab, conf, f"syslog_socket {lab.root}/nosock: No such file".encode())
    lab.config.write_text(text + f"prometheus_enabled: yes\nprometheus_listen: 127.0.0.1:{port}\n")
    _both_refuse(lab, conf, f"prometheus_listen 127.0.0.1:{port}: service pop3 listens".encode())
    # a port below 1024: the master serves metrics as cyrus_user, who cannot bind it
    # (found re-probing: "configuration OK", then the master exited 71)
    lab.config.write_text(
        text + "cyrus_user: nobody\nprometheus_enabled: yes\nprometheus_listen: 127.0.0.1:910\n"
    )
    _both_refuse(lab, conf, b"prometheus_listen 127.0.0.1:910: port 910 is below 1024")
    spool = lab.root / "spoolfile"
    spool.write_text("")
    lab.config.write_text(text.replace(f"{lab.root}/spool\n", f"{spool}\n"))
    _both_refuse(lab, conf, f"partition-default {spool}: not a folder".encode())


def test_a_service_name_with_an_underscore_is_refused(lab: Lab) -> None:
    """Found probing: a service pop3_s was served, and its own pop3_s_tls_required and
    pop3_s_allowplaintext were unknown options (imapd.conf splits a key's service prefix
    at the first "_"), so it took plaintext logins. Cyrus's master refuses the name."""
    with lab.config.open("a") as config:
        config.write("pop3_s_allowplaintext: no\n")
    conf = lab.root / "cyrus.conf"
    conf.write_text(f'SERVICES {{\n  pop3_s cmd="pop3d" listen="127.0.0.1:{free_port()}"\n}}\n')
    _both_refuse(lab, conf, f"{conf}:2: error: bad character '_' in the name 'pop3_s'".encode())


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("cyrus_user: nosuchuserxyz", b"cyrus_user 'nosuchuserxyz': no such user"),
        ("cyrus_user: nobody\ncyrus_group: nosuchgroupxyz", b"'nosuchgroupxyz': no such group"),
    ],
)
def test_check_config_refuses_an_account_the_master_cannot_become(
    lab: Lab, setting: str, problem: bytes
) -> None:
    """Found probing: "configuration OK", and the master (and deliver) then exited 78."""
    with lab.config.open("a") as config:
        config.write(setting + "\n")
    conf = _write_cyrus_conf(lab, free_port())
    _both_refuse(lab, conf, problem)


@pytest.mark.parametrize("command", [["users"], ["man", "pop3d"]])
def test_output_that_cannot_be_written_is_one_line_and_exit_74(
    lab: Lab, command: list[str]
) -> None:
    """Found probing: `users >/dev/full` was a traceback and exit 70, "a bug"."""
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [sys.executable, "-m", "pop3d.cli.admin", "-C", str(lab.config), *command],
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    assert result.returncode == 74, result.stderr
    assert result.stderr == b"pop3d-admin: cannot write its output: No space left on device\n"


@pytest.mark.parametrize(
    "command",
    [
        ["pop3d.cli.admin", "-C", "", "users"],
        ["pop3d.cli.admin", "check-config", "-M", ""],
        ["pop3d.cli.master", "-C", ""],
        ["pop3d.cli.master", "-M", ""],
        ["pop3d", "-X", "-C", ""],
    ],
)
def test_an_empty_file_argument_is_a_usage_error(command: list[str]) -> None:
    """Found probing: `-C ''` (an unset $CONF in a script) meant /etc/imapd.conf, the
    system's configuration: `pop3d-admin -C "$CONF" passwd` edited its credential file."""
    result = subprocess.run(
        [sys.executable, "-m", *command], capture_output=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 64, result.stderr
    assert result.stderr.endswith(b": an empty file name\n"), result.stderr


@pytest.mark.parametrize("template", ["%Z", "%999999999u", "%071u"])
@pytest.mark.parametrize("kind", ["--mbox", "--dovecot"])
def test_a_bad_uidl_format_is_a_usage_error(lab: Lab, kind: str, template: str) -> None:
    """Found probing: --uidl-format %Z was exit 75 ("import stopped": run it again), and
    %999999999u built a string of a gigabyte."""
    source = lab.root / "source"
    if kind == "--mbox":
        source.write_bytes(b"From a@b Thu Jan  1 00:00:00 1970\nSubject: x\n\nhi\n")
    else:
        for sub in ("new", "cur", "tmp"):
            (source / sub).mkdir(parents=True)
        (source / "new" / "1.M1P1.host").write_bytes(b"Subject: x\n\nhi\n")
    result = admin(lab, "import", kind, str(source), "--uidl-format", template, "alice")
    assert result.returncode == 64, result.stderr
    assert result.stderr.startswith(b"pop3d-admin: --uidl-format: "), result.stderr


def test_a_stale_pid_file_naming_another_program_is_taken(lab: Lab) -> None:
    """Found probing: a stale pid file whose pid now belongs to a program with "pop3d" and
    "master" among its words (a log viewer of /var/log/pop3d-master.log) kept the master
    from starting, exit 73."""
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "/var/log/pop3d-master.log"]
    )
    pidfile = lab.root / "master.pid"
    pidfile.write_text(f"{other.pid}\n")
    conf = _write_cyrus_conf(lab, free_port())
    master = subprocess.Popen(
        [*MASTER, "-C", str(lab.config), "-M", str(conf), "-p", str(pidfile)],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while pidfile.read_text() != f"{master.pid}\n":
            assert master.poll() is None, master.stderr.read() if master.stderr else b""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        master.send_signal(signal.SIGTERM)
        assert master.wait(timeout=15) == 0
    finally:
        for process in (master, other):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_a_sigterm_as_soon_as_the_pid_file_names_the_master_is_a_clean_stop(lab: Lab) -> None:
    """An init system stops a master once its pid file names it. The file was written
    before the master's handlers were in place, and the checks between (every service's
    context built) take a while: a SIGTERM sent then killed it, -15, the file left behind
    (seen in CI). Twelve services make that stretch long enough to hit every time."""
    pidfile = lab.root / "master.pid"
    conf = lab.root / "cyrus.conf"
    conf.write_text(
        "SERVICES {\n"
        + "".join(
            f'  pop3x{n} cmd="pop3d" listen="127.0.0.1:{free_port()}" prefork=1\n'
            for n in range(12)
        )
        + "}\n"
    )
    master = subprocess.Popen(
        [*MASTER, "-C", str(lab.config), "-M", str(conf), "-p", str(pidfile)],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists() or pidfile.read_text() != f"{master.pid}\n":
            assert master.poll() is None, master.stderr.read() if master.stderr else b""
            assert time.monotonic() < deadline
            time.sleep(0.001)
        master.send_signal(signal.SIGTERM)
        assert master.wait(timeout=30) == 0
        assert not pidfile.exists()
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()


def test_check_config_counts_the_warnings_of_a_services_own_file(lab: Lab) -> None:
    """Found re-probing: a warning in a service's own -C file was printed by the master's
    code ("pop3d-master: ...", on standard error) and not counted, so --strict said
    "configuration OK"."""
    other = lab.root / "other.conf"
    other.write_text(lab.config.read_text() + "frobnicate: 1\n")
    conf = _write_cyrus_conf(lab, free_port(), f"-C {other}")
    checked = admin(lab, "check-config", "-M", str(conf))
    assert checked.returncode == 0, checked.stdout
    lines = checked.stdout.decode().splitlines()
    assert any(f"{other}:" in line and "frobnicate" in line for line in lines), lines
    assert lines[-1] == "configuration OK, with 1 warning", lines
    assert b"pop3d-master" not in checked.stderr, checked.stderr
    strict = admin(lab, "check-config", "-M", str(conf), "--strict")
    assert strict.returncode == 78, strict.stdout
