"""The end of an AUTH exchange, driven through a real session against the lab's Maildir and
credential file: who proven credentials may act as, decided before the server says they
were right; what the audit trail keeps of it; refusals the client must not tell apart."""

from __future__ import annotations

import base64
import re
import time

from cryptography.hazmat.primitives.asymmetric import ed25519

from pop3d.auth.tokens import TokenValidator
from pop3d.protocol import events as ev
from pop3d.sasl.digest_md5 import compute
from tests.support import jwt, scram_client
from tests.support.drive import Driven, drive, settings_for_lab
from tests.support.lab import Lab

INVALID = b"-ERR [AUTH] Invalid login\r\n"


def _decoded(challenge: bytes) -> bytes:
    assert challenge.startswith(b"+ "), challenge
    return base64.b64decode(challenge.removeprefix(b"+ ").strip())


def _line(message: bytes) -> bytes:
    return base64.b64encode(message) + b"\r\n"


def _session(lab: Lab, mechanism: str, admins: frozenset[str] = frozenset()) -> Driven:
    settings = settings_for_lab(sasl_mechanisms=(mechanism,), proxy_authorizers=admins)
    driven = drive(lab, settings)
    driven.feed()
    return driven


def _scram_to_final(driven: Driven, user: str, password: str, header: bytes) -> bytes:
    """SCRAM-SHA-256 up to the client's final message; what the server answers that."""
    bare = scram_client.client_first_bare(user)
    server_first = _decoded(driven.feed(b"AUTH SCRAM-SHA-256 " + _line(header + bare)))
    return driven.feed(_line(scram_client.client_final(password, header, bare, server_first)))


def _digest_md5_response(driven: Driven, user: str, password: str, authzid: str) -> bytes:
    """DIGEST-MD5 from the client's side (RFC 2831 §2.1.2): what the server answers the
    digest-response."""
    challenge = _decoded(driven.feed(b"AUTH DIGEST-MD5\r\n"))
    found = re.search(rb'nonce="([^"]+)"', challenge)
    assert found is not None
    nonce, cnonce, uri = found.group(1), b"client-nonce", b"pop/lab.test"
    response, _ = compute(
        f"{user}:lab.test:{password}".encode(),
        nonce=nonce,
        cnonce=cnonce,
        nc=b"00000001",
        qop=b"auth",
        digest_uri=uri,
        authzid=authzid.encode(),
    )
    message = (
        f'charset=utf-8,username="{user}",realm="lab.test",nonce="{nonce.decode()}",'
        f'nc=00000001,cnonce="{cnonce.decode()}",digest-uri="{uri.decode()}",'
        f'response={response.decode()},qop=auth,authzid="{authzid}"'
    ).encode()
    return driven.feed(_line(message))


def _failures(driven: Driven) -> list[tuple[str, str, bool]]:
    return [
        (n.user, n.reason, n.authenticated) for n in driven.notices if isinstance(n, ev.LoginFailed)
    ]


def test_scram_refuses_an_authorization_identity_before_the_server_signature(lab: Lab) -> None:
    """RFC 5802 §5: v= tells the client it logged in. alice may not act as bob: the answer
    to her right proof is -ERR, with no v= to answer first (found probing: v=, an empty
    line, then -ERR). An admin acting as bob still gets v=, then +OK."""
    driven = _session(lab, "SCRAM-SHA-256")
    assert _scram_to_final(driven, "alice", "wonderland", b"n,a=bob,") == INVALID
    assert _failures(driven) == [("alice", "may not act as bob", True)]
    admin = _session(lab, "SCRAM-SHA-256", admins=frozenset({"alice"}))
    assert _decoded(_scram_to_final(admin, "alice", "wonderland", b"n,a=bob,")).startswith(b"v=")
    assert admin.feed(b"\r\n").startswith(b"+OK Mailbox locked and ready")


def test_digest_md5_refuses_an_authorization_identity_before_rspauth(lab: Lab) -> None:
    driven = _session(lab, "DIGEST-MD5")
    assert _digest_md5_response(driven, "alice", "wonderland", "bob") == INVALID
    assert _failures(driven) == [("alice", "may not act as bob", True)]
    admin = _session(lab, "DIGEST-MD5", admins=frozenset({"alice"}))
    rspauth = _digest_md5_response(admin, "alice", "wonderland", "bob")
    assert _decoded(rspauth).startswith(b"rspauth=")
    assert admin.feed(b"\r\n").startswith(b"+OK Mailbox locked and ready")


def _failed_after_proof(driven: Driven) -> list[tuple[str, str, bool, str]]:
    return [
        (n.user, n.reason, n.authenticated, n.authenticated_as)
        for n in driven.notices
        if isinstance(n, ev.LoginFailed)
    ]


def test_an_exchange_ended_after_the_proof_is_in_the_audit_trail(lab: Lab) -> None:
    """Only wrong guesses were logged: a client that cancelled after v= (its guess proven
    right) left no record at all (found probing). Now a refusal, never a wrong password."""
    driven = _session(lab, "SCRAM-SHA-256")
    assert _decoded(_scram_to_final(driven, "alice", "wonderland", b"n,,")).startswith(b"v=")
    assert driven.feed(b"*\r\n") == b"-ERR [AUTH] Authentication cancelled\r\n"
    admin = _session(lab, "DIGEST-MD5", admins=frozenset({"alice"}))
    assert _decoded(_digest_md5_response(admin, "alice", "wonderland", "bob"))
    assert admin.feed(b"not base64!\r\n") == b"-ERR [AUTH] Invalid base64 in the response\r\n"
    assert _failed_after_proof(driven) + _failed_after_proof(admin) == [
        ("alice", "cancelled after the credentials were proven", True, ""),
        ("bob", "response not base64 after the credentials were proven", True, "alice"),
    ]


def test_a_good_token_for_an_unknown_user_is_answered_as_a_bad_token_is(lab: Lab) -> None:
    """RFC 7628 §3.2.2: the error challenge, the client's 0x01, then -ERR. A validly signed
    token for a user pop3d does not know got -ERR at once (found probing)."""
    key = ed25519.Ed25519PrivateKey.generate()
    validator = TokenValidator(
        issuer="https://issuer.lab.test",
        audience="pop3d",
        jwks={"keys": [jwt.jwk(key, "k1")]},
        user_claim="sub",
    )

    def token(user: str, audience: str = "pop3d") -> bytes:
        now = int(time.time())
        claims = {"iss": "https://issuer.lab.test", "aud": audience, "sub": user}
        made = jwt.token(key, "EdDSA", {"kid": "k1"}, claims | {"iat": now, "exp": now + 60})
        return b"n,,\x01auth=Bearer " + made.encode() + b"\x01\x01"

    transcripts = []
    for message in (token("nobody"), token("alice", audience="imap"), token("alice")):
        driven = _session(lab, "OAUTHBEARER")
        driven.work.token_validator = validator
        transcripts.append(
            [driven.feed(b"AUTH OAUTHBEARER " + _line(message)), driven.feed(_line(b"\x01"))]
        )
    error = _line(b'{"status":"invalid_token","schemes":"bearer"}')
    assert transcripts[0] == transcripts[1] == [b"+ " + error, INVALID]
    assert transcripts[2][0].startswith(b"+OK Mailbox locked and ready")


def test_an_admin_asking_for_a_user_that_does_not_exist_is_refused_not_failed(lab: Lab) -> None:
    """bob (admins) with his right password asking for nosuch: logged as a guessed password
    for nosuch, bob unnamed (found probing). Now a refusal of bob's; the client still gets
    what every failure gets, so it learns nothing of nosuch."""
    driven = _session(lab, "PLAIN", admins=frozenset({"bob"}))
    answers = [
        driven.feed(b"AUTH PLAIN " + _line(plain))
        for plain in (b"nosuch\0bob\0builder", b"alice\0bob\0wrong", b"\0nosuch\0builder")
    ]
    assert answers == [INVALID] * 3
    assert _failures(driven) == [
        ("bob", "may not act as nosuch: unknown user", True),
        ("bob", "wrong password", False),
        ("nosuch", "unknown user", False),
    ]
