from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
import tracemalloc
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pop3d.auth import credentials
from pop3d.auth.authenticator import Authenticator
from pop3d.auth.credentials import CredentialFile, CredentialFileError, UserRecord
from pop3d.auth.identity import IdentityRules, canonical_user
from pop3d.auth.passwords import (
    Argon2Parameters,
    apop_digest,
    apop_matches,
    hash_password,
    verify_password,
)
from pop3d.security.secret import Secret
from tests.support.lab import FAST_ARGON2, Lab


def test_rfc1939_apop_vector() -> None:
    challenge = "<1896.697170952@dbc.mtview.ca.us>"
    assert apop_digest(challenge, b"tanstaaf") == "c4c9334bac560ecc979e58001b3e22fb"
    assert apop_matches(challenge, b"tanstaaf", "C4C9334BAC560ECC979E58001B3E22FB")
    assert not apop_matches(challenge, b"tanstaaf", "c4c9334bac560ecc979e58001b3e22fc")


def test_argon2id_hash_is_phc_and_verifies() -> None:
    phc = hash_password(Secret(b"pw"), FAST_ARGON2)
    assert phc.startswith("$argon2id$v=19$m=64,t=1,p=1$")
    assert verify_password(Secret(b"pw"), phc)
    assert not verify_password(Secret(b"pW"), phc)
    assert not verify_password(Secret(b"pw"), "garbage")
    default = hash_password(Secret(b"pw"))
    assert "$m=7168,t=5,p=1$" in default  # OWASP's 7 MiB / 5 passes setting


def test_secret_is_redacted_everywhere() -> None:
    secret = Secret(b"hunter2")
    assert "hunter2" not in repr(secret) + str(secret) + f"{secret}"
    with pytest.raises(TypeError):
        _ = secret == Secret(b"hunter2")
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(secret)
    record = UserRecord("alice", {"PLAIN.B64": "aHVudGVyMg=="})
    assert "aHVudGVy" not in repr(record)


def test_file_is_refused_when_group_or_world_readable(lab: Lab) -> None:
    lab.credentials.chmod(0o640)
    with pytest.raises(CredentialFileError, match="mode 0640"):
        CredentialFile(lab.credentials).lookup("alice")
    lab.credentials.chmod(0o604)
    with pytest.raises(CredentialFileError):
        CredentialFile(lab.credentials).check()
    lab.credentials.chmod(0o600)
    assert CredentialFile(lab.credentials).lookup("alice") is not None


def test_strict_syntax_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("# c\nalice:{ARGON2ID}x\nbob:nosheme\n")
    path.chmod(0o600)
    with pytest.raises(CredentialFileError, match="passwd:3"):
        CredentialFile(path).check()
    path.write_text("alice:{ARGON2ID}x\nalice:{ARGON2ID}y\n")
    with pytest.raises(CredentialFileError, match="appears twice"):
        CredentialFile(path).check()


def test_reader_sees_updates(lab: Lab) -> None:
    store = CredentialFile(lab.credentials)
    assert store.lookup("carol") is None
    lab.set_password("carol", "x")
    assert store.lookup("carol") is not None
    credentials.update(lab.credentials, "carol", lambda _old: None)
    assert store.lookup("carol") is None


def _realistic_line(name: str) -> str:
    """A record of the size pop3d-admin writes by default (an Argon2id hash and two SCRAM
    keys, about 470 octets), distinct per user."""
    tag = name.encode().hex()
    return (
        f"{name}:{{ARGON2ID}}$argon2id$v=19$m=7168,t=5,p=1${tag:A<22}${tag:B<43}"
        f":{{SCRAM-SHA-256}}4096${tag:C<24}${tag:D<44}${tag:E<44}"
        f":{{SCRAM-SHA-512}}4096${tag:F<24}${tag:G<88}${tag:H<88}"
    )


def test_a_reader_holds_an_index_not_every_users_records(tmp_path: Path) -> None:
    """Every worker reads the file: with the records parsed it held about 1 KiB of Python
    objects per user (and every user's secrets); it holds where each line starts."""
    path = tmp_path / "passwd"
    names = [f"user{i}" for i in range(2000)]
    path.write_text("# many\n" + "".join(_realistic_line(n) + "\n" for n in names))
    path.chmod(0o600)
    gc.collect()
    tracemalloc.start()
    try:
        store = CredentialFile(path)
        store.check()
        gc.collect()
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held / len(names) < 300, held / len(names)
    for name in (names[0], names[1234], names[-1]):
        record = store.lookup(name)
        assert record is not None and record.name == name
        assert f"{name}:{credentials.format_record(record).partition(':')[2]}" == (
            _realistic_line(name)
        )
    assert store.lookup("user2000") is None
    assert {r.name for r in store.users()} == set(names)


def test_a_line_moved_by_an_edit_in_place_is_found_again(tmp_path: Path) -> None:
    """A file edited in place between the reader's check of it and its read of the line:
    the line the index points at now belongs to someone else, and the reader indexes the
    file again instead of answering with the wrong record or none."""
    path = tmp_path / "passwd"
    path.write_text("alice:{ARGON2ID}a\nbob:{ARGON2ID}b\n")
    path.chmod(0o600)
    store = CredentialFile(path)
    assert store.lookup("bob") is not None
    with path.open("r+") as handle:  # same inode: what an editor writing in place does
        handle.write("bob:{ARGON2ID}b\nalice:{ARGON2ID}a\n")
    # the race: the reader's stat of the file came after this edit, its index before it
    store._version.signature = credentials._signature(path.stat())  # type: ignore[union-attr]
    alice, bob = store.lookup("alice"), store.lookup("bob")
    assert alice is not None and alice.secrets == {"ARGON2ID": "a"}
    assert bob is not None and bob.secrets == {"ARGON2ID": "b"}


def test_a_replaced_file_leaves_no_descriptor_open(lab: Lab) -> None:
    store = CredentialFile(lab.credentials)

    def open_on_the_file() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            try:  # listdir's own descriptor is gone by now
                count += os.readlink(f"/proc/self/fd/{fd}").startswith(str(lab.credentials))
            except FileNotFoundError:
                pass
        return count

    before = open_on_the_file()
    for number in range(5):
        lab.set_password(f"new{number}", "pw")
        assert store.lookup(f"new{number}") is not None
    assert open_on_the_file() == before + 1  # the version read last, nothing older
    del store
    gc.collect()
    assert open_on_the_file() == before


def test_a_file_that_is_not_utf8_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_bytes(b"alice:{ARGON2ID}a\nb\xf6b:{ARGON2ID}b\n")
    path.chmod(0o600)
    with pytest.raises(CredentialFileError, match="passwd:2: not UTF-8"):
        CredentialFile(path).check()
    with pytest.raises(CredentialFileError, match="passwd:2: not UTF-8"):
        credentials.update(path, "carol", lambda _old: UserRecord("carol", {"ARGON2ID": "c"}))


def test_only_a_newline_ends_a_record(tmp_path: Path) -> None:
    """U+2028 and U+0085 are line breaks to str.splitlines, not to the file: a user whose
    name holds one is written and read back whole."""
    path = tmp_path / "passwd"
    for name in ("a\u2028b", "c\x85d"):
        credentials.update(path, name, lambda _old, n=name: UserRecord(n, {"ARGON2ID": "x"}))
    credentials.update(path, "e", lambda _old: UserRecord("e", {"ARGON2ID": "y"}))
    store = CredentialFile(path)
    store.check()
    for name in ("a\u2028b", "c\x85d", "e"):
        record = store.lookup(name)
        assert record is not None and record.name == name


def test_comments_and_unknown_schemes_survive_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("# keep me\nzed:{FUTURE-SCHEME}abc:{ARGON2ID}x\n")
    path.chmod(0o600)
    credentials.update(path, "amy", lambda _old: UserRecord("amy", {"ARGON2ID": "y"}))
    text = path.read_text()
    assert "# keep me" in text and "{FUTURE-SCHEME}abc" in text and "amy:{ARGON2ID}y" in text
    assert path.stat().st_mode & 0o777 == 0o600


def test_concurrent_admin_runs_lose_no_update(tmp_path: Path) -> None:
    """Twenty pop3d-admin processes at once, each adding a user: all twenty are there."""
    conf = tmp_path / "imapd.conf"
    conf.write_text(
        f"configdirectory: {tmp_path}\npartition-default: {tmp_path}/spool\n"
        "argon2_memory: 64\nargon2_passes: 1\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "pop3d.cli.admin", "-C", str(conf), "passwd", f"user{i}"],
            stdin=subprocess.PIPE,
        )
        for i in range(20)
    ]
    for process in processes:
        process.communicate(b"secret\n", timeout=60)
        assert process.returncode == 0
    names = {r.name for r in CredentialFile(tmp_path / "pop3d.passwd").users()}
    assert names == {f"user{i}" for i in range(20)}


def test_authenticator_results(lab: Lab) -> None:
    auth = Authenticator(CredentialFile(lab.credentials), FAST_ARGON2)
    assert auth.verify_password("alice", Secret(b"wonderland")).identity == "alice"
    assert auth.verify_password("alice", Secret(b"x")).reason == "wrong password"
    assert auth.verify_password("nobody", Secret(b"x")).reason == "unknown user"
    lab.set_password("noapop", "pw")
    digest = apop_digest("<1.2@h>", b"pw")
    assert auth.verify_apop("noapop", "<1.2@h>", digest).reason == "no APOP secret"
    assert auth.verify_apop("alice", "<1.2@h>", apop_digest("<1.2@h>", b"wonderland")).ok


def test_unknown_user_costs_an_argon2_verification(lab: Lab) -> None:
    params = Argon2Parameters(memory_kib=8192, passes=2)
    for name in lab.users:  # decoys copy the stored population: make it these parameters
        credentials.update(lab.credentials, name, lambda _old: None)
    secret = {"ARGON2ID": hash_password(Secret(b"pw"), params)}
    credentials.update(lab.credentials, "slow", lambda _old: UserRecord("slow", secret))
    auth = Authenticator(CredentialFile(lab.credentials), params)

    def timed(user: str) -> float:
        """The least CPU time of several tries: this thread's CPU, so other processes on
        the machine (a parallel test run) add nothing."""
        best = float("inf")
        for _ in range(7):
            start = time.thread_time()
            auth.verify_password(user, Secret(b"wrong"))
            best = min(best, time.thread_time() - start)
        return best

    known, unknown = timed("slow"), timed("nobody")
    # without the dummy verification an unknown user would answer in microseconds
    assert unknown > known * 0.5, (known, unknown)


def test_verification_cache_is_keyed_by_the_stored_hash(lab: Lab) -> None:
    now = [0.0]
    auth = Authenticator(
        CredentialFile(lab.credentials), FAST_ARGON2, cache_ttl=60, clock=lambda: now[0]
    )
    assert auth.verified_recently("alice", Secret(b"wonderland")) is None  # not yet
    assert auth.verify_password("alice", Secret(b"wonderland")).ok
    assert auth.verified_recently("alice", Secret(b"wonderland")) is not None
    assert auth.verify_password("alice", Secret(b"wonderland")).ok
    assert not auth.verify_password("alice", Secret(b"wonderlanD")).ok
    assert auth.verified_recently("alice", Secret(b"wonderlanD")) is None
    lab.set_password("alice", "changed")
    assert not auth.verify_password("alice", Secret(b"wonderland")).ok  # no stale hit
    assert auth.verify_password("alice", Secret(b"changed")).ok
    now[0] = 61.0
    assert auth.verify_password("alice", Secret(b"changed")).ok


def test_a_cache_entry_holds_across_other_users_changes_for_the_hash_verified(lab: Lab) -> None:
    """A hit while the file is the generation an entry vouches for needs no read of the
    user's line; after any change the line is read again, and the entry holds only for
    the very hash it was verified against (a new salt for the same password misses)."""
    auth = Authenticator(CredentialFile(lab.credentials), FAST_ARGON2, cache_ttl=60)
    password = Secret(b"wonderland")
    assert auth.verify_password("alice", password).ok
    assert auth.verified_recently("alice", password) is not None
    other = next(user for user in lab.users if user != "alice")
    lab.set_password(other, "someone else's change")  # a new file, alice's line as it was
    assert auth.verified_recently("alice", password) is not None
    assert auth.verified_recently("alice", password) is not None
    lab.set_password("alice", "wonderland")  # the same password, a new hash
    assert auth.verified_recently("alice", password) is None
    assert auth.verify_password("alice", password).ok  # Argon2 again, then cached anew
    assert auth.verified_recently("alice", password) is not None
    assert auth.verified_recently("alice", Secret(b"wonderlanD")) is None


def test_a_generation_is_settled_once_no_edit_in_place_could_hide(lab: Lab) -> None:
    """The generation vouches for the file only when its last change is more than two
    seconds old: a second edit in place, at the same size and within one tick of the file
    system's clock, would keep its signature."""
    file = CredentialFile(lab.credentials)
    lab.set_password("alice", "changed")
    written = time.time()
    assert file.settled_generation() is None
    generation, record = file.lookup_at("alice")
    assert generation is None and record is not None
    time.sleep(max(0.0, written + 2.2 - time.time()))
    assert file.settled_generation() == file.generation()
    assert file.lookup_at("alice")[0] == file.generation()
    # an entry that vouches for the settled file still expires
    now = [0.0]
    auth = Authenticator(file, FAST_ARGON2, cache_ttl=60, clock=lambda: now[0])
    assert auth.verify_password("alice", Secret(b"changed")).ok
    assert auth.verified_recently("alice", Secret(b"changed")) is not None
    now[0] = 61.0
    assert auth.verified_recently("alice", Secret(b"changed")) is None
    lab.set_password("bob", "changed too")
    assert file.settled_generation() is None


def test_a_cache_entry_expires(lab: Lab) -> None:
    now = [0.0]
    auth = Authenticator(
        CredentialFile(lab.credentials), FAST_ARGON2, cache_ttl=60, clock=lambda: now[0]
    )
    password = Secret(b"wonderland")
    assert auth.verify_password("alice", password).ok
    now[0] = 59.0
    assert auth.verified_recently("alice", password) is not None
    now[0] = 61.0
    assert auth.verified_recently("alice", password) is None
    assert auth.verify_password("alice", password).ok
    assert auth.verified_recently("alice", password) is not None


@given(st.text(max_size=12) | st.text(alphabet=st.characters(max_codepoint=0xA1), max_size=12))
def test_canonical_user_refuses_exactly_separators_and_control_characters(raw: str) -> None:
    """What a user name may not hold: "/", ":", "\\", a C0 or C1 control character or DEL
    (checked per character only outside ASCII), and beyond ASCII a character that shows
    nothing (format characters, spaces, separators, private use). (Nor start with ".",
    "#" or "-".)"""
    unseen = {"Cf", "Zs", "Zl", "Zp", "Co", "Cs", "Cn"}
    bad = any(
        c in "/:\\"
        or ord(c) < 0x20
        or 0x7F <= ord(c) < 0xA0
        or (ord(c) > 0x7F and c not in "\u200c\u200d" and unicodedata.category(c) in unseen)
        or c in "\u115f\u1160\u3164\uffa0\u2800\u034f\u180b\u180c\u180d\u180f"
        or "\ufe00" <= c <= "\ufe0f"
        or "\U000e0100" <= c <= "\U000e01ef"
        for c in raw
    )
    plain = bool(raw) and raw == raw.strip() and not raw.startswith((".", "#", "-"))
    plain = plain and "@" not in raw
    if plain and len(raw.encode("utf-8")) <= 255:
        assert (canonical_user(raw, IdentityRules(username_tolower=False)) is None) == bad


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice", "alice"),
        ("Alice", "alice"),
        ("a@Example.org", "a@example.org"),
        ("", None),
        (" alice", None),
        ("../etc", None),
        (".hidden", None),
        ("#comment", None),  # a comment line in the credential file
        ("--help", None),  # an option on a command line (`deliver ${user}`)
        ("-x", None),
        ("a-b", "a-b"),
        ("a/b", None),
        ("a:b", None),
        ("a\x00b", None),
        ("x" * 256, None),
        ("名前", "名前"),
        # maildir_path's %d is a folder: found probing, x@.. made a Maildir outside the
        # partition and y@. shared y's
        ("x@..", None),
        ("y@.", None),
        ("z@.example.org", None),
        ("x@y.", None),  # another Maildir than x@y's (found probing)
        # 254 octets, 381 in lower case: refused (found probing: stored by passwd, then
        # a file name too long at every delivery and login)
        ("\u0130" * 127, None),
        ("\u0130" * 85, "i\u0307" * 85),  # 170 octets, 255 in lower case: kept
        ("a\udcffb", None),  # argv's spelling of bytes that are not UTF-8
        # shows nothing: "x\u200b" made a Maildir shown as "x" (found probing)
        ("x\u200b", None),
        ("a\u202eb", None),
        ("\ufeffx", None),
        ("a\u00a0b", None),
        ("x\u3164", None),  # a Hangul filler, and others that show nothing (found probing)
        ("x\u034f", None),
        ("x\ufe0f", None),
        ("x\u0378", None),  # not assigned
        # joiners real names hold: Persian with ZWNJ, Sinhala with ZWJ
        (
            "\u0639\u0644\u06cc\u200c\u0631\u0636\u0627",
            "\u0639\u0644\u06cc\u200c\u0631\u0636\u0627",
        ),
        ("\u0dc1\u0dca\u200d\u0dbb\u0dd3", "\u0dc1\u0dca\u200d\u0dbb\u0dd3"),
    ],
)
def test_canonical_user(raw: str, expected: str | None) -> None:
    assert canonical_user(raw, IdentityRules()) == expected


def test_login_realms_are_dropped_without_virtdomains() -> None:
    rules = IdentityRules(loginrealms=frozenset({"lab.test"}))
    assert canonical_user("Alice@LAB.TEST", rules) == "alice"
    assert canonical_user("alice@elsewhere.test", rules) == "alice@elsewhere.test"
    assert canonical_user("@lab.test", rules) is None


def test_admin_passwd_writes_what_any_service_needs(tmp_path: Path) -> None:
    """One credential file serves every service: passwd read the unprefixed settings
    only, so with pop3s_allowapop: yes no password it set could log in with APOP on
    pop3s."""
    conf = tmp_path / "imapd.conf"
    run = [sys.executable, "-m", "pop3d.cli.admin", "-C", str(conf)]
    base = f"configdirectory: {tmp_path}\nargon2_memory: 64\nargon2_passes: 1\n"
    for extra, expected in (
        ("pop3s_allowapop: yes\n", {"ARGON2ID", "PLAIN.B64", "SCRAM-SHA-256", "SCRAM-SHA-512"}),
        (
            "sasl_mech_list: PLAIN SCRAM-SHA-1\nPOP3S_sasl_mech_list: CRAM-MD5\n",
            {"ARGON2ID", "SCRAM-SHA-1", "PLAIN.B64"},
        ),
    ):
        conf.write_text(base + extra)
        result = subprocess.run(
            [*run, "passwd", "amy"], input=b"pw\n", capture_output=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        record = CredentialFile(tmp_path / "pop3d.passwd").lookup("amy")
        assert record is not None and set(record.secrets) == expected, extra


def test_other_daemons_keys_in_a_shared_imapd_conf_are_not_pop3ds(tmp_path: Path) -> None:
    """A key prefixed with a service of Cyrus's own daemons (imap_, lmtp_, sieve_) is that
    daemon's: imap_sasl_mech_list: CRAM-MD5 made passwd store a plaintext equivalent, and
    imap_sasl_pwcheck_method: saslauthd made deliver take mail for any name (found
    probing). An older option's name (tls_ca_file) names no service tls either."""
    conf = tmp_path / "imapd.conf"
    run = [sys.executable, "-m", "pop3d.cli.admin", "-C", str(conf)]
    base = (
        f"configdirectory: {tmp_path}\npartition-default: {tmp_path}/spool\n"
        "argon2_memory: 64\nargon2_passes: 1\n"
    )
    conf.write_text(
        base + "imap_sasl_mech_list: PLAIN CRAM-MD5\nimap_sasl_pwcheck_method: saslauthd\n"
        "lmtp_allowapop: yes\ntls_ca_file: /etc/ssl/certs/ca-certificates.crt\n"
    )
    done = subprocess.run([*run, "passwd", "amy"], input=b"pw\n", capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    record = CredentialFile(tmp_path / "pop3d.passwd").lookup("amy")
    assert record is not None and set(record.secrets) == {
        "ARGON2ID",
        "SCRAM-SHA-256",
        "SCRAM-SHA-512",
    }
    mail = b"Subject: x\n\nx\n"
    done = subprocess.run(
        [*run, "deliver", "nosuchuser"], input=mail, capture_output=True, timeout=60
    )
    assert done.returncode == 67, done.stderr  # EX_NOUSER: the MTA bounces it
    assert not (tmp_path / "spool" / "nosuchuser").exists()


def test_default_domain_is_dropped_with_virtdomains() -> None:
    rules = IdentityRules(virtdomains=True, defaultdomain="example.org")
    assert canonical_user("alice@EXAMPLE.org", rules) == "alice"
    assert canonical_user("alice@other.org", rules) == "alice@other.org"
    assert canonical_user(b"\xff", rules) is None


def test_admin_passwd_writes_what_the_config_needs(tmp_path: Path) -> None:
    """No plaintext equivalent unless the site enables something that needs one; SCRAM keys
    for the SCRAM hashes that are enabled."""
    conf = tmp_path / "imapd.conf"
    run = [sys.executable, "-m", "pop3d.cli.admin", "-C", str(conf)]
    base = f"configdirectory: {tmp_path}\nargon2_memory: 64\nargon2_passes: 1\n"
    for extra, expected in (
        ("", {"ARGON2ID", "SCRAM-SHA-256", "SCRAM-SHA-512"}),
        ("allowapop: yes\n", {"ARGON2ID", "PLAIN.B64", "SCRAM-SHA-256", "SCRAM-SHA-512"}),
        ("sasl_mech_list: PLAIN SCRAM-SHA-1\n", {"ARGON2ID", "SCRAM-SHA-1"}),
    ):
        conf.write_text(base + extra)
        result = subprocess.run(
            [*run, "passwd", "amy"], input=b"pw\n", capture_output=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        record = CredentialFile(tmp_path / "pop3d.passwd").lookup("amy")
        assert record is not None and set(record.secrets) == expected, extra
