"""``pop3d -k`` under ``pop3d-master``: the real service, with a real KDC (k5test).

One master per test module (and xdist worker) runs a ``pop3`` service and a ``kpop``
service (``-k``; keytab: a mode-0600 copy of the realm's, which holds ``pop/localhost`` and
also ``host/localhost``); the expired-ticket test has a master of its own. fetchmail
``-p KPOP`` fetches alice's maildrop; every bad input is its own connection to the real
server, each ends in the answer MIT's recvauth would give and a closed connection, the
other sessions are served meanwhile, and the log has no traceback.
"""

from __future__ import annotations

import base64
import os
import poplib
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pop3d.kpop.handshake import Handshake, Rejected
from tests.server.test_audit import FAIL2BAN
from tests.support.fetchmail_kpop import FETCHED, NO_MAIL, fetchmail_kpop
from tests.support.kerberos import Realm
from tests.support.kpop import drive_socket, gssapi_ap_req, gssapi_first_token
from tests.support.lab import Lab, Server, start_server
from tests.support.sendauth import sendauth

KRB5_SENDAUTH_REJECTED = -1765328177
TKT_EXPIRED, REPEAT, NOT_US, INAPP_CKSUM = 32, 34, 35, 50
VERSIONS = b"\0\0\0\x13KRB5_SENDAUTH_V1.0\0" + b"\0\0\0\x09KPOPV1.0\0"
HANDSHAKE_LIMIT = 2  # kpop_handshake_timeout in this lab
RECEIVED = re.compile(rb"^Received: from ", re.MULTILINE)


@pytest.fixture(scope="module")
def server(kerberos_realm: Realm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("kpop-server")
    keytab = root / "pop.keytab"
    shutil.copyfile(kerberos_realm.keytab, keytab)
    keytab.chmod(0o600)
    # servername: the GSSAPI mechanisms, which sasl_keytab also enables, want pop/<servername>
    extra = (
        f"servername: localhost\nsasl_keytab: {keytab}\nkpop_handshake_timeout: {HANDSHAKE_LIMIT}\n"
    )
    lab = Lab(root / "lab", extra_config=extra).create()
    env = {"KRB5_CONFIG": str(kerberos_realm.krb5_conf), "KRB5RCACHEDIR": str(root)}
    running = start_server(lab, {"pop3": "", "kpop": "-k"}, env=env)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(autouse=True)
def no_traceback(server: Server) -> Iterator[None]:
    yield
    assert "Traceback" not in server.log_text()


def connect(server: Server, service: str = "kpop") -> socket.socket:
    """Blocking (MIT's sendauth reads the fd itself), with a kernel time limit instead of
    Python's (which would make the fd non-blocking)."""
    sock = socket.create_connection(("127.0.0.1", server.ports[service]), timeout=15)
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 15, 0))
    return sock


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = bytearray()
    while chunk := sock.recv(65536):
        out += chunk
    return bytes(out)


def line(sock: socket.socket) -> bytes:
    out = bytearray()
    while not out.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def exchange(sock: socket.socket, command: bytes) -> bytes:
    sock.sendall(command + b"\r\n")
    return line(sock)


def krb_error_code(reply: bytes) -> int:
    """error-code of a framed KRB-ERROR (RFC 4120 [6] INTEGER)."""
    (length,) = struct.unpack(">I", reply[:4])
    body = reply[4 : 4 + length]
    assert len(body) == length and body[:1] == b"\x7e", reply[:8].hex()
    at = body.index(b"\xa6\x03\x02\x01")
    return body[at + 4]


def captured_ap_req(ccache: str) -> bytes:
    """A fresh AP-REQ from the fetchmail-style client, caught by a stand-in that checks
    nothing (so no replay cache has seen it)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
        client = _thread(lambda: sendauth(theirs, ccache))
        outcome = drive_socket(Handshake(lambda _ap_req: Rejected("captured", b"")), ours)
        ours.shutdown(socket.SHUT_RDWR)
        client.join(10)
    assert outcome.received.startswith(VERSIONS)
    return outcome.received[len(VERSIONS) :]


def _thread(target: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


# --- fetchmail ----------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.skipif(not shutil.which("fetchmail"), reason="fetchmail is not installed")
def test_fetchmail_fetches_every_message_then_finds_nothing(
    server: Server, ccache: Callable[[str], str], krb5_env: Realm, tmp_path: Path
) -> None:
    lab = server.lab
    lab.reset_maildrop("alice")
    messages = [path.read_bytes() for path in lab.messages("alice")]
    assert messages
    env = {"KRB5_CONFIG": str(krb5_env.krb5_conf), "KRB5CCNAME": ccache("alice")}
    home = tmp_path / "fm"
    first = fetchmail_kpop(port=server.ports["kpop"], user="alice", env=env, home=home)
    assert first.code == FETCHED, first.log + server.log_text()
    assert len(RECEIVED.findall(first.delivered)) == len(messages)
    for message in messages:
        subject = re.search(rb"^Subject: .*$", message.replace(b"\r\n", b"\n"), re.MULTILINE)
        assert subject is not None and subject.group() in first.delivered
    second = fetchmail_kpop(port=server.ports["kpop"], user="alice", env=env, home=home)
    assert second.code == NO_MAIL, second.log
    assert len(RECEIVED.findall(second.delivered)) == len(messages)  # nothing more
    log = server.log_text()
    assert re.search(r"kpop\.good principal=alice@\S+ user=alice", log)
    assert re.search(r"login: \S+ \[\S+\] alice KPOP User logged in .* kpop=<alice@", log)
    assert "tickets for pop/localhost accepted" in log


# --- the POP3 side of a good handshake ------------------------------------------------------


def test_after_the_handshake_only_the_tickets_user(
    server: Server, ccache: Callable[[str], str]
) -> None:
    server.lab.reset_maildrop("alice")
    with connect(server) as sock:
        result = sendauth(sock, ccache("alice"))
        assert result.code == 0, result.message
        assert line(sock).startswith(b"+OK ")
        capa = exchange(sock, b"CAPA")
        body = bytearray()
        while not body.endswith(b"\r\n.\r\n"):
            body += sock.recv(4096)
        assert capa.startswith(b"+OK")
        assert b"\r\nUSER\r\n" in body and b"SASL" not in body and b"STLS" not in body
        assert exchange(sock, b"USER bob").startswith(b"-ERR [AUTH] ")
        assert exchange(sock, b"APOP bob 0123456789abcdef0123456789abcdef").startswith(b"-ERR")
        assert exchange(sock, b"AUTH PLAIN").startswith(b"-ERR")
        assert exchange(sock, b"USER alice").startswith(b"+OK")
        assert exchange(sock, b"PASS krb_ticket").startswith(b"+OK")
        assert exchange(sock, b"STAT").startswith(b"+OK ")
        assert exchange(sock, b"QUIT").startswith(b"+OK")
        port = sock.getsockname()[1]
    # Filed under the ticket's user, a refusal: not a failed login of bob's fail2ban counts
    records = [entry for entry in session_lines(server, port) if "badlogin:" in entry]
    (record,) = [entry for entry in records if "result=<abandoned>" not in entry]
    assert "KPOP (alice) [may not act as bob: ticket is for alice@" in record, record
    assert "result=<refused>" in record and "SASL(-13)" not in record
    # APOP and AUTH, refused on a KPOP connection before anything was checked: recorded
    # without a verdict
    assert [entry.split(" [", 2)[1].split("] ", 1)[1] for entry in records if entry != record] == [
        "APOP (bob)",
        "PLAIN (-)",
    ], records


def test_a_principal_differing_only_in_case_gets_no_maildrop(
    server: Server, ccache: Callable[[str], str]
) -> None:
    """ALICE@REALM is another principal than alice@REALM: its USER alice is refused."""
    with connect(server) as sock:
        result = sendauth(sock, ccache("ALICE"))
        assert result.code == 0, result.message
        assert line(sock).startswith(b"+OK ")
        assert exchange(sock, b"USER alice").startswith(b"-ERR [AUTH] ")
        assert exchange(sock, b"PASS krb_ticket").startswith(b"-ERR [AUTH] ")
        assert exchange(sock, b"STAT").startswith(b"-ERR ")
        assert exchange(sock, b"QUIT").startswith(b"+OK")
        port = sock.getsockname()[1]
    assert "whose user ALICE is not the canonical name alice" in server.log_text()
    # The ticket proved ALICE: it was 'KPOP (alice) [SASL(-13): ...' (found probing)
    (record,) = [entry for entry in session_lines(server, port) if "badlogin:" in entry]
    assert "KPOP (ALICE) [may not act as alice: ticket is for ALICE@" in record, record
    assert "result=<refused>" in record and "SASL(-13)" not in record


@pytest.fixture(scope="module")
def unmapped(kerberos_realm: Realm) -> str:
    """A principal with an instance: no local user under the realm's rules."""
    kerberos_realm.k5.addprinc("x/admin", "instance-secret")
    return "x/admin"


def instance_ccache(realm: Realm, principal: str, folder: Path) -> str:
    cache = folder / "instance.cc"
    env = dict(realm.env, KRB5CCNAME=f"FILE:{cache}")
    subprocess.run(
        ["kinit", principal], input=b"instance-secret\n", env=env, check=True, capture_output=True
    )
    return f"FILE:{cache}"


def test_a_proven_principal_without_a_user_is_refused_not_failed(
    server: Server, krb5_env: Realm, unmapped: str, tmp_path: Path
) -> None:
    """The realm proved x/admin, which maps to no local user: over KPOP and GSSAPI alike a
    refusal, not 'SASL(-13)' for fail2ban (found probing); the client's answers unchanged."""
    cache = instance_ccache(krb5_env, unmapped, tmp_path)
    with connect(server) as sock:
        kpop_port = sock.getsockname()[1]
        assert sendauth(sock, cache).code == 0
        assert line(sock) == b"-ERR [AUTH] This Kerberos principal has no mailbox here\r\n"
    token = gssapi_first_token(cache)
    with socket.create_connection(("127.0.0.1", server.ports["pop3"]), timeout=15) as sock:
        gssapi_port = sock.getsockname()[1]
        assert line(sock).startswith(b"+OK ")
        answer = exchange(sock, b"AUTH GSSAPI " + base64.b64encode(token))
        assert answer == b"-ERR [AUTH] Invalid login\r\n"
        assert exchange(sock, b"QUIT").startswith(b"+OK")
    for port, text in [(kpop_port, "KPOP ("), (gssapi_port, "GSSAPI (")]:
        (record,) = [entry for entry in session_lines(server, port) if "badlogin:" in entry]
        assert text in record and "x/admin@" in record, record
        assert "result=<refused>" in record and "SASL(-13)" not in record, record


def test_a_tickets_user_without_a_maildrop_is_refused_not_failed(
    server: Server, ccache: Callable[[str], str]
) -> None:
    """carol has a principal and no user here: USER carol is hers, PASS finds no one."""
    with connect(server) as sock:
        assert sendauth(sock, ccache("carol")).code == 0
        assert line(sock).startswith(b"+OK ")
        assert exchange(sock, b"USER carol").startswith(b"+OK")
        assert exchange(sock, b"PASS krb_ticket") == b"-ERR [AUTH] Invalid login\r\n"
        assert exchange(sock, b"QUIT").startswith(b"+OK")
        port = sock.getsockname()[1]
    (record,) = [entry for entry in session_lines(server, port) if "badlogin:" in entry]
    assert "KPOP (carol) " in record, record
    assert "result=<refused>" in record and "SASL(-13)" not in record


def test_pipelined_commands_after_the_ap_req_reach_the_session(
    server: Server, ccache: Callable[[str], str]
) -> None:
    """Bytes sent right after the AP-REQ (before our answer) are the session's input."""
    ap_req = captured_ap_req(ccache("alice"))
    with connect(server) as sock:
        sock.sendall(VERSIONS + ap_req + b"CAPA\r\nQUIT\r\n")
        received = until_closed(sock)
    assert received[:5] == b"\x00\0\0\0\0"
    assert b"+OK Capability list follows" in received and received.endswith(b"+OK Bye\r\n")


# --- bad input, each against the real server -------------------------------------------------


def test_wrong_sendauth_version(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"\0\0\0\x13KRB5_SENDAUTH_V9.9\0" + b"\0\0\0\x09KPOPV1.0\0")
        assert until_closed(sock) == b"\x01"


def test_wrong_application_version(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"\0\0\0\x13KRB5_SENDAUTH_V1.0\0" + b"\0\0\0\x09KPOPV0.1\0")
        assert until_closed(sock) == b"\x02"


@pytest.mark.parametrize("where", ["first message", "AP-REQ"])
def test_a_length_prefix_of_2_to_the_31(server: Server, where: str) -> None:
    with connect(server) as sock:
        prefix = VERSIONS if where == "AP-REQ" else b""
        sock.sendall(prefix + struct.pack(">I", 2**31))
        assert until_closed(sock) == (b"\x00" if prefix else b"")


def test_a_truncated_ap_req(server: Server, ccache: Callable[[str], str]) -> None:
    ap_req = captured_ap_req(ccache("alice"))[4:]
    cut = len(ap_req) // 2
    with connect(server) as sock:  # a whole message whose DER ends too soon
        sock.sendall(VERSIONS + struct.pack(">I", cut) + ap_req[:cut])
        reply = until_closed(sock)
    assert reply[:1] == b"\x00"
    krb_error_code(reply[1:])
    with connect(server) as sock:  # a message that never arrives whole
        sock.sendall(VERSIONS + struct.pack(">I", len(ap_req)) + ap_req[:cut])
        sock.shutdown(socket.SHUT_WR)
        assert until_closed(sock) == b"\x00"


def test_a_ticket_for_another_service_whose_key_the_keytab_holds(
    server: Server, ccache: Callable[[str], str]
) -> None:
    with connect(server) as sock:
        result = sendauth(sock, ccache("alice"), service="host")
        assert result.code == KRB5_SENDAUTH_REJECTED
        assert result.server_error == NOT_US
        assert result.server_text == b"KPOP authentication failed"
        assert until_closed(sock) == b""


def test_the_ap_req_of_a_gssapi_token(server: Server, ccache: Callable[[str], str]) -> None:
    """Cut out of an ``AUTH GSSAPI`` token: refused like any bad AP-REQ, and the log says why."""
    ap_req = gssapi_ap_req(ccache("alice"))
    with connect(server) as sock:
        sock.sendall(VERSIONS + struct.pack(">I", len(ap_req)) + ap_req + b"USER alice\r\n")
        reply = until_closed(sock)
    assert reply[:1] == b"\x00"
    assert krb_error_code(reply[1:]) == INAPP_CKSUM
    assert reply.endswith(b"KPOP authentication failed") and b"+OK" not in reply
    assert "the AP-REQ of a GSSAPI token (GSS checksum 0x8003)" in server.log_text()


def test_a_replayed_ap_req(server: Server, ccache: Callable[[str], str]) -> None:
    ap_req = captured_ap_req(ccache("alice"))
    with connect(server) as sock:
        sock.sendall(VERSIONS + ap_req)
        first = b""
        while len(first) < 5 and (chunk := sock.recv(5 - len(first))):
            first += chunk
        assert first == b"\x00\0\0\0\0"  # accepted (the AP-REP and the greeting follow)
    with connect(server) as sock:
        sock.sendall(VERSIONS + ap_req)
        reply = until_closed(sock)
    assert reply[:1] == b"\x00"
    assert krb_error_code(reply[1:]) == REPEAT
    assert "Request is a replay" in server.log_text()


@pytest.mark.parametrize("spoiled", ["removed", "garbage"])
def test_the_keytab_spoiled_under_the_running_server(
    server: Server, ccache: Callable[[str], str], spoiled: str
) -> None:
    """The server's fault, not the client's: GSSAPI answers -ERR [SYS/TEMP], KPOP its
    KRB-ERROR, and neither login is logged as a failure fail2ban would count."""
    keytab = server.lab.root.parent / "pop.keytab"  # what both services were started with
    saved = keytab.read_bytes()
    token = gssapi_first_token(ccache("alice"))
    ap_req = captured_ap_req(ccache("alice"))
    seen = len(server.log_text())
    try:
        keytab.unlink()
        if spoiled == "garbage":
            keytab.write_bytes(b"\x05\x02" + bytes(range(256)))
            keytab.chmod(0o600)
        with socket.create_connection(("127.0.0.1", server.ports["pop3"]), timeout=15) as sock:
            assert line(sock).startswith(b"+OK ")
            answer = exchange(sock, b"AUTH GSSAPI " + base64.b64encode(token))
            assert (
                answer
                == b"-ERR [SYS/TEMP] Unable to check the credentials now, try again later\r\n"
            )
            assert exchange(sock, b"QUIT").startswith(b"+OK")
        with connect(server) as sock:
            sock.sendall(VERSIONS + ap_req)
            reply = until_closed(sock)
        assert reply[:1] == b"\x00"
        krb_error_code(reply[1:])
    finally:
        keytab.write_bytes(saved)
        keytab.chmod(0o600)
    failures = [entry for entry in server.log_text()[seen:].splitlines() if "badlogin:" in entry]
    assert [("GSSAPI" in entry, "KPOP" in entry) for entry in failures] == [
        (True, False),
        (False, True),
    ]
    for entry in failures:
        assert "result=<unavailable>" in entry and "SASL(-13)" not in entry, entry


def session_lines(server: Server, port: int) -> list[str]:
    """The log lines of the connection from our ``port``, once its end is logged (after
    its audit records)."""
    peer = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while f"peer={peer} ended:" not in (log := server.log_text()):
        assert time.monotonic() < deadline, f"no end logged for {peer}"
        time.sleep(0.05)
    return [entry for entry in log.splitlines() if re.search(rf"\b{re.escape(peer)}\b", entry)]


@pytest.mark.parametrize(
    "probe",
    [
        b"",  # a health check's connect and close
        b"GET / HTTP/1.0\r\n\r\n",
        b"\0\0\0\x13KRB5_SENDAUTH_V9.9\0" + b"\0\0\0\x09KPOPV1.0\0",
        VERSIONS,  # then nothing
    ],
    ids=["connect-close", "http", "bad-version", "no-ap-req"],
)
def test_a_connection_that_offers_no_ticket_is_not_a_failed_login(
    server: Server, probe: bytes
) -> None:
    """It was 'badlogin: ... KPOP (-) [SASL(-13): ...]', which fail2ban counts: health
    checks and port scans had their host banned (found probing). Now, like a failed TLS
    handshake, the session's end only."""
    with connect(server) as sock:
        port = sock.getsockname()[1]
        sock.sendall(probe)
        sock.shutdown(socket.SHUT_WR)
        until_closed(sock)
    entries = session_lines(server, port)
    assert [entry for entry in entries if "ended: KPOP: " in entry], entries
    assert not [entry for entry in entries if "badlogin:" in entry or "SASL(-13)" in entry]


def test_a_refused_ticket_is_a_failed_login(server: Server, ccache: Callable[[str], str]) -> None:
    with connect(server) as sock:
        port = sock.getsockname()[1]
        assert sendauth(sock, ccache("alice"), service="host").server_error == NOT_US
        until_closed(sock)
    failures = [entry for entry in session_lines(server, port) if "badlogin:" in entry]
    assert len(failures) == 1 and "result=<fail>" in failures[0], failures
    assert re.search(
        r"KPOP \(-\) \[SASL\(-13\): authentication failure: ticket refused", failures[0]
    )


def test_a_silent_client_is_closed_and_others_are_served_meanwhile(
    server: Server, ccache: Callable[[str], str]
) -> None:
    started = time.monotonic()
    with connect(server) as silent:
        silent_port = silent.getsockname()[1]
        # meanwhile: a plain POP3 session and a KPOP login on the same master
        pop = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=10)
        pop.user("bob")
        pop.pass_("builder")
        assert pop.stat()[0] >= 0
        pop.quit()
        with connect(server) as sock:
            assert sendauth(sock, ccache("bob")).code == 0
            assert line(sock).startswith(b"+OK ")
        assert until_closed(silent) == b""
    waited = time.monotonic() - started
    assert HANDSHAKE_LIMIT - 0.5 <= waited < HANDSHAKE_LIMIT + 5
    assert f"no handshake within {HANDSHAKE_LIMIT} s" in server.log_text()
    # No ticket came: not a failed login (it was one, "time limit", which fail2ban counted)
    assert not [entry for entry in session_lines(server, silent_port) if "badlogin:" in entry]


def test_an_expired_ticket(krb5_env: Realm, tmp_path: Path) -> None:
    """A ticket that expired a few seconds ago, with a fresh authenticator: MIT checks the
    ticket's times before the authenticator's clock skew, so the answer is "ticket expired".
    The KDC issues a 2-second ticket; this master's krb5.conf allows 1 s of skew (its own
    copy, so the other tests keep the realm's); the client, whose clock runs 10 s behind,
    still takes its cached ticket for valid."""
    conf = tmp_path / "krb5.conf"
    text = krb5_env.krb5_conf.read_text()
    conf.write_text(text.replace("[libdefaults]", "[libdefaults]\n    clockskew = 1", 1))
    keytab = krb5_env.service_keytab(tmp_path)
    extra = f"servername: localhost\nsasl_keytab: {keytab}\n"
    lab = Lab(tmp_path / "lab", extra_config=extra).create()
    env = {"KRB5_CONFIG": str(conf), "KRB5RCACHEDIR": str(tmp_path)}
    server = start_server(lab, {"kpop": "-k"}, env=env)
    try:
        cache = tmp_path / "short-ccache"
        client_env = dict(krb5_env.env, KRB5CCNAME=f"FILE:{cache}")
        subprocess.run(
            ["kinit", "-l", "2s", krb5_env.principal("alice")],
            input=b"wonderland\n", env=client_env, check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(["kvno", "pop/localhost"], env=client_env, check=True, capture_output=True)
        time.sleep(4.5)
        with connect(server) as sock:
            result = sendauth(sock, f"FILE:{cache}", clock_offset=-10)
            assert result.code == KRB5_SENDAUTH_REJECTED, result.message
            assert result.server_error == TKT_EXPIRED
            assert until_closed(sock) == b""
        assert "Ticket expired" in server.log_text()
        assert "Traceback" not in server.log_text()
    finally:
        server.stop()


# A principal spelling a badlogin record for another address
FORGED = "badlogin: x[6.6.6.6] x SASL(-13): authentication failure: "


@pytest.mark.parametrize(
    ("principal", "shown"), [(FORGED, None), ("a[b](c)", "a\\x5bb\\x5d\\x28c\\x29")]
)
def test_a_principal_is_escaped_in_every_line(
    server: Server, krb5_env: Realm, tmp_path: Path, principal: str, shown: str | None
) -> None:
    """The ended line ('principal ... is not a local user') and kpop.good quoted it with only
    unprintable characters escaped: fail2ban's pattern found host 6.6.6.6 there (found
    probing). Now escaped as the audit records' fields; and a name with ':' or a trailing
    space, which the identity rules refuse, maps to no user."""
    # kadmin's own parser takes double quotes, not k5test's shell quoting
    krb5_env.k5.run_kadminl(f'addprinc -pw instance-secret "{principal}"')
    cache = instance_ccache(krb5_env, principal, tmp_path)
    with connect(server) as sock:
        port = sock.getsockname()[1]
        assert sendauth(sock, cache).code == 0
        greeting = line(sock)
        if shown is not None:
            assert exchange(sock, b"QUIT").startswith(b"+OK")
    entries = session_lines(server, port)
    assert not [entry for entry in entries if FAIL2BAN.search(entry)], entries
    if shown is None:
        assert greeting.startswith(b"-ERR [AUTH] This Kerberos principal has no mailbox")
        assert [entry for entry in entries if "is not a local user" in entry], entries
    else:
        assert greeting.startswith(b"+OK ")
        (good,) = [entry for entry in entries if "kpop.good" in entry]
        assert f"principal={shown}@{krb5_env.name} user={shown} " in good, good


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 76),  # not a KPOP handshake: no session took place
        (b"", 76),  # nothing at all
    ],
)
def test_pop3d_x_k_exits_76_when_the_handshake_fails(
    kerberos_realm: Realm, tmp_path: Path, sent: bytes, status: int
) -> None:
    """pop3d(8): with -X and -k, a KPOP handshake that failed is exit 76 (EX_PROTOCOL), as
    a failed TLS handshake is with -s (the page named only -s; found probing)."""
    keytab = tmp_path / "pop.keytab"
    shutil.copyfile(kerberos_realm.keytab, keytab)
    keytab.chmod(0o600)
    extra = f"servername: localhost\nsasl_keytab: {keytab}\nkpop_handshake_timeout: 2\n"
    lab = Lab(tmp_path / "lab", extra_config=extra).create()
    env = dict(os.environ, KRB5_CONFIG=str(kerberos_realm.krb5_conf), KRB5RCACHEDIR=str(tmp_path))
    done = subprocess.run(lab.pop3d_x("-k"), input=sent, capture_output=True, timeout=60, env=env)
    assert done.returncode == status, done.stderr
    assert b"Traceback" not in done.stderr
