"""fetchmail's recorded KPOP exchange (vectors/kerberos/kpop/), replayed offline: no KDC,
only the recorded keytab and krb5.conf."""

from __future__ import annotations

from pathlib import Path

import pytest

from pop3d.kerberos.mit import Acceptor
from pop3d.kpop.handshake import Authenticated, Handshake, Refused
from tests.support.kpop import drive_bytes
from tests.support.kpop_vectors import SendauthVector, load_sendauth

VECTOR = load_sendauth()
NORMAL_SKEW = "[libdefaults]\n    default_realm = {realm}\n"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SendauthVector:
    monkeypatch.setenv("KRB5_CONFIG", str(VECTOR.krb5_conf))
    monkeypatch.setenv("KRB5RCACHETYPE", "none")
    monkeypatch.setenv("KRB5RCACHEDIR", str(tmp_path))
    monkeypatch.delenv("KRB5_KTNAME", raising=False)
    return VECTOR


def acceptor(vector: SendauthVector, pinned_time: int | None = None) -> Acceptor:
    service, host = vector.service.split("/")
    return Acceptor(keytab=str(vector.keytab), service=service, host=host, pinned_time=pinned_time)


def test_the_vector_is_fetchmails_sendauth() -> None:
    """The layout of kpop.md §1.2: both versions, then an AP-REQ asking for mutual auth."""
    assert VECTOR.client.startswith(b"\0\0\0\x13KRB5_SENDAUTH_V1.0\0" + b"\0\0\0\x09KPOPV1.0\0")
    ap_req = VECTOR.client[40:]
    assert ap_req[:1] == b"\x6e"
    assert b"\xa2\x07\x03\x05\x00\x20\x00\x00\x00" in ap_req[:32]  # ap-options: mutual-required
    assert "fetchmail" in VECTOR.source
    assert VECTOR.server[:5] == b"\x00\0\0\0\0"


@pytest.mark.parametrize("chunk", [0, 1, 64])
def test_replayed_offline_with_a_wide_clock_skew(offline: SendauthVector, chunk: int) -> None:
    out = drive_bytes(Handshake(acceptor(offline).verify), offline.client, chunk=chunk)
    assert out.result == Authenticated(offline.client_principal, offline.realm, mutual=True)
    assert out.sent[:5] == b"\x00\0\0\0\0"
    assert out.sent[9:10] == b"\x6f"  # a fresh AP-REP (new confounder: not the recorded one)


def test_replayed_at_the_capture_time_with_a_normal_skew(
    offline: SendauthVector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "krb5.conf"
    conf.write_text(NORMAL_SKEW.format(realm=offline.realm))
    monkeypatch.setenv("KRB5_CONFIG", str(conf))
    out = drive_bytes(Handshake(acceptor(offline, offline.captured + 60).verify), offline.client)
    assert isinstance(out.result, Authenticated)
    late = acceptor(offline, offline.captured + 2 * 86400)
    out = drive_bytes(Handshake(late.verify), offline.client)
    assert isinstance(out.result, Refused) and "expired" in out.result.reason


def test_with_the_replay_cache_on_the_second_replay_is_refused(
    offline: SendauthVector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KRB5RCACHETYPE")
    verify = acceptor(offline).verify
    assert isinstance(drive_bytes(Handshake(verify), offline.client).result, Authenticated)
    again = drive_bytes(Handshake(verify), offline.client)
    assert isinstance(again.result, Refused) and "replay" in again.result.reason
    assert again.sent[5:6] == b"\x7e"  # KRB-ERROR


def test_the_wrong_service_refuses_the_recorded_ticket(offline: SendauthVector) -> None:
    other = Acceptor(keytab=str(offline.keytab), service="imap", host="localhost")
    out = drive_bytes(Handshake(other.verify), offline.client)
    assert isinstance(out.result, Refused)
