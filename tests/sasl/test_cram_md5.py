"""CRAM-MD5 (RFC 2195): the RFC example and one-byte variants, unknown users, malformed
and random responses, and real clients (Cyrus SASL, GNU SASL)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pop3d.auth import credentials, schemes
from pop3d.auth.authenticator import Authenticator
from pop3d.sasl.cram_md5 import MAX_RESPONSE, CramMd5, challenge_for, digest
from pop3d.sasl.mechanism import (
    Challenge,
    Context,
    Failure,
    Flag,
    Success,
)
from pop3d.sasl.requests import FetchSecrets
from pop3d.security.secret import Secret
from tests.sasl import legacy_clients
from tests.support import sasl_run, sasl_vectors
from tests.support.lab import FAST_ARGON2

CASES = sasl_vectors.load("cram_md5.json")
RFC = next(case for case in CASES if case.name == "rfc2195-example")
RFC_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
RFC_DIGEST = b"b913a602c7eda7a495b4e6e7334d3890"

# Why each invalid vector fails: a test that fails for another reason proves nothing.
REASONS = {
    "rfc2195-digest-changed": "wrong password",
    "rfc2195-wrong-password": "wrong password",
    "rfc2195-unknown-user": "unknown user",
    "rfc2195-missing-space": "malformed",
    "rfc2195-non-hex": "malformed",
    "rfc2195-truncated": "malformed",
    "rfc2195-empty-user": "malformed",
    "rfc2195-nul-in-user": "malformed",
    "rfc2195-initial-response": "malformed",
}


def authenticator(
    path: Path, user: str = "tim", password: str = "tanstaaftanstaaf"
) -> Authenticator:
    case = sasl_vectors.Case("x", "test", True, "CRAM-MD5", user, password, "success", [])
    return sasl_run.authenticator_for(path, case)


def drive(
    context: Context, replies: list[bytes], auth: Authenticator, initial: bytes | None = None
) -> Success | Failure:
    resolve = functools.partial(sasl_run.carry_out, auth)
    return sasl_run.script(CramMd5(), context, initial, replies, resolve).result


def rfc_context() -> Context:
    return Context("postoffice.reston.mci.net", nonce=lambda: b"1896.697170952")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_vectors(case: sasl_vectors.Case, tmp_path: Path) -> None:
    result = sasl_run.run(CramMd5(), case, sasl_run.authenticator_for(tmp_path, case))
    assert isinstance(result, Success if case.outcome == "success" else Failure), result
    assert case.valid == (case.outcome == "success")
    if isinstance(result, Success):
        assert result.authcid == case.user
        assert result.authzid == ""
        assert result.final is None
    else:
        assert result.reason.startswith(REASONS[case.name]), result


def test_vector_file_has_the_published_example() -> None:
    assert RFC.steps == [
        ("S", RFC_CHALLENGE),
        ("C", b"tim " + RFC_DIGEST),
    ]
    assert {c.name for c in CASES if c.outcome == "failure"} == set(REASONS)


def test_digest_is_the_rfc_2195_example() -> None:
    assert challenge_for(rfc_context()) == RFC_CHALLENGE
    assert digest(b"tanstaaftanstaaf", RFC_CHALLENGE) == RFC_DIGEST


def test_flags_and_credentials() -> None:
    mechanism = CramMd5()
    assert mechanism.name == "CRAM-MD5"
    assert mechanism.flags == Flag.DICTIONARY | Flag.LEGACY
    assert not mechanism.flags & Flag.PLAINTEXT
    assert mechanism.credentials == ("PLAIN.B64",)


def test_default_nonce_makes_a_fresh_msg_id_each_time() -> None:
    seen = set()
    for _ in range(3):
        challenge = CramMd5().run(Context("lab.test"), None).send(None)
        assert isinstance(challenge, Challenge)
        assert re.fullmatch(rb"<[A-Za-z0-9+/=]+@lab\.test>", challenge.data), challenge
        seen.add(challenge.data)
    assert len(seen) == 3


def test_a_replayed_response_fails_against_a_new_challenge(tmp_path: Path) -> None:
    auth = authenticator(tmp_path)
    good = b"tim " + RFC_DIGEST
    assert isinstance(drive(rfc_context(), [good], auth), Success)
    fresh = Context("postoffice.reston.mci.net", nonce=lambda: b"1896.697170953")
    result = drive(fresh, [good], auth)
    assert isinstance(result, Failure) and result.reason == "wrong password"


def test_user_name_with_a_space_and_utf8(tmp_path: Path) -> None:
    """The digest follows the last space; user names may hold spaces and any UTF-8."""
    auth = authenticator(tmp_path, "tim ö x", "pässword")
    proof = digest("pässword".encode(), RFC_CHALLENGE)
    result = drive(rfc_context(), ["tim ö x ".encode() + proof], auth)
    assert isinstance(result, Success) and result.authcid == "tim ö x"


def test_unknown_user_and_missing_secret_fail_at_the_same_step(tmp_path: Path) -> None:
    auth = authenticator(tmp_path)
    values, _ = schemes.derive(Secret(b"pw"), set(), FAST_ARGON2)  # ARGON2ID only
    credentials.update(
        tmp_path / "passwd", "nokey", lambda _: credentials.UserRecord("nokey", values)
    )
    reasons = {}
    for user in ("tim", "nobody", "nokey"):
        run = CramMd5().run(rfc_context(), None)
        assert isinstance(run.send(None), Challenge)
        request = run.send(user.encode() + b" " + RFC_DIGEST)
        assert request == FetchSecrets(user, ("PLAIN.B64",))
        with pytest.raises(StopIteration) as stop:
            run.send(sasl_run.carry_out(auth, request))
        reasons[user] = stop.value.value
    assert isinstance(reasons["tim"], Success)
    assert reasons["nobody"] == Failure("unknown user", "nobody")
    assert reasons["nokey"] == Failure("no plaintext-equivalent stored", "nokey")


def test_unusable_stored_secret_fails(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    credentials.update(path, "tim", lambda _: credentials.UserRecord("tim", {"PLAIN.B64": "!!"}))
    result = drive(
        rfc_context(),
        [b"tim " + RFC_DIGEST],
        Authenticator(credentials.CredentialFile(path), FAST_ARGON2),
    )
    assert result == Failure("unusable PLAIN.B64 credential", "tim")


@pytest.mark.parametrize(
    "response",
    [
        b"",
        b"tim",
        b"tim ",
        b" ",
        b"tim " + RFC_DIGEST[:-1],  # truncated
        b"tim " + RFC_DIGEST + b"0",  # one digit too many
        b"tim " + RFC_DIGEST + b" ",
        b"tim  " + RFC_DIGEST,  # user "tim " does not exist, but it parses
        b"tim\0 " + RFC_DIGEST,
        b"\0 " + RFC_DIGEST,
        b"t\xffm " + RFC_DIGEST,  # not UTF-8
        b"\xc3 " + RFC_DIGEST,  # truncated UTF-8 sequence
        b"tim " + RFC_DIGEST[:30] + b" 0",  # bytes.fromhex would accept the space
        b"tim " + b"\xd9" * 32,
        b"tim\t" + RFC_DIGEST,
        b"x" * (MAX_RESPONSE + 1),
        b"t" * MAX_RESPONSE + b" " + RFC_DIGEST,  # over-long user name
        b"tim " + RFC_DIGEST + b"\r\n",
    ],
)
def test_malformed_responses_fail(tmp_path: Path, response: bytes) -> None:
    result = drive(rfc_context(), [response], authenticator(tmp_path))
    assert isinstance(result, Failure), result


@pytest.mark.parametrize("initial", [b"", b"tim " + RFC_DIGEST, b"\0"])
def test_initial_response_is_refused(tmp_path: Path, initial: bytes) -> None:
    result = drive(rfc_context(), [], authenticator(tmp_path), initial=initial)
    assert isinstance(result, Failure) and result.reason.startswith("malformed"), result


@pytest.fixture(scope="module")
def shared_authenticator(tmp_path_factory: pytest.TempPathFactory) -> Authenticator:
    return authenticator(tmp_path_factory.mktemp("cram"))


HEX = st.text(alphabet="0123456789abcdefABCDEF", min_size=32, max_size=32).map(str.encode)


@settings(max_examples=300, deadline=None)
@given(
    response=st.one_of(
        st.binary(max_size=300),
        st.tuples(st.binary(max_size=40), HEX).map(lambda t: t[0] + b" " + t[1]),
        st.tuples(st.sampled_from([b"tim", b"nobody"]), HEX).map(lambda t: t[0] + b" " + t[1]),
    )
)
def test_random_responses_only_fail(shared_authenticator: Authenticator, response: bytes) -> None:
    sasl_run.assert_one_response_only_fails(
        CramMd5(), rfc_context(), shared_authenticator, response
    )


# --- real clients ---------------------------------------------------------------------------

CLIENTS = legacy_clients.available()


@pytest.mark.interop
@pytest.mark.parametrize("client_name", sorted(CLIENTS))
@pytest.mark.parametrize(
    ("user", "password"), [("tim", "tanstaaftanstaaf"), ("jörg", "pässwörd €")]
)
def test_independent_client(tmp_path: Path, client_name: str, user: str, password: str) -> None:
    auth = authenticator(tmp_path, user, password)
    make = CLIENTS[client_name]

    def login(with_password: str) -> Success | Failure:
        client = make("CRAM-MD5", "lab.test", user, with_password)
        result, _ = legacy_clients.exchange(CramMd5(), Context("lab.test"), client, auth)
        return result

    good = login(password)
    assert isinstance(good, Success) and good.authcid == user, good
    bad = login(password + "x")
    assert isinstance(bad, Failure) and bad.reason == "wrong password", bad


@pytest.mark.interop
@pytest.mark.parametrize("client_name", sorted(CLIENTS))
def test_independent_client_reproduces_the_rfc_example(tmp_path: Path, client_name: str) -> None:
    client = CLIENTS[client_name](
        "CRAM-MD5", "postoffice.reston.mci.net", "tim", "tanstaaftanstaaf"
    )
    assert client.respond(RFC_CHALLENGE) == b"tim " + RFC_DIGEST
    client.child.kill()
