"""The recorded Kerberos exchanges (vectors/kerberos/, PROVENANCE.md there) replayed with no
KDC: the acceptor, the layer offer and the layer framing are checked offline, with the
throwaway keytab they were made with, a wide clock skew and the replay cache off."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pop3d.sasl.gs2 import GS2KRB5
from pop3d.sasl.gssapi import GSSAPI
from pop3d.sasl.gssapi_layer import GSSAPILayer
from pop3d.sasl.mechanism import Context, Failure, Mechanism, Success
from pop3d.transport.layer import LayerError
from tests.sasl.kerberos_client import assert_malformed, carry_out, run

FOLDER = Path(__file__).resolve().parents[2] / "vectors" / "kerberos"


@dataclass(frozen=True)
class Case:
    mechanism: str
    client: list[bytes]
    server: list[bytes]
    user: str
    raw: dict[str, Any]


def load() -> tuple[dict[str, Any], dict[str, Case]]:
    """Strict: a vector file missing a field fails here, loudly."""
    document = json.loads((FOLDER / "exchanges.json").read_text())
    cases = {}
    for raw in document["cases"]:
        cases[raw["mechanism"]] = Case(
            raw["mechanism"],
            [base64.b64decode(v, validate=True) for v in raw["client"]],
            [base64.b64decode(v, validate=True) for v in raw["server"]],
            raw["user"],
            raw,
        )
    return document, cases


DOCUMENT, CASES = load()


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRB5_CONFIG", str(FOLDER / "krb5.conf"))
    monkeypatch.setenv("KRB5RCACHETYPE", "none")
    monkeypatch.setenv("KRB5_KTNAME", "FILE:/nonexistent/pop3d-test.keytab")
    monkeypatch.delenv("KRB5_KDC_PROFILE", raising=False)


def context() -> Context:
    return Context(servername=DOCUMENT["servername"], keytab=str(FOLDER / "pop.keytab"))


def replay(
    mechanism: Mechanism, case: Case, client: list[bytes] | None = None
) -> tuple[Success | Failure, list[bytes]]:
    messages = list(client if client is not None else case.client)
    sent: list[bytes] = []

    def respond(challenge: bytes) -> bytes:
        sent.append(challenge)
        return messages.pop(0)

    return run(mechanism, context(), messages.pop(0), respond), sent


def gssapi_login() -> GSSAPILayer:
    case = CASES["GSSAPI"]
    result, sent = replay(GSSAPI(), case)
    assert isinstance(result, Success) and result.authcid == case.user == "alice"
    # No mutual authentication was asked, so the offer is wrapped under the initiator's
    # subkey from the recorded AP-REQ and comes out byte for byte as recorded.
    assert sent == case.server
    assert isinstance(result.layer, GSSAPILayer)
    assert result.layer.confidential and result.layer.ssf == case.raw["ssf"] == 256
    return result.layer


def frames() -> list[tuple[bytes, bytes]]:
    return [
        (base64.b64decode(f["wire"]), base64.b64decode(f["plain"]))
        for f in CASES["GSSAPI"].raw["frames"]
    ]


def test_gssapi_replay_and_frames_in_one_read() -> None:
    layer = gssapi_login()
    wire = b"".join(w for w, _ in frames())
    assert layer.unwrap(wire) == b"".join(p for _, p in frames())


def test_gssapi_replay_frames_split_at_every_byte() -> None:
    layer = gssapi_login()
    wire = b"".join(w for w, _ in frames())
    assert b"".join(layer.unwrap(wire[i : i + 1]) for i in range(len(wire))) == b"".join(
        p for _, p in frames()
    )


def test_gssapi_replay_corrupted_frame() -> None:
    layer = gssapi_login()
    wire = bytearray(frames()[0][0])
    wire[-3] ^= 0x01
    with pytest.raises(LayerError):
        layer.unwrap(bytes(wire))


def test_gssapi_replay_skipped_frame() -> None:
    layer = gssapi_login()
    with pytest.raises(LayerError):
        layer.unwrap(frames()[1][0])  # the second frame first: out of sequence


def test_gssapi_replay_tampered_choice() -> None:
    case = CASES["GSSAPI"]
    choice = bytearray(case.client[-1])
    choice[-1] ^= 0x01
    assert_malformed(replay(GSSAPI(), case, [*case.client[:-1], bytes(choice)])[0])


def test_gssapi_replay_wrong_keytab(tmp_path: Path) -> None:
    case = CASES["GSSAPI"]
    bogus = tmp_path / "empty.keytab"
    bogus.write_bytes(b"\x05\x02")  # a keytab header and no entries
    mechanism = GSSAPI()
    exchange = mechanism.run(Context(servername="localhost", keytab=str(bogus)), case.client[0])
    step = next(exchange)
    with pytest.raises(StopIteration) as stop:
        exchange.send(carry_out(step))
    assert isinstance(stop.value.value, Failure)


def test_gs2_replay() -> None:
    case = CASES["GS2-KRB5"]
    result, _ = replay(GS2KRB5(False), case)
    assert isinstance(result, Success)
    assert (
        (result.authcid, result.authzid) == (case.user, case.raw["authzid"]) == ("alice", "alice")
    )
    assert result.final  # an AP-REP (its subkey is fresh each time, so not compared)


def test_gs2_replay_with_another_authzid_fails() -> None:
    case = CASES["GS2-KRB5"]
    first = case.client[0].replace(b"n,a=alice,", b"n,a=bob,", 1)
    result, _ = replay(GS2KRB5(False), case, [first])
    assert isinstance(result, Failure)
