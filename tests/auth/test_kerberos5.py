"""sasl_pwcheck_method: kerberos5 against a real MIT KDC (k5test): the checker itself, then
USER/PASS (poplib) and AUTH PLAIN through a real pop3d-master. Right and wrong password,
unknown principal, expired password, a spoofed KDC (same realm name, knows the user's
password, not our service key), a KDC that does not answer (-ERR [SYS/TEMP] within the
bound while another session is served), and the start-up keytab check."""

from __future__ import annotations

import base64
import os
import poplib
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import krb5
import pytest

from pop3d.auth.kerberos5 import Kerberos5Checker, Kerberos5Result
from pop3d.security.secret import Secret
from tests.support.kerberos import ROTATED_HOST, Realm, kerberos_realm, make_realm
from tests.support.lab import Lab, Server, start_server

__all__ = ["kerberos_realm"]

EXPIRED = "dora"  # a principal whose password expired (made once per realm)
PREAUTH = "erin"  # one the KDC asks for pre-authentication (the realm's others it does not)


_EXTRAS_IN: set[int] = set()  # realms (one per test process) that have EXPIRED and PREAUTH


def _extra_principals(realm: Realm) -> None:
    if id(realm.k5) not in _EXTRAS_IN:
        realm.k5.run_kadminl(f"addprinc -pw explorer -pwexpire 2000-01-01 {EXPIRED}")
        realm.k5.run_kadminl(f"addprinc -pw sleuth +requires_preauth {PREAUTH}")
        _EXTRAS_IN.add(id(realm.k5))


@pytest.fixture
def krb5_env(kerberos_realm: Realm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Realm:
    monkeypatch.setenv("KRB5_CONFIG", str(kerberos_realm.krb5_conf))
    monkeypatch.setenv("KRB5RCACHEDIR", str(tmp_path))
    monkeypatch.setenv("KRB5_KTNAME", "FILE:/nonexistent/pop3d-test.keytab")
    monkeypatch.setenv("KRB5CCNAME", "FILE:/nonexistent/pop3d-test.ccache")
    _extra_principals(kerberos_realm)
    return kerberos_realm


@pytest.fixture
def checker(krb5_env: Realm, tmp_path: Path) -> Iterator[Kerberos5Checker]:
    made = Kerberos5Checker("localhost", str(krb5_env.service_keytab(tmp_path)), timeout=5)
    yield made
    made.close()


def check(checker: Kerberos5Checker, user: str, password: str, realm: str = "") -> Kerberos5Result:
    return checker(user, Secret(password.encode()), realm)


# --- the checker, in process -------------------------------------------------------------


def test_right_password(checker: Kerberos5Checker, krb5_env: Realm) -> None:
    assert check(checker, "alice", "wonderland") == Kerberos5Result(
        True, f"alice@{krb5_env.name}: verified"
    )


@pytest.mark.parametrize(
    ("user", "password", "why"),
    [
        ("alice", "not-wonderland", "wrong password"),
        ("nobody", "wonderland", "unknown principal"),
        (EXPIRED, "explorer", "password expired"),
    ],
)
def test_refusals(checker: Kerberos5Checker, user: str, password: str, why: str) -> None:
    result = check(checker, user, password)
    assert not result.ok and not result.unavailable
    assert result.reason.endswith(f": {why}")
    assert password not in result.reason


def _string_to_keys(trace: str) -> list[tuple[str, str, str]]:
    """The string-to-keys libkrb5 ran in its AS exchanges, as its trace tells them:
    (enctype, salt, s2kparams) of the etype info selected before each."""
    found: list[tuple[str, str, str]] = []
    selected = ("?", "?", "?")
    for line in trace.splitlines():
        if match := re.search(
            r'Selected etype info: etype (\S+), salt "(.*)", params "(.*)"', line
        ):
            selected = (match[1], match[2], match[3])
        elif "AS key obtained" in line:
            found.append(selected)
    return found


@pytest.mark.parametrize("known", ["alice", PREAUTH])
def test_an_unknown_user_costs_what_a_wrong_password_costs(
    checker: Kerberos5Checker,
    krb5_env: Realm,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    known: str,
) -> None:
    """Found probing: the KDC refuses an unknown principal in one round trip, where a known
    one costs libkrb5's string-to-key (PBKDF2) and, asking for pre-authentication (PREAUTH),
    a second request: 1.6 ms against 7. No time is asserted; the work is counted: requests
    the KDC answered and string-to-keys, libkrb5's from its trace, the decoy's by
    krb5.c_string_to_key wrapped. The salt is compared in its form (realm, then name)."""
    trace = tmp_path / "krb5.trace"
    monkeypatch.setenv("KRB5_TRACE", str(trace))
    decoys: list[tuple[str, str, str]] = []
    real = krb5.c_string_to_key

    def counted(
        context: krb5.Context, enctype: int, string: bytes, salt: bytes, params: bytes | None
    ) -> krb5.KeyBlock:
        shape = (krb5.enctype_to_name(enctype, True), salt.decode(), (params or b"").decode())
        decoys.append(shape)
        return real(context, enctype, string, salt, params)

    monkeypatch.setattr(krb5, "c_string_to_key", counted)

    def work(user: str) -> tuple[int, list[tuple[str, str, str]]]:
        trace.write_text("")
        decoys.clear()
        result = check(checker, user, "not-the-password")
        assert not result.ok and not result.unavailable
        done = trace.read_text()
        keys = [
            (enctype, salt.replace(f"{krb5_env.name}{user}", "<realm><name>"), p)
            for enctype, salt, p in _string_to_keys(done) + decoys
        ]
        return done.count("Received answer"), keys

    # A known principal's wrong password tells the checker whether the realm asks for
    # pre-authentication; an unknown name checked before that costs the string-to-key too.
    assert work("nobody")[1] == work(known)[1]
    wrong_password = work(known)
    assert wrong_password[0] == (2 if known == PREAUTH else 1)
    assert wrong_password[1] == [("aes256-cts", "<realm><name>", "")]
    for unknown in ("nobody", "someone.else"):
        assert work(unknown) == wrong_password


def test_names_that_are_not_principals_of_ours(checker: Kerberos5Checker) -> None:
    """A realm still in the canonical name is one loginrealms does not list; a realm passed
    on must be one of loginrealms; nothing reaches the KDC for either."""
    assert check(checker, "alice@other.test", "wonderland").reason == "realm not in loginrealms"
    assert check(checker, "alice", "wonderland", "OTHER.TEST").reason == (
        "realm not in loginrealms"
    )
    assert check(checker, "alice", "").reason == "empty password"


def test_a_password_with_a_nul_is_refused(checker: Kerberos5Checker) -> None:
    """Found probing: libkrb5 takes the password as a C string, so alice logged in with
    'wonderland\\0anything'. Refused before the KDC, for a real user as for an unknown one."""
    for user in ("alice", "nobody"):
        assert check(checker, user, "wonderland\0anything") == Kerberos5Result(
            False, "password contains a NUL octet"
        )
    assert check(checker, "alice", "wonderland").ok


def test_login_realm_in_its_configured_spelling(krb5_env: Realm, tmp_path: Path) -> None:
    """alice@krbtest.com with loginrealms KRBTEST.COM asks for alice@KRBTEST.COM."""
    keytab = str(krb5_env.service_keytab(tmp_path))
    made = Kerberos5Checker("localhost", keytab, login_realms=(krb5_env.name,), timeout=5)
    try:
        result = check(made, "alice", "wonderland", krb5_env.name.lower())
        assert result == Kerberos5Result(True, f"alice@{krb5_env.name}: verified")
    finally:
        made.close()


def spoil_keytab(keytab: Path, how: str, realm: Realm) -> None:
    """What can become of a keytab checked at start: removed, emptied, overwritten with
    garbage, or replaced by one that holds other keys (host/localhost only)."""
    keytab.unlink()
    if how == "empty":
        keytab.write_bytes(b"")
    elif how == "garbage":
        keytab.write_bytes(b"\x05\x02" + bytes(range(256)))
    elif how == "without our key":
        shutil.move(realm.service_keytab(keytab.parent / "other", service="host"), keytab)
    if keytab.exists():
        keytab.chmod(0o600)


@pytest.mark.parametrize("how", ["removed", "empty", "garbage", "without our key"])
def test_a_keytab_that_cannot_verify_is_no_verdict(
    krb5_env: Realm, tmp_path: Path, how: str
) -> None:
    """The KDC took the password, but no ticket can be checked with this keytab: never ok,
    and no refusal either (found probing: every right password was a SASL(-13) fail2ban
    counted); the server's fault, as GSSAPI takes the same keytab. A keytab without our
    key is one of them: our principal is fixed, so that is never the client's doing."""
    keytab = krb5_env.service_keytab(tmp_path)
    (tmp_path / "other").mkdir()
    spoil_keytab(keytab, how, krb5_env)
    made = Kerberos5Checker("localhost", str(keytab), timeout=5)
    try:
        result = check(made, "alice", "wonderland")
        assert not result.ok and result.unavailable, result
        assert f"alice@{krb5_env.name}: keytab: " in result.reason
        # a wrong password is still the KDC's refusal, keytab or not
        wrong = check(made, "alice", "not-wonderland")
        assert not wrong.ok and not wrong.unavailable
    finally:
        made.close()


def test_a_key_rotated_at_the_kdc_and_not_in_the_keytab_is_no_verdict(
    krb5_env: Realm, tmp_path: Path
) -> None:
    """The KDC took the password and sealed the service ticket under a kvno the keytab
    lacks: the password may well be right (found probing: a key rotation refused every
    right password, each a SASL(-13) fail2ban counted)."""
    made = Kerberos5Checker(ROTATED_HOST, str(krb5_env.stale_keytab(tmp_path)), timeout=5)
    try:
        result = check(made, "alice", "wonderland")
        assert not result.ok and result.unavailable, result
        assert "keytab lacks the ticket's key" in result.reason
        assert "kvno 2 not found in keytab" in result.reason
        assert not check(made, "alice", "not-wonderland").unavailable
    finally:
        made.close()


@pytest.fixture(scope="module")
def spoofed_kdc() -> Iterator[Realm]:
    """A second KDC for the same realm name (k5test's KRBTEST.COM) that knows alice's
    password but has its own pop/localhost key: what whoever answers on the KDC's address
    could set up."""
    k5 = make_realm()
    try:
        yield Realm(k5)
    finally:
        k5.stop()
        shutil.rmtree(k5.tmpdir, ignore_errors=True)


@pytest.mark.parametrize("service_known", [True, False])
def test_a_spoofed_kdc_logs_no_one_in(
    kerberos_realm: Realm,
    spoofed_kdc: Realm,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    service_known: bool,
) -> None:
    assert spoofed_kdc.name == kerberos_realm.name
    if not service_known:
        spoofed_kdc.k5.run_kadminl("delprinc -force pop/localhost")
    keytab = str(kerberos_realm.service_keytab(tmp_path))  # the real realm's key
    monkeypatch.setenv("KRB5_CONFIG", str(spoofed_kdc.krb5_conf))
    monkeypatch.setenv("KRB5RCACHEDIR", str(tmp_path))
    made = Kerberos5Checker("localhost", keytab, timeout=5)
    try:
        result = check(made, "alice", "wonderland")
    finally:
        made.close()
        if not service_known:
            spoofed_kdc.k5.addprinc("pop/localhost")
    assert not result.ok and not result.unavailable
    assert "not verified with the keytab" in result.reason


@dataclass
class SilentKdc:
    """A KDC address that takes every request and never answers (UDP and TCP)."""

    krb5_conf: Path
    udp: socket.socket
    tcp: socket.socket


@pytest.fixture
def silent_kdc(kerberos_realm: Realm, tmp_path: Path) -> Iterator[SilentKdc]:
    # One port number free for both UDP and TCP (the KDC address names one port for both);
    # another test may hold the TCP one, so try until a pair binds.
    for _attempt in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        tcp = socket.socket()
        try:
            tcp.bind(("127.0.0.1", port))
        except OSError:
            udp.close()
            tcp.close()
            continue
        break
    else:
        raise RuntimeError("no port free for both UDP and TCP")
    tcp.listen(64)
    text = kerberos_realm.krb5_conf.read_text()
    text, count = re.subn(r"(?m)^(\s*)kdc = \S+", rf"\g<1>kdc = 127.0.0.1:{port}", text)
    assert count == 1, text
    conf = tmp_path / "silent-krb5.conf"
    conf.write_text(text)
    try:
        yield SilentKdc(conf, udp, tcp)
    finally:
        udp.close()
        tcp.close()


def test_a_silent_kdc_is_unavailable_within_the_timeout(
    kerberos_realm: Realm,
    silent_kdc: SilentKdc,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libkrb5 alone would retry for about half a minute; the checker answers at the bound,
    and with max_pending checks stuck, at once."""
    monkeypatch.setenv("KRB5_CONFIG", str(silent_kdc.krb5_conf))
    keytab = str(kerberos_realm.service_keytab(tmp_path))
    made = Kerberos5Checker("localhost", keytab, timeout=1, max_pending=1)
    try:
        started = time.monotonic()
        result = check(made, "alice", "wonderland")
        took = time.monotonic() - started
        assert result == Kerberos5Result(
            False, "kerberos5 unavailable: no answer within 1 s", unavailable=True
        )
        assert 0.9 < took < 3
        started = time.monotonic()
        result = check(made, "bob", "builder")  # the first check still holds the one slot
        assert time.monotonic() - started < 0.5
        assert result.unavailable and "too many checks" in result.reason
    finally:
        made.close()


def test_a_checks_time_and_slot_count_from_its_start(
    kerberos_realm: Realm,
    silent_kdc: SilentKdc,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """start() takes the slot and starts the clock; the wait, however late it comes, ends
    at the deadline. A driver hands a check over at start() and waits in its pool, so a
    wait queued there behind others' no longer adds its own timeout to theirs."""
    monkeypatch.setenv("KRB5_CONFIG", str(silent_kdc.krb5_conf))
    keytab = str(kerberos_realm.service_keytab(tmp_path))
    made = Kerberos5Checker("localhost", keytab, timeout=1, max_pending=1)
    try:
        wait = made.start("alice", Secret(b"wonderland"))
        assert callable(wait)
        refused = made.start("bob", Secret(b"builder"))  # the one slot is alice's
        assert isinstance(refused, Kerberos5Result) and "too many checks" in refused.reason
        time.sleep(1.2)  # the caller's pool gets to the wait late
        started = time.monotonic()
        assert wait() == Kerberos5Result(
            False, "kerberos5 unavailable: no answer within 1 s", unavailable=True
        )
        assert time.monotonic() - started < 0.2
    finally:
        made.close()


def test_a_stopped_kdc_is_unavailable_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A realm of its own whose KDC is stopped: connection refused, an immediate answer."""
    k5 = make_realm()
    try:
        realm = Realm(k5)
        keytab = str(realm.service_keytab(tmp_path))
        monkeypatch.setenv("KRB5_CONFIG", str(realm.krb5_conf))
        monkeypatch.setenv("KRB5RCACHEDIR", str(tmp_path))
        k5.stop_kdc()
        made = Kerberos5Checker("localhost", keytab, timeout=5)
        try:
            result = check(made, "alice", "wonderland")
        finally:
            made.close()
    finally:
        k5.stop()
        shutil.rmtree(k5.tmpdir, ignore_errors=True)
    assert result.unavailable and "Cannot contact any KDC" in result.reason


# --- through a real pop3d-master ------------------------------------------------------------


@pytest.fixture(scope="module")
def kdc_lab(kerberos_realm: Realm, tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """alice and bob in the credential file with other passwords than the KDC's (so only
    the KDC can let them in), carol in the KDC only; APOP on, from the credential file."""
    root = tmp_path_factory.mktemp("kerberos5")
    keytab = kerberos_realm.service_keytab(root)
    _extra_principals(kerberos_realm)
    lab = Lab(
        root / "lab",
        extra_config=(
            f"sasl_keytab: {keytab}\nsasl_pwcheck_method: kerberos5\nkerberos5_timeout: 3\n"
            "sasl_mech_list: PLAIN LOGIN SCRAM-SHA-256\n"
        ),
        users={"alice": "apop-only", "bob": "apop-only"},
    ).create()
    lab.config.write_text(
        lab.config.read_text().replace("servername: lab.test", "servername: localhost")
    )
    for user in ("carol", EXPIRED):
        lab.reset_maildrop(user)
    return lab


@pytest.fixture(scope="module")
def kdc_server(kerberos_realm: Realm, kdc_lab: Lab) -> Iterator[Server]:
    env = {k: kerberos_realm.env[k] for k in ("KRB5_CONFIG", "KRB5RCACHEDIR")}
    server = start_server(kdc_lab, env=env)
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log_text()


def user_pass(port: int, user: str, password: str) -> tuple[str, int | None]:
    """(answer to PASS, message count after a successful login)."""
    client = poplib.POP3("127.0.0.1", port, timeout=30)
    try:
        client.user(user)
        try:
            answer = client.pass_(password).decode()
        except poplib.error_proto as exc:
            return exc.args[0].decode(), None
        return answer, client.stat()[0]
    finally:
        client.quit()


def auth_plain(port: int, user: str, password: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        sock.sendall(f"AUTH PLAIN {token}\r\nQUIT\r\n".encode())
        return reader.readline().decode().rstrip("\r\n")


@pytest.mark.parametrize(
    ("user", "password", "answer", "count"),
    [
        ("alice", "wonderland", "+OK", 7),  # the KDC's password, not the file's
        ("carol", "carol-secret", "+OK", 0),  # in the KDC only
        ("alice", "apop-only", "-ERR [AUTH] Invalid login", None),  # the file's: no
        ("nobody", "wonderland", "-ERR [AUTH] Invalid login", None),
        (EXPIRED, "explorer", "-ERR [AUTH] Invalid login", None),
    ],
)
def test_user_pass(
    kdc_server: Server, user: str, password: str, answer: str, count: int | None
) -> None:
    got, messages = user_pass(kdc_server.port, user, password)
    assert got.startswith(answer)
    assert messages == count


@pytest.mark.parametrize("how", ["removed", "empty", "garbage"])
def test_a_keytab_spoiled_under_the_server_is_sys_temp(
    kerberos_realm: Realm, kdc_server: Server, kdc_lab: Lab, how: str
) -> None:
    """A right password the server cannot verify: -ERR [SYS/TEMP] and a record without
    SASL(-13), as GSSAPI and KPOP answer for the same keytab (it was [AUTH] and a badlogin
    fail2ban counted, for every user, found probing); the KDC's refusals stay [AUTH]."""
    keytab = kdc_lab.root.parent / "pop.keytab"  # what the server was started with
    saved = keytab.read_bytes()
    # the worker is up (it checks the keytab as it starts, after the port opens)
    assert user_pass(kdc_server.port, "bob", "builder")[0].startswith("+OK")
    seen = len(kdc_server.log_text())
    try:
        spoil_keytab(keytab, how, kerberos_realm)
        assert user_pass(kdc_server.port, "alice", "wonderland") == (
            "-ERR [SYS/TEMP] Unable to check the password now, try again later",
            None,
        )
        assert user_pass(kdc_server.port, "alice", "not-wonderland")[0].startswith("-ERR [AUTH]")
    finally:
        keytab.unlink(missing_ok=True)
        keytab.write_bytes(saved)
        keytab.chmod(0o600)
    assert user_pass(kdc_server.port, "alice", "wonderland")[0].startswith("+OK")
    deadline = time.monotonic() + 5
    while kdc_server.log_text()[seen:].count("badlogin:") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    failures = [e for e in kdc_server.log_text()[seen:].splitlines() if "badlogin:" in e]
    assert len(failures) == 2, failures
    assert "result=<unavailable>" in failures[0] and "SASL(-13)" not in failures[0]
    assert "keytab: " in failures[0]
    assert "result=<fail>" in failures[1] and "wrong password" in failures[1]


def auth_login(port: int, user: str, password: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"AUTH LOGIN\r\n")
        for field in (user, password):
            assert reader.readline().startswith(b"+ ")
            sock.sendall(base64.b64encode(field.encode()) + b"\r\n")
        answer = reader.readline().decode().rstrip("\r\n")
        sock.sendall(b"QUIT\r\n")
        return answer


def test_a_password_with_a_nul_logs_no_one_in(kdc_server: Server) -> None:
    """alice's password is wonderland: what follows a NUL is part of the password, not cut
    off by libkrb5 (found probing: both logged in)."""
    assert user_pass(kdc_server.port, "alice", "wonderland\0anything") == (
        "-ERR [AUTH] Invalid login",
        None,
    )
    assert auth_login(kdc_server.port, "alice", "wonderland\0junk").startswith("-ERR [AUTH]")
    assert auth_login(kdc_server.port, "alice", "wonderland").startswith("+OK")


@pytest.mark.parametrize(
    ("user", "password", "answer"),
    [
        ("bob", "builder", "+OK"),
        ("carol", "carol-secret", "+OK"),  # no credential-file entry needed after the KDC
        ("bob", "apop-only", "-ERR [AUTH]"),
        ("nobody", "x", "-ERR [AUTH]"),
        (EXPIRED, "explorer", "-ERR [AUTH]"),
    ],
)
def test_auth_plain(kdc_server: Server, user: str, password: str, answer: str) -> None:
    assert auth_plain(kdc_server.port, user, password).startswith(answer)


def test_audit_log_names_the_reason(kdc_server: Server) -> None:
    user_pass(kdc_server.port, EXPIRED, "explorer")
    deadline = time.monotonic() + 5
    while "password expired" not in kdc_server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = kdc_server.log_text()
    assert re.search(rf"badlogin: .* user=<{EXPIRED}> .*result=<fail> .*password expired", log)
    assert "explorer" not in kdc_server.log_text()


def test_silent_kdc_is_sys_temp_and_others_are_served(
    kerberos_realm: Realm, kdc_lab: Lab, silent_kdc: SilentKdc
) -> None:
    """A KDC that never answers: -ERR [SYS/TEMP] at kerberos5_timeout (3 s), not libkrb5's
    half minute; meanwhile a second connection gets CAPA, an APOP login and NOOP at once."""
    env = {
        "KRB5_CONFIG": str(silent_kdc.krb5_conf),
        "KRB5RCACHEDIR": kerberos_realm.env["KRB5RCACHEDIR"],
    }
    server = start_server(kdc_lab, env=env)
    try:
        answers: dict[str, object] = {}

        def slow_login() -> None:
            started = time.monotonic()
            answers["pass"] = user_pass(server.port, "alice", "wonderland")[0]
            answers["took"] = time.monotonic() - started

        thread = threading.Thread(target=slow_login)
        thread.start()
        time.sleep(0.3)  # the PASS is waiting on the KDC now
        started = time.monotonic()
        other = poplib.POP3("127.0.0.1", server.port, timeout=30)
        other.capa()
        other.apop("bob", "apop-only")
        other.noop()
        assert other.stat()[0] == 3
        other.quit()
        # Served while the first login was still waiting on the KDC (the proof), and
        # before a loop blocked by that wait would have been freed by the timeout (3 s
        # after the PASS, 2.7 s after this connection began): a loose bound, the suite
        # shares two cores (2.0 was seen missed by 10 ms under a full suite's load).
        assert thread.is_alive()
        assert time.monotonic() - started < 2.5
        thread.join(30)
        assert str(answers["pass"]).startswith("-ERR [SYS/TEMP]")
        assert 2.5 < float(str(answers["took"])) < 7
        assert auth_plain(server.port, "bob", "builder").startswith("-ERR [SYS/TEMP]")
    finally:
        assert server.stop() == 0
    log = server.log_text()
    assert "no answer within 3 s" in log and "Traceback" not in log


def test_logins_beyond_the_pending_limit_are_answered_at_once(
    kerberos_realm: Realm, silent_kdc: SilentKdc, tmp_path: Path
) -> None:
    """20 logins at once against a KDC that never answers, 16 checks per worker allowed to
    wait on it: 16 answers -ERR [SYS/TEMP] at kerberos5_timeout (2 s), 4 at once. Found
    probing: the checks waited for one of the worker's 8 checking threads before their
    timeout started and before they took a slot, so of 20 logins 8 took twice the timeout
    and none was answered at once."""
    keytab = kerberos_realm.service_keytab(tmp_path)
    lab = Lab(
        tmp_path / "lab",
        extra_config=(
            f"sasl_keytab: {keytab}\nsasl_pwcheck_method: kerberos5\nkerberos5_timeout: 2\n"
        ),
    ).create()
    lab.config.write_text(
        lab.config.read_text().replace("servername: lab.test", "servername: localhost")
    )
    env = {
        "KRB5_CONFIG": str(silent_kdc.krb5_conf),
        "KRB5RCACHEDIR": kerberos_realm.env["KRB5RCACHEDIR"],
    }
    server = start_server(lab, env=env)
    try:
        poplib.POP3("127.0.0.1", server.port, timeout=30).quit()  # the worker is up
        answers: list[tuple[float, str]] = []

        def login() -> None:
            client = poplib.POP3("127.0.0.1", server.port, timeout=30)
            client.user("alice")
            started = time.monotonic()
            try:
                client.pass_("wonderland")
            except poplib.error_proto as exc:
                answers.append((time.monotonic() - started, exc.args[0].decode()))
            client.quit()

        threads = [threading.Thread(target=login) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        assert server.stop() == 0
    assert len(answers) == 20
    assert {answer for _took, answer in answers} == {
        "-ERR [SYS/TEMP] Unable to check the password now, try again later"
    }
    took = sorted(took for took, _answer in answers)
    assert took[-1] < 2 + 1.5, took  # none waits for a thread before its own timeout
    assert took[3] < 1 and took[4] > 1.5, took  # the 4 beyond the 16 pending, at once
    log = server.log_text()
    assert log.count("too many checks waiting for the KDC") >= 4, log


# --- start-up ------------------------------------------------------------------------------


def _master(lab: Lab, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    cyrus_conf = tmp_path / "cyrus.conf"
    cyrus_conf.write_text(
        f'SERVICES {{\n  pop3 cmd="pop3d -C {lab.config}" listen="127.0.0.1:1"\n}}\n'
    )
    return subprocess.run(
        [sys.executable, "-m", "pop3d.cli.master", "-C", str(lab.config), "-M", str(cyrus_conf)],
        capture_output=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_kerberos5_without_a_keytab_stops_the_master(kerberos_realm: Realm, tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab", extra_config="sasl_pwcheck_method: kerberos5\n").create()
    line = lab.config.read_text().splitlines().index("sasl_pwcheck_method: kerberos5") + 1
    done = _master(
        lab,
        tmp_path,
        {
            "KRB5_CONFIG": str(kerberos_realm.krb5_conf),
            "KRB5_KTNAME": f"FILE:{tmp_path}/none.keytab",
        },
    )
    assert done.returncode == 78, done.stderr
    assert f"{lab.config}:{line}:".encode() in done.stderr and b"No such file" in done.stderr
    assert b"Traceback" not in done.stderr


def test_kerberos5_with_a_keytab_for_another_host_stops_the_master(
    kerberos_realm: Realm, tmp_path: Path
) -> None:
    keytab = kerberos_realm.service_keytab(tmp_path)
    lab = Lab(
        tmp_path / "lab", extra_config=f"sasl_pwcheck_method: kerberos5\nsasl_keytab: {keytab}\n"
    ).create()  # servername: lab.test, the keytab holds pop/localhost
    line = lab.config.read_text().splitlines().index(f"sasl_keytab: {keytab}") + 1
    done = _master(lab, tmp_path, {"KRB5_CONFIG": str(kerberos_realm.krb5_conf)})
    assert done.returncode == 78, done.stderr
    assert f"{lab.config}:{line}:".encode() in done.stderr
    assert b"no key for pop/lab.test" in done.stderr
