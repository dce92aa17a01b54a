"""DIGEST-MD5 (RFC 2831), authentication only: the RFC's worked examples, recorded
exchanges with the RFC's inputs and their one-change variants, the directive parser,
malformed and random responses, and real clients (Cyrus SASL, GNU SASL)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pop3d.auth import credentials, schemes
from pop3d.auth.authenticator import Authenticator
from pop3d.sasl.digest_md5 import (
    MAX_RESPONSE,
    DigestMd5,
    challenge_for,
    compute,
    parse_directives,
)
from pop3d.sasl.mechanism import (
    Challenge,
    Context,
    Failure,
    Flag,
    MalformedResponse,
    Success,
)
from pop3d.sasl.requests import FetchSecrets
from pop3d.security.secret import Secret
from tests.sasl import legacy_clients
from tests.support import sasl_run, sasl_vectors
from tests.support.lab import FAST_ARGON2

CASES = sasl_vectors.load("digest_md5.json")
REALM = "elwood.innosoft.com"
NONCE = b"OA6MG9tEQGm2hh"
CHALLENGE = (
    b'realm="elwood.innosoft.com",nonce="OA6MG9tEQGm2hh",qop="auth",'
    b"charset=utf-8,algorithm=md5-sess"
)
GOOD = next(case for case in CASES if case.name == "pop-rfc2831-inputs")
GOOD_RESPONSE = GOOD.steps[1][1]

# Why each invalid vector fails: a test that fails for another reason proves nothing.
REASONS = {
    "pop-response-changed": "wrong password",
    "pop-wrong-password": "wrong password",
    "pop-unknown-user": "unknown user",
    "pop-nonce-mismatch": "nonce mismatch",
    "pop-nc-2": "nonce count",
    "pop-digest-uri-other-host": "digest-uri",
    "pop-digest-uri-serv-name": "digest-uri",
    "rfc2831-imap-replayed": "digest-uri",
    "pop-duplicated-nonce": "malformed: directive nonce appears twice",
    "pop-duplicated-username-case": "malformed: directive username appears twice",
    "pop-qop-auth-int": "malformed: only qop=auth",
    "pop-realm-mismatch": "realm mismatch",
    "pop-charset-latin1": "malformed: charset",
    "pop-missing-cnonce": "malformed: missing directives: cnonce",
    "pop-unterminated-quote": "malformed",
    "pop-initial-response": "malformed",
}


def authenticator(path: Path, user: str = "chris", password: str = "secret") -> Authenticator:
    case = sasl_vectors.Case("x", "test", True, "DIGEST-MD5", user, password, "success", [])
    return sasl_run.authenticator_for(path, case)


def rfc_context(service: str = "pop") -> Context:
    return Context(REALM, service=service, nonce=lambda: NONCE)


def drive(
    context: Context, replies: list[bytes], auth: Authenticator, initial: bytes | None = None
) -> Success | Failure:
    resolve = functools.partial(sasl_run.carry_out, auth)
    return sasl_run.script(DigestMd5(), context, initial, replies, resolve).result


# --- vectors ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_vectors(case: sasl_vectors.Case, tmp_path: Path) -> None:
    result = sasl_run.run(DigestMd5(), case, sasl_run.authenticator_for(tmp_path, case))
    assert isinstance(result, Success if case.outcome == "success" else Failure), result
    assert case.valid == (case.outcome == "success")
    if isinstance(result, Success):
        assert result.authcid == case.user
        assert result.authzid == case.authzid
        # sasl_run compared ``final`` with this step; make sure there was one to compare
        assert case.steps[-1][0] == "S" and case.steps[-1][1].startswith(b"rspauth=")
    else:
        assert result.reason.startswith(REASONS[case.name]), result


def test_vector_file_covers_every_reason() -> None:
    assert {c.name for c in CASES if c.outcome == "failure"} == set(REASONS)
    assert GOOD.steps[0] == ("S", CHALLENGE)


@pytest.mark.parametrize(
    ("nonce", "cnonce", "uri", "response", "rspauth"),
    [
        (
            b"OA6MG9tEQGm2hh",
            b"OA6MHXh6VqTrRk",
            b"imap/elwood.innosoft.com",
            b"d388dad90d4bbd760a152321f2143af7",
            b"ea40f60335c427b5527b84dbabcdfffd",
        ),
        (
            b"OA9BSXrbuRhWay",
            b"OA9BSuZWMSpW8m",
            b"acap/elwood.innosoft.com",
            b"6084c6db3fede7352c551284490fd0fc",
            b"2f0b3d7c3c2e486600ef710726aa2eae",
        ),
    ],
    ids=["imap", "acap"],
)
def test_rfc2831_section_4_examples(
    nonce: bytes, cnonce: bytes, uri: bytes, response: bytes, rspauth: bytes
) -> None:
    got = compute(
        b"chris:elwood.innosoft.com:secret",
        nonce=nonce,
        cnonce=cnonce,
        nc=b"00000001",
        qop=b"auth",
        digest_uri=uri,
    )
    assert got == (response, rspauth)


def test_rfc2831_imap_example_through_the_mechanism(tmp_path: Path) -> None:
    """The RFC's IMAP exchange verifies when the mechanism runs as the imap service."""
    response = (
        b'charset=utf-8,username="chris",realm="elwood.innosoft.com",nonce="OA6MG9tEQGm2hh",'
        b'nc=00000001,cnonce="OA6MHXh6VqTrRk",digest-uri="imap/elwood.innosoft.com",'
        b"response=d388dad90d4bbd760a152321f2143af7,qop=auth"
    )
    result = drive(rfc_context(service="imap"), [response], authenticator(tmp_path))
    assert result == Success("chris", "", b"rspauth=ea40f60335c427b5527b84dbabcdfffd")


# --- the mechanism --------------------------------------------------------------------------


def test_flags_and_credentials() -> None:
    mechanism = DigestMd5()
    assert mechanism.name == "DIGEST-MD5"
    assert mechanism.flags == Flag.DICTIONARY | Flag.MUTUAL | Flag.LEGACY
    assert mechanism.credentials == ("PLAIN.B64",)


def test_challenge() -> None:
    step = DigestMd5().run(rfc_context(), None).send(None)
    assert step == Challenge(CHALLENGE)
    assert challenge_for('a"b\\c', "n") == (
        b'realm="a\\"b\\\\c",nonce="n",qop="auth",charset=utf-8,algorithm=md5-sess'
    )
    assert parse_directives(challenge_for('a"b\\c', "n"))["realm"] == b'a"b\\c'


def test_default_nonce_is_fresh_and_parses() -> None:
    nonces = set()
    for _ in range(3):
        step = DigestMd5().run(Context("lab.test"), None).send(None)
        assert isinstance(step, Challenge)
        directives = parse_directives(step.data)
        assert directives["realm"] == b"lab.test"
        nonces.add(directives["nonce"])
    assert len(nonces) == 3


def test_unknown_user_and_missing_secret_fail_at_the_same_step(tmp_path: Path) -> None:
    auth = authenticator(tmp_path)
    values, _ = schemes.derive(Secret(b"pw"), set(), FAST_ARGON2)  # ARGON2ID only
    credentials.update(
        tmp_path / "passwd", "nokey", lambda _: credentials.UserRecord("nokey", values)
    )
    outcomes = {}
    for user in ("chris", "nobody", "nokey"):
        run = DigestMd5().run(rfc_context(), None)
        assert isinstance(run.send(None), Challenge)
        request = run.send(GOOD_RESPONSE.replace(b'"chris"', f'"{user}"'.encode()))
        assert request == FetchSecrets(user, ("PLAIN.B64",))
        with pytest.raises(StopIteration) as stop:
            run.send(sasl_run.carry_out(auth, request))
        outcomes[user] = stop.value.value
    assert isinstance(outcomes["chris"], Success)
    assert outcomes["nobody"] == Failure("unknown user", "nobody")
    assert outcomes["nokey"] == Failure("no plaintext-equivalent stored", "nokey")


def test_service_comes_from_the_context(tmp_path: Path) -> None:
    result = drive(rfc_context(service="imap"), [GOOD_RESPONSE], authenticator(tmp_path))
    assert isinstance(result, Failure) and result.reason.startswith("digest-uri")


# --- the directive parser -------------------------------------------------------------------


def test_parser_handles_lws_null_elements_escapes_and_name_case() -> None:
    parsed = parse_directives(b' ,A="x\\"y\\\\z" ,, b = tok-en ,\tc="" ,')
    assert parsed == {"a": b'x"y\\z', "b": b"tok-en", "c": b""}


def test_parser_keeps_utf8_and_escaped_bytes() -> None:
    assert parse_directives('u="jörg"'.encode()) == {"u": "jörg".encode()}
    assert parse_directives(b'u="\\a\\,"') == {"u": b"a,"}


@pytest.mark.parametrize(
    "message",
    [
        b"a",
        b"a=",
        b"a=,b=c",
        b'a="x',
        b'a="x\\',
        b'a="x"y',
        b"a=b c",
        b"=b",
        b'"a"=b',
        b"a=b;c=d",
        b"a=b,a=c",
        b"a=b,A=c",
        b'a="x\x00y"',
        b'a="x\x1by"',
        b"a=b\x00",
        b"a=\xff",
        b"a=b/c",
    ],
)
def test_parser_refuses(message: bytes) -> None:
    with pytest.raises(MalformedResponse):
        parse_directives(message)


# --- malformed and hostile responses ----------------------------------------------------------


def test_every_truncation_of_a_good_response_fails(tmp_path: Path) -> None:
    auth = authenticator(tmp_path)
    # response last: with qop last, cutting ",qop=auth" off leaves a complete message
    complete = b"qop=auth," + GOOD_RESPONSE.removesuffix(b",qop=auth")
    assert isinstance(drive(rfc_context(), [complete], auth), Success)
    for end in range(len(complete)):
        result = drive(rfc_context(), [complete[:end]], auth)
        assert isinstance(result, Failure), (end, result)


@pytest.mark.parametrize(
    "response",
    [
        b"",
        b",,,",
        GOOD_RESPONSE + b"," + b"x" * MAX_RESPONSE,  # over-long
        GOOD_RESPONSE + b',extra="' + b"y" * (MAX_RESPONSE - len(GOOD_RESPONSE)) + b'"',
        GOOD_RESPONSE.replace(b'"chris"', b'"chr\x00is"'),  # NUL in the user name
        GOOD_RESPONSE.replace(b'"chris"', b'"chr\\\x00is"'),  # escaped NUL
        GOOD_RESPONSE.replace(b'"chris"', b'"chr\xffis"'),  # not UTF-8, charset=utf-8
        GOOD_RESPONSE.replace(b'"chris"', b'""'),  # empty user name
        GOOD_RESPONSE + b',authzid="\xc3"',  # authzid not UTF-8
        GOOD_RESPONSE + b',authzid="a\\\x00"',
        GOOD_RESPONSE.replace(b"nc=00000001", b"nc=1"),
        GOOD_RESPONSE.replace(b"qop=auth", b"qop=auth-conf"),
        GOOD_RESPONSE.replace(b"qop=auth", b"qop=AUTH"),
        GOOD_RESPONSE.replace(b'cnonce="OA6MHXh6VqTrRk"', b'cnonce=""'),
        GOOD_RESPONSE.replace(b"response=b0d56d2f", b"response=b0d56d2"),
        GOOD_RESPONSE.replace(b"response=b0d56d2f", b"response=g0d56d2f"),
        GOOD_RESPONSE.replace(b"response=", b'response="') + b'"' + b"0" * 10,
        GOOD_RESPONSE.replace(b'digest-uri="pop/', b'digest-uri="pop\xc3\xa9/'),
        GOOD_RESPONSE.replace(b'digest-uri="pop/elwood.innosoft.com"', b'digest-uri="pop"'),
        GOOD_RESPONSE.replace(b'digest-uri="pop/elwood.innosoft.com"', b'digest-uri="/"'),
        GOOD_RESPONSE.replace(b'realm="elwood.innosoft.com"', b'realm=""'),
        GOOD_RESPONSE.replace(b"charset=utf-8", b'charset="utf-16"'),
        GOOD_RESPONSE.replace(b",", b";"),
    ],
)
def test_malformed_or_wrong_responses_fail(tmp_path: Path, response: bytes) -> None:
    result = drive(rfc_context(), [response], authenticator(tmp_path))
    assert isinstance(result, Failure), result


def test_linear_white_space_around_directives_is_allowed(tmp_path: Path) -> None:
    spaced = b" " + GOOD_RESPONSE.replace(b"=", b" = ", 1).replace(b",", b" ,\t") + b"\r\n"
    assert isinstance(drive(rfc_context(), [spaced], authenticator(tmp_path)), Success)


def test_response_just_under_the_limit_is_parsed(tmp_path: Path) -> None:
    padded = GOOD_RESPONSE + b',x="' + b"y" * (MAX_RESPONSE - len(GOOD_RESPONSE) - 6) + b'"'
    assert len(padded) == MAX_RESPONSE - 1
    assert isinstance(drive(rfc_context(), [padded], authenticator(tmp_path)), Success)
    too_long = padded[:-1] + b'y"'
    result = drive(rfc_context(), [too_long], authenticator(tmp_path))
    assert result == Failure("malformed: response too long")


@pytest.mark.parametrize("initial", [b"", GOOD_RESPONSE])
def test_initial_response_is_refused(tmp_path: Path, initial: bytes) -> None:
    result = drive(rfc_context(), [], authenticator(tmp_path), initial=initial)
    assert isinstance(result, Failure) and result.reason.startswith("malformed"), result


@pytest.fixture(scope="module")
def shared_authenticator(tmp_path_factory: pytest.TempPathFactory) -> Authenticator:
    return authenticator(tmp_path_factory.mktemp("digest"))


NAMES = st.sampled_from(
    [
        b"username",
        b"realm",
        b"nonce",
        b"cnonce",
        b"nc",
        b"qop",
        b"digest-uri",
        b"response",
        b"charset",
        b"authzid",
        b"maxbuf",
        b"cipher",
        b"x",
    ]
)
VALUES = st.one_of(
    st.binary(max_size=40).map(lambda v: b'"' + v + b'"'),
    st.binary(max_size=20),
    st.sampled_from(
        [
            b'"chris"',
            b'"OA6MG9tEQGm2hh"',
            b"00000001",
            b"auth",
            b"utf-8",
            b'"pop/elwood.innosoft.com"',
            b'"elwood.innosoft.com"',
            b"b0d56d2f054c24b62072322106468db9",
        ]
    ),
)
DIRECTIVES = st.lists(st.tuples(NAMES, VALUES), max_size=12).map(
    lambda pairs: b",".join(name + b"=" + value for name, value in pairs)
)


@settings(max_examples=400, deadline=None)
@given(response=st.one_of(st.binary(max_size=400), DIRECTIVES))
def test_random_responses_only_fail(shared_authenticator: Authenticator, response: bytes) -> None:
    sasl_run.assert_one_response_only_fails(
        DigestMd5(), rfc_context(), shared_authenticator, response
    )


# --- real clients ---------------------------------------------------------------------------

CLIENTS = legacy_clients.available()
CLIENT_NAMES = sorted(CLIENTS)


@pytest.mark.interop
@pytest.mark.parametrize("client_name", CLIENT_NAMES)
@pytest.mark.parametrize(
    ("user", "password"),
    [("chris", "secret"), ("chris", "sécret"), ("jörg", "пароль"), ("jörg", "naïve €")],
)
def test_independent_client(tmp_path: Path, client_name: str, user: str, password: str) -> None:
    auth = authenticator(tmp_path, user, password)
    make = CLIENTS[client_name]
    client = make("DIGEST-MD5", "lab.test", user, password)
    result, accepted = legacy_clients.exchange(DigestMd5(), Context("lab.test"), client, auth)
    assert isinstance(result, Success) and result.authcid == user, result
    assert accepted, f"{client_name} rejected our rspauth"
    wrong = make("DIGEST-MD5", "lab.test", user, password + "x")
    result, accepted = legacy_clients.exchange(DigestMd5(), Context("lab.test"), wrong, auth)
    assert isinstance(result, Failure) and result.reason == "wrong password", result
    assert not accepted


@pytest.mark.interop
@pytest.mark.parametrize("client_name", CLIENT_NAMES)
def test_independent_client_with_authzid(tmp_path: Path, client_name: str) -> None:
    auth = authenticator(tmp_path)
    client = CLIENTS[client_name]("DIGEST-MD5", "lab.test", "chris", "secret", authzid="alice")
    result, accepted = legacy_clients.exchange(DigestMd5(), Context("lab.test"), client, auth)
    assert isinstance(result, Success), result
    assert (result.authcid, result.authzid) == ("chris", "alice")
    assert accepted


@pytest.mark.interop
@pytest.mark.parametrize("client_name", CLIENT_NAMES)
def test_independent_client_refuses_a_wrong_rspauth(tmp_path: Path, client_name: str) -> None:
    auth = authenticator(tmp_path)
    client = CLIENTS[client_name]("DIGEST-MD5", "lab.test", "chris", "secret")
    run = DigestMd5().run(Context("lab.test"), None)
    challenge = run.send(None)
    assert isinstance(challenge, Challenge)
    request = run.send(client.respond(challenge.data))
    with pytest.raises(StopIteration) as stop:
        run.send(sasl_run.carry_out(auth, request))
    good = stop.value.value
    assert isinstance(good, Success) and good.final is not None
    forged = good.final[:-1] + (b"0" if good.final[-1:] != b"0" else b"1")
    assert not client.accepts(forged)


@pytest.mark.interop
@pytest.mark.parametrize("client_name", CLIENT_NAMES)
def test_independent_client_naming_another_host_fails(tmp_path: Path, client_name: str) -> None:
    """curl and others put the host they connected to in digest-uri; only ours passes."""
    auth = authenticator(tmp_path)
    client = CLIENTS[client_name]("DIGEST-MD5", "127.0.0.1", "chris", "secret", realm="lab.test")
    result, _ = legacy_clients.exchange(DigestMd5(), Context("lab.test"), client, auth)
    assert isinstance(result, Failure) and result.reason.startswith("digest-uri"), result


@pytest.mark.interop
@pytest.mark.parametrize("client_name", CLIENT_NAMES)
def test_independent_client_response_has_the_shape_we_parse(
    tmp_path: Path, client_name: str
) -> None:
    client = CLIENTS[client_name]("DIGEST-MD5", REALM, "chris", "secret")
    directives = parse_directives(client.respond(CHALLENGE))
    client.child.kill()
    assert directives["nonce"] == NONCE
    assert directives["digest-uri"] == b"pop/elwood.innosoft.com"
    assert directives["nc"] == b"00000001"
    assert directives.get("qop", b"auth") == b"auth"
    assert directives["username"] == b"chris"


@pytest.mark.interop
@pytest.mark.parametrize("client_name", CLIENT_NAMES)
@pytest.mark.parametrize(
    ("dialled", "local"),
    [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("127.0.0.1", "::ffff:127.0.0.1")],
)
def test_independent_client_dialling_the_address_it_connected_to(
    tmp_path: Path, client_name: str, dialled: str, local: str
) -> None:
    """Cyrus's pop3test against 127.0.0.1 puts ``pop/127.0.0.1`` in digest-uri: the
    address the connection was made to is one of this server's names."""
    auth = authenticator(tmp_path)
    client = CLIENTS[client_name]("DIGEST-MD5", dialled, "chris", "secret", realm="lab.test")
    context = Context("lab.test", local_address=local)
    result, accepted = legacy_clients.exchange(DigestMd5(), context, client, auth)
    assert isinstance(result, Success), result
    assert accepted


@pytest.mark.interop
@pytest.mark.parametrize("client_name", CLIENT_NAMES)
def test_independent_client_naming_an_alias(tmp_path: Path, client_name: str) -> None:
    auth = authenticator(tmp_path)
    context = Context("lab.test", server_aliases=("pop.example.org", "mail.example.org"))
    client = CLIENTS[client_name](
        "DIGEST-MD5", "MAIL.example.org", "chris", "secret", realm="lab.test"
    )
    result, accepted = legacy_clients.exchange(DigestMd5(), context, client, auth)
    assert isinstance(result, Success), result
    assert accepted


@pytest.mark.interop
@pytest.mark.parametrize("client_name", CLIENT_NAMES)
@pytest.mark.parametrize("dialled", ["10.0.0.1", "::2", "other.example.org", "127.0.0.1"])
def test_independent_client_naming_neither_a_name_nor_our_address_fails(
    tmp_path: Path, client_name: str, dialled: str
) -> None:
    """A response made for another server (another address, another name; 127.0.0.1 when
    the connection came in on ::1) is refused."""
    auth = authenticator(tmp_path)
    context = Context("lab.test", server_aliases=("pop.example.org",), local_address="::1")
    client = CLIENTS[client_name]("DIGEST-MD5", dialled, "chris", "secret", realm="lab.test")
    result, _ = legacy_clients.exchange(DigestMd5(), context, client, auth)
    assert isinstance(result, Failure) and result.reason.startswith("digest-uri"), result
