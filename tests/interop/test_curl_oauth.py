"""curl's OAUTHBEARER and XOAUTH2 (``--oauth2-bearer``) against a real pop3d-master that
validates JWTs with a local JWKS.

curl sends no initial response in POP3 (it waits for "+ "), names the user from ``-u`` as
the GS2 authzid (``n,a=alice,``) or XOAUTH2 ``user=``, and answers an OAUTHBEARER error
challenge with 0x01 ("AQ=="); to an XOAUTH2 error challenge it answers nothing and quits
(exit 67 either way).

These tests need the mechanisms registered and VerifyBearer handled by the driver; they
are skipped until that integration is done.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.interop.conftest import ALICE_SIZES, run
from tests.support import jwt
from tests.support.jwt import b64url
from tests.support.lab import Lab, Server, start_server

pytestmark = pytest.mark.interop

LOGIN_FAILED = 67  # CURLE_LOGIN_DENIED
ISSUER = "https://issuer.lab.test"
AUDIENCE = "pop3d-lab"
LISTING = b"".join(f"{n} {size}\r\n".encode() for n, size in enumerate(ALICE_SIZES, 1))
KEY = ed25519.Ed25519PrivateKey.generate()


def make_token(**changes: Any) -> str:
    """An EdDSA access token for ``alice`` (claim "sub"), valid for five minutes."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "scope": "pop",
    }
    claims.update(changes)
    return jwt.token(KEY, "EdDSA", {"typ": "at+jwt", "kid": "lab"}, claims)


def oauth_server(root: Path, mechanisms: str) -> Server:
    """A lab server offering ``mechanisms`` only, tokens checked against KEY."""
    root.mkdir(parents=True)
    jwks = root / "jwks.json"
    public = KEY.public_key().public_bytes_raw()
    jwks.write_text(
        json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "lab", "x": b64url(public)}]})
    )
    extra = (
        f"oauth_issuer: {ISSUER}\noauth_audience: {AUDIENCE}\noauth_jwks_file: {jwks}\n"
        f"oauth_user_claim: sub\noauth_scope: pop\nsasl_mech_list: {mechanisms}\n"
    )
    return start_server(Lab(root / "lab", extra_config=extra).create())


@pytest.fixture(scope="module")
def oauthbearer_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = oauth_server(tmp_path_factory.mktemp("oauthbearer") / "x", "OAUTHBEARER")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def xoauth2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = oauth_server(tmp_path_factory.mktemp("xoauth2") / "x", "XOAUTH2")
    yield server
    server.stop()


def curl(server: Server, mechanism: str, token: str, user: str = "alice") -> tuple[int, bytes, str]:
    done = run(
        [
            "curl", "-sS", "-v", "--max-time", "20", f"pop3://127.0.0.1:{server.port}/",
            "--login-options", f"AUTH={mechanism}", "-u", f"{user}:", "--oauth2-bearer", token,
        ]
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr.decode(errors="replace")


def sent(stderr: str) -> list[str]:
    return [line[2:] for line in stderr.splitlines() if line.startswith("> ")]


def wait_for_log(server: Server, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in (log := server.log_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return log


def test_curl_oauthbearer(oauthbearer_server: Server) -> None:
    oauthbearer_server.lab.reset_maildrop("alice")
    code, out, err = curl(oauthbearer_server, "OAUTHBEARER", make_token())
    assert code == 0, err
    assert out == LISTING
    commands = sent(err)
    assert commands[:2] == ["CAPA", "AUTH OAUTHBEARER"]
    message = base64.b64decode(commands[2])
    assert message.startswith(b"n,a=alice,\x01host=127.0.0.1\x01port=")
    assert "LIST" in commands
    assert "] alice OAUTHBEARER" in wait_for_log(oauthbearer_server, "] alice OAUTHBEARER")


def test_curl_oauthbearer_refused(oauthbearer_server: Server) -> None:
    """Expired token, a token without the required scope, a token for another user: the
    error challenge, curl's 0x01, then -ERR; the token never reaches the log."""
    now = int(time.time())
    expired = make_token(iat=now - 7200, exp=now - 3600)
    cases = [
        (expired, "alice", '{"status":"invalid_token","schemes":"bearer","scope":"pop"}'),
        (make_token(scope="mail"), "alice",
         '{"status":"insufficient_scope","schemes":"bearer","scope":"pop"}'),
        (make_token(), "bob", '{"status":"invalid_token","schemes":"bearer","scope":"pop"}'),
    ]  # fmt: skip
    for token, user, error in cases:
        code, out, err = curl(oauthbearer_server, "OAUTHBEARER", token, user=user)
        assert code == LOGIN_FAILED, err
        assert out == b""
        assert f"< + {base64.b64encode(error.encode()).decode()}" in err
        assert sent(err)[3] == "AQ=="
        assert "< -ERR [AUTH] Invalid login" in err
    log = wait_for_log(oauthbearer_server, "token expired")
    assert "badlogin:" in log and "token expired" in log
    for token, _, _ in cases:
        for part in token.split("."):
            assert part not in log


def test_curl_xoauth2(xoauth2_server: Server) -> None:
    xoauth2_server.lab.reset_maildrop("alice")
    code, out, err = curl(xoauth2_server, "XOAUTH2", make_token())
    assert code == 0, err
    assert out == LISTING
    assert sent(err)[1] == "AUTH XOAUTH2"
    assert base64.b64decode(sent(err)[2]).startswith(b"user=alice\x01auth=Bearer ")
    code, out, err = curl(xoauth2_server, "XOAUTH2", make_token(aud="elsewhere"))
    assert code == LOGIN_FAILED, err
    error = base64.b64encode(b'{"status":"401","schemes":"bearer","scope":"pop"}').decode()
    assert f"< + {error}" in err
