"""SCRAM-SHA-1/256/512 and -PLUS: published vectors, an independent client (scramp),
channel bindings and every malformed shape."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import scramp
import scramp.core

from pop3d.sasl.mechanism import Context, Failure, MalformedResponse, Success
from pop3d.sasl.requests import FetchSecrets
from pop3d.sasl.saslprep import SASLprepError, saslprep
from pop3d.sasl.scram import Scram
from tests.support import sasl_run, sasl_vectors

CASES = sasl_vectors.load("scram.json")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_vectors(case: sasl_vectors.Case, tmp_path: Path) -> None:
    hash_name = case.mechanism.removeprefix("SCRAM-").removesuffix("-PLUS")
    mechanism = Scram(hash_name, case.mechanism.endswith("-PLUS"))
    result = sasl_run.run(mechanism, case, sasl_run.authenticator_for(tmp_path, case))
    assert isinstance(result, Success if case.outcome == "success" else Failure), result
    if isinstance(result, Success):
        assert result.authcid == case.user


def scramp_exchange(
    tmp_path: Path,
    name: str,
    *,
    password: str = "pencil",
    binding: tuple[str, bytes] | None = None,
    server_bindings: dict[str, bytes] | None = None,
    plus_offered: bool = False,
    tamper: object = None,
    server_plus: bool | None = None,
) -> Success | Failure:
    """A whole exchange between our server mechanism and scramp's client."""
    case = sasl_vectors.Case("x", "test", True, name, "user", "pencil", "success", [])
    authenticator = sasl_run.authenticator_for(tmp_path, case)
    client = scramp.ScramClient([name], "user", password, channel_binding=binding)
    hash_name = name.removeprefix("SCRAM-").removesuffix("-PLUS")
    plus = name.endswith("-PLUS") if server_plus is None else server_plus
    mechanism = Scram(hash_name, plus)
    context = Context("lab.test", channel_bindings=server_bindings or {}, plus_offered=plus_offered)

    def respond(challenge: bytes) -> bytes:
        client.set_server_first(challenge.decode())
        final = client.get_client_final()
        return (tamper(final) if callable(tamper) else final).encode()

    result = sasl_run.converse(
        mechanism,
        context,
        client.get_client_first().encode(),
        respond,
        functools.partial(sasl_run.carry_out, authenticator),
    )
    if isinstance(result, Success):
        assert result.final is not None
        client.set_server_final(result.final.decode())  # raises if the server lied
    return result


@pytest.mark.parametrize("name", ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_independent_client(tmp_path: Path, name: str) -> None:
    assert isinstance(scramp_exchange(tmp_path, name), Success)
    assert isinstance(scramp_exchange(tmp_path / "w", name, password="wrong"), Failure)


@pytest.fixture
def scramp_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    """scramp refuses the name "tls-exporter" (Python's ssl cannot give it the data); its
    SCRAM arithmetic takes any binding's bytes."""
    names = scramp.core.CbName
    monkeypatch.setattr(names, "SUPPORTED_TYPES", names.SUPPORTED_TYPES | {"tls-exporter"})
    monkeypatch.setattr(names, "UNSUPPORTED_TYPES", frozenset())


@pytest.mark.usefixtures("scramp_exporter")
@pytest.mark.parametrize("name", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-512-PLUS"])
@pytest.mark.parametrize("binding_type", ["tls-server-end-point", "tls-unique", "tls-exporter"])
def test_plus_with_channel_bindings(tmp_path: Path, name: str, binding_type: str) -> None:
    data = b"\x01" * 32
    ok = scramp_exchange(
        tmp_path, name, binding=(binding_type, data), server_bindings={binding_type: data}
    )
    assert isinstance(ok, Success)
    # the client's binding data differs from the connection's: a man in the middle
    mitm = scramp_exchange(
        tmp_path / "m",
        name,
        binding=(binding_type, b"\x02" * 32),
        server_bindings={binding_type: data},
    )
    assert isinstance(mitm, Failure) and mitm.reason == "channel binding mismatch"


def test_a_binding_sent_under_the_plain_name_is_verified(tmp_path: Path) -> None:
    """libsasl2 2.1.28's client (Cyrus's pop3test -m SCRAM-SHA-256-PLUS) sends AUTH
    SCRAM-SHA-256 with p=tls-unique: it was refused as malformed (found probing). The
    binding is checked as under -PLUS: the right one logs in, a wrong or a missing one
    does not."""
    data = b"\x01" * 32

    def exchange(directory: str, sent: bytes, bindings: dict[str, bytes]) -> object:
        return scramp_exchange(
            tmp_path / directory,
            "SCRAM-SHA-256-PLUS",
            binding=("tls-unique", sent),
            server_bindings=bindings,
            plus_offered=True,
            server_plus=False,
        )

    assert isinstance(exchange("ok", data, {"tls-unique": data}), Success)
    mitm = exchange("mitm", b"\x02" * 32, {"tls-unique": data})
    assert isinstance(mitm, Failure) and mitm.reason == "channel binding mismatch"
    lacking = exchange("lacking", data, {"tls-server-end-point": data})
    assert isinstance(lacking, Failure) and "not available" in lacking.reason


def test_plus_refuses_a_binding_the_connection_lacks(tmp_path: Path) -> None:
    result = scramp_exchange(
        tmp_path,
        "SCRAM-SHA-256-PLUS",
        binding=("tls-unique", b"x" * 12),
        server_bindings={"tls-server-end-point": b"y" * 32},
    )
    assert isinstance(result, Failure)


@pytest.mark.parametrize(
    "client_first",
    [b"n,a=user\xc0x,n=user,r=abc", b"n,,n=us\xffer,r=abc", b"n,a=\xed\xa0\x80,n=u,r=abc"],
)
def test_saslname_that_is_not_utf8_is_malformed(client_first: bytes) -> None:
    # Found by fuzz/sasl_mechanisms.py: a non-UTF-8 authzid in the GS2 header raised
    # UnicodeDecodeError out of the exchange (and so out of the session).
    with pytest.raises(MalformedResponse, match="not UTF-8"):
        Scram("SHA-256", plus=False).run(Context("lab.test"), client_first).send(None)


def test_a_user_name_past_255_octets_is_refused_before_saslprep() -> None:
    """SASLprep runs in Python on the event loop: a name of 64 KiB of U+FDFA (18 characters
    each after NFKC) held every session of the worker for 0.7 s (found probing)."""
    at_the_bound = ("\ufdfa" * 85).encode()  # 255 octets: prepared, then refused as a name
    steps = Scram("SHA-256", plus=False).run(
        Context("lab.test"), b"n,,n=" + at_the_bound + b",r=abc"
    )
    assert isinstance(steps.send(None), FetchSecrets)
    long = ("\ufdfa" * 86).encode()
    with pytest.raises(MalformedResponse, match="longer than 255 octets"):
        Scram("SHA-256", plus=False).run(Context("lab.test"), b"n,,n=" + long + b",r=abc").send(
            None
        )


@pytest.mark.parametrize("nonce", [b"ab c", b"ab\x01c", b"ab\x7fc", b"ab\tc", b"ab\xc3\xa9"])
def test_a_client_nonce_that_is_not_printable_is_malformed(nonce: bytes) -> None:
    """RFC 5802 §7: c-nonce is ``printable`` (%x21-2B / %x2D-7E); a space, a control
    character or DEL was taken and echoed in the server's first message (found probing)."""
    with pytest.raises(MalformedResponse, match="bad nonce"):
        Scram("SHA-256", plus=False).run(Context("lab.test"), b"n,,n=user,r=" + nonce).send(None)


@pytest.mark.usefixtures("scramp_exporter")
@pytest.mark.parametrize("binding_type", ["tls-exporter", "tls-server-end-point"])
def test_on_tls13_the_client_binds_to_the_exporter_or_the_certificate(
    tmp_path: Path, binding_type: str
) -> None:
    """RFC 9266: on TLS 1.3 a client binds with tls-exporter (its default) or
    tls-server-end-point; the connection has both, and no tls-unique."""
    tls13 = {"tls-exporter": b"\x03" * 32, "tls-server-end-point": b"\x04" * 32}
    ok = scramp_exchange(
        tmp_path,
        "SCRAM-SHA-256-PLUS",
        binding=(binding_type, tls13[binding_type]),
        server_bindings=tls13,
    )
    assert isinstance(ok, Success)
    swapped = "tls-server-end-point" if binding_type == "tls-exporter" else "tls-exporter"
    crossed = scramp_exchange(
        tmp_path / "x",
        "SCRAM-SHA-256-PLUS",
        binding=(binding_type, tls13[swapped]),
        server_bindings=tls13,
    )
    assert isinstance(crossed, Failure) and crossed.reason == "channel binding mismatch"
    unique = scramp_exchange(
        tmp_path / "u",
        "SCRAM-SHA-256-PLUS",
        binding=("tls-unique", b"\x05" * 12),
        server_bindings=tls13,
    )
    assert isinstance(unique, Failure)


def test_replayed_final_message_fails(tmp_path: Path) -> None:
    """Record a good exchange, then replay its final message in a new exchange."""
    saved: dict[str, str] = {}

    def remember(final: str) -> str:
        saved.setdefault("final", final)
        return saved["final"]

    assert isinstance(scramp_exchange(tmp_path, "SCRAM-SHA-256", tamper=remember), Success)
    replay = scramp_exchange(tmp_path / "r", "SCRAM-SHA-256", tamper=remember)
    assert isinstance(replay, Failure) and "nonce" in replay.reason


def test_unknown_user_looks_like_a_wrong_password(tmp_path: Path) -> None:
    case = sasl_vectors.Case("x", "test", True, "SCRAM-SHA-256", "user", "pencil", "success", [])
    authenticator = sasl_run.authenticator_for(tmp_path, case)
    first = []
    for user in ("user", "nobody", "nobody"):
        mechanism = Scram("SHA-256", False)
        exchange = mechanism.run(
            Context("lab.test", nonce=lambda: b"SERVERNONCE"),
            f"n,,n={user},r=abc".encode(),
        )
        request = exchange.send(None)
        challenge = exchange.send(sasl_run.carry_out(authenticator, request))
        first.append(challenge.data)  # type: ignore[union-attr]
    salt = [dict(p.split(b"=", 1) for p in message.split(b","))[b"s"] for message in first]
    assert salt[1] == salt[2], "an unknown user's salt must be stable"
    assert salt[0] != salt[1]
    assert [len(m) for m in first[1:]] == [len(first[0])] * 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I\u00adX", "IX"),
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),
        ("\u2168", "IX"),
        ("a\u00a0b", "a b"),
    ],
)
def test_saslprep_rfc4013_examples(text: str, expected: str) -> None:
    assert saslprep(text) == expected


@pytest.mark.parametrize("text", ["\u0007", "\u0627\u0031"])
def test_saslprep_refuses(text: str) -> None:
    with pytest.raises(SASLprepError):
        saslprep(text)


def test_vector_loader_is_strict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bad.json").write_text('[{"name": "x", "typo": 1}]')
    monkeypatch.setattr(sasl_vectors, "SASL_VECTORS", tmp_path)
    with pytest.raises(sasl_vectors.VectorError, match="unknown keys"):
        sasl_vectors.load("bad.json")


@pytest.mark.parametrize(
    "name",
    [b"\xff\xfe", b"us=er", b"us=2cer", b"us\x01er"],
    ids=["not-utf8", "bare-equals", "lower-case-escape", "control"],
)
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "OAUTHBEARER"])
def test_saslnames_are_decoded_equally_strictly(name: bytes, mechanism: str) -> None:
    """SCRAM and OAUTHBEARER share one saslname decoder: a malformed name is refused as
    malformed by both (SCRAM once let invalid UTF-8 escape as UnicodeDecodeError)."""
    from pop3d.sasl import registry

    found = registry.get(mechanism)
    assert found is not None
    if mechanism == "OAUTHBEARER":
        message = b"n,a=" + name + b",\x01auth=Bearer x\x01\x01"
    else:
        message = b"n,,n=" + name + b",r=abcdefgh"
    result = sasl_run.converse(found, Context("lab.test"), message, lambda _c: b"", lambda _r: None)
    assert isinstance(result, Failure)
    assert result.reason.startswith("malformed:"), result.reason
