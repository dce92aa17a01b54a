"""Python's poplib, the standard library client, against a real pop3d-master: every command
it has, STLS and POP3S, and the exact texts of the answers it hands to its caller."""

from __future__ import annotations

import poplib
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from pop3d import IMPLEMENTATION
from tests.interop.conftest import ALICE_SIZES, BOB_SIZES, Served, canonical, uid
from tests.support.lab import Lab, Server

pytestmark = pytest.mark.interop

TIMEOUT = 10
GREETING_START = f"+OK lab.test {IMPLEMENTATION} server ready <".encode()
LOCKED = b"+OK Mailbox locked and ready SESSIONID=<"
# inside TLS (and on POP3S), before login: the -PLUS mechanisms need the TLS channel
SASL_TLS = ["SCRAM-SHA-512-PLUS", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]
SASL_CLEAR = ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]
CAPA_BEFORE_LOGIN = {
    "SASL": SASL_TLS,
    "EXPIRE": ["NEVER"],
    "TOP": [],
    "UIDL": [],
    "PIPELINING": [],
    "RESP-CODES": [],
    "AUTH-RESP-CODE": [],
    "USER": [],
    "IMPLEMENTATION": IMPLEMENTATION.split(),
}


@contextmanager
def connect(served: Served) -> Iterator[poplib.POP3]:
    pop = poplib.POP3("127.0.0.1", served.port, timeout=TIMEOUT)
    try:
        yield pop
    finally:
        pop.close()


def login(pop: poplib.POP3, user: str, password: str) -> None:
    assert pop.user(user) == b"+OK User name accepted, password please"
    assert pop.pass_(password).startswith(LOCKED)


def expect_error(text: bytes, call: object, *args: object) -> None:
    assert callable(call)
    with pytest.raises(poplib.error_proto) as caught:
        call(*args)
    assert caught.value.args == (text,)


def test_greeting_user_pass_stat_list_uidl_noop_quit(served: Served) -> None:
    messages = served.lab.messages("alice")
    with connect(served) as pop:
        welcome = pop.getwelcome()
        assert welcome.startswith(GREETING_START)
        assert welcome.endswith(b"@lab.test>")
        login(pop, "alice", "wonderland")
        assert pop.stat() == (7, 28700)

        response, listing, octets = pop.list()
        assert response == b"+OK 7 messages (28700 octets)"
        assert listing == [f"{n} {size}".encode() for n, size in enumerate(ALICE_SIZES, 1)]
        assert octets == sum(len(line) + 2 for line in listing)
        assert pop.list(5) == b"+OK 5 5000"  # type: ignore[comparison-overlap]
        assert pop.list(7) == b"+OK 7 300"  # type: ignore[comparison-overlap]

        response, uids, _ = pop.uidl()
        assert response == b"+OK Unique-id listing follows"
        assert uids == [f"{n} {uid(path)}".encode() for n, path in enumerate(messages, 1)]
        assert uids[0] == b"1 1700000001.M1P1.lab"
        assert pop.uidl(3) == b"+OK 3 1700000003.M3P1.lab"

        assert pop.noop() == b"+OK"
        assert pop.quit() == b"+OK Logging out"
    assert len(served.lab.messages("alice")) == 7


def test_apop(served: Served) -> None:
    with connect(served) as pop:
        assert pop.apop("alice", "wonderland").startswith(LOCKED)
        assert pop.stat() == (7, 28700)
        assert pop.quit() == b"+OK Logging out"
    with connect(served) as pop:
        expect_error(b"-ERR [AUTH] Invalid login", pop.apop, "alice", "not the secret")
        # the session survives a failed login
        assert pop.apop("bob", "builder").startswith(LOCKED)
        assert pop.stat() == (3, sum(BOB_SIZES))
        assert pop.quit() == b"+OK Logging out"


def test_capa_before_and_after_login(served: Served) -> None:
    """RFC 2449 §5: "Capabilities available in the AUTHORIZATION state MUST be announced in
    both states" (SASL, USER and STLS too, which Cyrus and Dovecot leave out after login)."""
    with connect(served) as pop:
        before = pop.capa()
        assert before == {"STLS": [], **CAPA_BEFORE_LOGIN, "SASL": SASL_CLEAR}
        login(pop, "alice", "wonderland")
        assert pop.capa() == before
        assert pop.quit() == b"+OK Logging out"


def test_retr_every_message_is_the_stored_one(served: Served) -> None:
    """poplib undoes the dot-stuffing; what is left must be the stored file with CRLF line
    ends, and poplib's octet count (CRLF counted, stuffing not) must be the LIST size."""
    messages = served.lab.messages("alice")
    with connect(served) as pop:
        login(pop, "alice", "wonderland")
        for number, path in enumerate(messages, 1):
            response, lines, octets = pop.retr(number)
            assert response == b"+OK Message follows"
            assert b"".join(line + b"\r\n" for line in lines) == canonical(path), number
            assert octets == ALICE_SIZES[number - 1], number
        # message 2 really exercised the dot-stuffing in both directions
        _, lines, _ = pop.retr(2)
        assert lines[9:13] == [b".", b"..", b".leading dot", b"..two leading dots"]
        assert pop.quit() == b"+OK Logging out"
    assert served.lab.messages("alice") == messages


def test_top(served: Served) -> None:
    messages = served.lab.messages("alice")
    with connect(served) as pop:
        login(pop, "alice", "wonderland")
        for number, body_lines in ((1, 0), (2, 3), (3, 1), (7, 100)):
            stored = canonical(messages[number - 1]).split(b"\r\n")[:-1]
            blank = stored.index(b"")
            response, lines, _ = pop.top(number, body_lines)
            assert response == b"+OK Top of message follows"
            assert lines == stored[: blank + 1 + body_lines], (number, body_lines)
        _, lines, _ = pop.top(2, 3)
        assert lines[-3:] == [b".", b"..", b".leading dot"]
        # more lines than any body has, past 2**32 too: the whole message (RFC 1939)
        whole = pop.retr(2)[1]
        for count in (2**32, 10**40):
            response, lines, _ = pop.top(2, count)
            assert (response, lines) == (b"+OK Top of message follows", whole), count
        assert pop.quit() == b"+OK Logging out"


def test_dele_and_quit_commit_the_deletion(served: Served) -> None:
    first, second, third = served.lab.messages("bob")
    with connect(served) as pop:
        login(pop, "bob", "builder")
        assert pop.dele(1) == b"+OK Message 1 deleted"
        assert pop.stat() == (2, 5000)
        assert pop.list()[1] == [b"2 2000", b"3 3000"]
        expect_error(b"-ERR Message 1 is deleted", pop.retr, 1)
        expect_error(b"-ERR Message 1 is deleted", pop.dele, 1)
        # nothing is removed before QUIT
        assert first.exists()
        assert pop.quit() == b"+OK Logging out, 1 message deleted"
    assert served.lab.messages("bob") == [second, third]

    with connect(served) as pop:
        login(pop, "bob", "builder")
        assert pop.stat() == (2, 5000)
        assert pop.list()[1] == [b"1 2000", b"2 3000"]
        assert pop.uidl()[1] == [f"1 {uid(second)}".encode(), f"2 {uid(third)}".encode()]
        assert b"".join(line + b"\r\n" for line in pop.retr(1)[1]) == canonical(second)
        assert pop.quit() == b"+OK Logging out"


def test_rset_undoes_deletions(served: Served) -> None:
    before = served.lab.messages("bob")
    with connect(served) as pop:
        login(pop, "bob", "builder")
        assert pop.dele(1) == b"+OK Message 1 deleted"
        assert pop.dele(3) == b"+OK Message 3 deleted"
        assert pop.stat() == (1, 2000)
        assert pop.rset() == b"+OK"
        assert pop.stat() == (3, 6000)
        assert pop.quit() == b"+OK Logging out"
    assert served.lab.messages("bob") == before


def test_quit_without_login(served: Served) -> None:
    with connect(served) as pop:
        assert pop.quit() == b"+OK Bye"


def test_errors_raise_error_proto_with_the_exact_text(served: Served) -> None:
    with connect(served) as pop:
        expect_error(b"-ERR STAT is not valid in the AUTHORIZATION state", pop.stat)
        expect_error(b"-ERR [AUTH] Must give USER command first", pop.pass_, "wonderland")
        assert pop.user("alice") == b"+OK User name accepted, password please"
        expect_error(b"-ERR [AUTH] Invalid login", pop.pass_, "not the password")
        expect_error(b"-ERR [AUTH] Invalid login", pop.apop, "nobody", "secret")
        login(pop, "alice", "wonderland")
        expect_error(b"-ERR No such message", pop.retr, 8)
        expect_error(b"-ERR No such message", pop.list, 0)
        expect_error(b"-ERR No such message", pop.uidl, 99)
        expect_error(b"-ERR No such message", pop.top, 8, 0)
        expect_error(b"-ERR Invalid message number", pop.dele, "x")
        expect_error(b"-ERR Invalid number of lines", pop.top, 1, "-1")
        expect_error(b"-ERR USER is not valid in the TRANSACTION state", pop.user, "bob")
        # refusals change nothing
        assert pop.stat() == (7, 28700)
        assert pop.quit() == b"+OK Logging out"


def test_second_session_finds_the_maildrop_locked(served: Served) -> None:
    with connect(served) as first, connect(served) as second:
        login(first, "alice", "wonderland")
        assert second.user("alice") == b"+OK User name accepted, password please"
        expect_error(
            b"-ERR [IN-USE] Maildrop is locked by another session", second.pass_, "wonderland"
        )
        assert first.quit() == b"+OK Logging out"
        # the lock went with the first session
        assert second.user("alice") == b"+OK User name accepted, password please"
        assert second.pass_("wonderland").startswith(LOCKED)
        assert second.quit() == b"+OK Logging out"


def test_stls(served: Served, client_context: ssl.SSLContext) -> None:
    pop = poplib.POP3("localhost", served.port, timeout=TIMEOUT)
    try:
        assert pop.capa() == {"STLS": [], **CAPA_BEFORE_LOGIN, "SASL": SASL_CLEAR}
        assert pop.stls(client_context) == b"+OK Begin TLS negotiation now"
        assert isinstance(pop.sock, ssl.SSLSocket)
        assert pop.sock.version() in ("TLSv1.2", "TLSv1.3")
        # RFC 2595 §4: STLS is no longer offered once TLS is active
        assert pop.capa() == CAPA_BEFORE_LOGIN
        login(pop, "alice", "wonderland")
        assert pop.stat() == (7, 28700)
        _, lines, octets = pop.retr(6)
        assert b"".join(line + b"\r\n" for line in lines) == canonical(
            served.lab.messages("alice")[5]
        )
        assert octets == 20000
        assert pop.quit() == b"+OK Logging out"
    finally:
        pop.close()
    log = served.log()
    assert "] alice plaintext" in log
    pattern = (
        r"^.*login: \S+ \[\S+\] alice plaintext\+TLS User logged in "
        r".* tls=<TLSv1\.[23]> .* layer=<->"
    )
    assert re.search(pattern, log, re.M), log


def test_pop3_ssl(served: Served, client_context: ssl.SSLContext) -> None:
    pop = poplib.POP3_SSL("localhost", served.pop3s, context=client_context, timeout=TIMEOUT)
    try:
        assert pop.getwelcome().startswith(GREETING_START)
        assert isinstance(pop.sock, ssl.SSLSocket)
        assert pop.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert pop.capa() == CAPA_BEFORE_LOGIN
        assert pop.apop("alice", "wonderland").startswith(LOCKED)
        assert pop.stat() == (7, 28700)
        _, lines, _ = pop.retr(2)
        assert b"".join(line + b"\r\n" for line in lines) == canonical(
            served.lab.messages("alice")[1]
        )
        assert pop.quit() == b"+OK Logging out"
    finally:
        pop.close()


def test_pop3_ssl_certificate_is_checked(served: Served) -> None:
    """The lab CA is not in the system store: a default context must refuse the server."""
    with pytest.raises(ssl.SSLCertVerificationError):
        poplib.POP3_SSL(
            "localhost",
            served.pop3s,
            context=ssl.create_default_context(),
            timeout=TIMEOUT,
        )


def test_no_stls_without_a_certificate(lab: Lab, server: Server) -> None:
    """The root fixtures: a lab without TLS, started by the shared start_server helper."""
    pop = poplib.POP3("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        assert pop.capa() == {**CAPA_BEFORE_LOGIN, "SASL": SASL_CLEAR}
        # poplib.stls() would refuse on its own, seeing no STLS in CAPA; ask the server
        stls = pop._shortcmd  # type: ignore[attr-defined]
        expect_error(b"-ERR STLS is not available on this connection", stls, "STLS")
        login(pop, "alice", "wonderland")
        assert pop.stat() == (7, 28700)
        assert pop.quit() == b"+OK Logging out"
    finally:
        pop.close()
    assert len(lab.messages("alice")) == 7
