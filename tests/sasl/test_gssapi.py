"""GSSAPI (RFC 4752) against a real MIT KDC (k5test) with a real python-gssapi initiator:
layer negotiation, principal mapping, channel bindings, and every bad input ending in a
Failure or MalformedResponse."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import gssapi
import gssapi.raw as gr
import pytest

from pop3d.sasl.gssapi import GSSAPI, LAYER_CONFIDENTIALITY, LAYER_INTEGRITY, LAYER_NONE
from pop3d.sasl.gssapi_layer import GSSAPILayer
from pop3d.sasl.kerberos import local_user
from pop3d.sasl.mechanism import Context, Failure, MalformedResponse, Success
from pop3d.security.policy import Policy
from pop3d.security.value import Security, TLSInfo
from tests.sasl.kerberos_client import GssapiClient, assert_malformed, initiator, run
from tests.support.kerberos import ROTATED_HOST, Realm

pytestmark = pytest.mark.usefixtures("krb5_env")

BINDING = b"\x13" * 32  # stands for the SHA-256 of our certificate

TLS_256 = TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)


def context(realm: Realm, **overrides: object) -> Context:
    arguments: dict[str, object] = {"servername": "localhost", "keytab": str(realm.keytab)}
    arguments.update(overrides)
    return Context(**arguments)  # type: ignore[arg-type]


def login(
    realm: Realm, ccache: Path, ctx: Context | None = None, **client: object
) -> tuple[Success | Failure, GssapiClient]:
    sec = initiator(ccache, binding=client.pop("binding", None))  # type: ignore[arg-type]
    peer = GssapiClient(sec, **client)  # type: ignore[arg-type]
    result = run(GSSAPI(), ctx or context(realm), peer.initial(), peer.respond)
    return result, peer


def test_no_layer(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    result, peer = login(krb5_env, ticket_caches["alice"])
    assert result == Success("alice", "", principal=krb5_env.principal("alice"))
    assert peer.offered == LAYER_NONE | LAYER_INTEGRITY | LAYER_CONFIDENTIALITY
    assert peer.server_max == 65536


def test_initial_response_may_be_absent(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    peer = GssapiClient(initiator(ticket_caches["bob"]))
    first = peer.initial()
    answers = iter([first])

    def respond(challenge: bytes) -> bytes:
        if challenge == b"" and not peer.ctx.complete and peer.offered is None:
            return next(answers, b"")
        return peer.respond(challenge)

    result = run(GSSAPI(), context(krb5_env), None, respond)
    assert result == Success("bob", "", principal=krb5_env.principal("bob"))


@pytest.mark.parametrize("layer", [LAYER_INTEGRITY, LAYER_CONFIDENTIALITY])
def test_layer_carries_data_both_ways(
    krb5_env: Realm, ticket_caches: dict[str, Path], layer: int
) -> None:
    result, peer = login(krb5_env, ticket_caches["alice"], layer=layer, authzid=b"alice")
    assert isinstance(result, Success) and result.authzid == "alice"
    assert isinstance(result.layer, GSSAPILayer)
    confidential = layer == LAYER_CONFIDENTIALITY
    assert result.layer.confidential is confidential
    # k5test's KDC issues aes256-cts tickets: MIT reports 256 for them, as Cyrus does.
    assert result.layer.ssf == (256 if confidential else 1)
    wire = result.layer.wrap(b"+OK 2 messages\r\n")
    size = int.from_bytes(wire[:4], "big")
    assert len(wire) == 4 + size
    unwrapped = peer.ctx.unwrap(wire[4:])
    assert unwrapped.message == b"+OK 2 messages\r\n"
    assert unwrapped.encrypted is confidential
    token = peer.ctx.wrap(b"STAT\r\n", confidential).message
    assert result.layer.unwrap(len(token).to_bytes(4, "big") + token) == b"STAT\r\n"


def test_minimum_layer_withdraws_no_layer(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    ctx = context(krb5_env, min_ssf=56)
    result, peer = login(krb5_env, ticket_caches["alice"], ctx, layer=LAYER_NONE)
    assert isinstance(result, Failure) and "chose layer 1" in result.reason
    assert peer.offered == LAYER_CONFIDENTIALITY


def test_tls_meets_the_minimum(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    # sasl_minimum_layer 56 over TLS of 256: the policy asks the layer for 56 - 256 -> 0
    # more (security/policy.py layer_range), so "no layer" is allowed.
    layers = Policy(minimum_ssf=56, maximum_ssf=512).layer_range(Security(TLS_256))
    ctx = context(krb5_env, ssf=256, min_ssf=layers.low, max_ssf=layers.high)
    result, peer = login(krb5_env, ticket_caches["alice"], ctx)
    assert result == Success("alice", "", principal=krb5_env.principal("alice"))
    assert peer.offered == LAYER_NONE | LAYER_INTEGRITY | LAYER_CONFIDENTIALITY


def test_maximum_zero_offers_no_layer_and_no_buffer(
    krb5_env: Realm, ticket_caches: dict[str, Path]
) -> None:
    result, peer = login(krb5_env, ticket_caches["alice"], context(krb5_env, max_ssf=0))
    assert result == Success("alice", "", principal=krb5_env.principal("alice"))
    assert (peer.offered, peer.server_max) == (LAYER_NONE, 0)


@pytest.mark.parametrize(("low", "high"), [(512, 512), (56, 100)])
def test_nothing_acceptable_fails_before_the_offer(
    krb5_env: Realm, ticket_caches: dict[str, Path], low: int, high: int
) -> None:
    """56..100 and an aes256 context (SSF 256): integrity is below, confidentiality above.
    The realm proved alice; the policy refuses: not a failed password fail2ban counts
    (found probing: it was SASL(-13))."""
    ctx = context(krb5_env, min_ssf=low, max_ssf=high)
    result, peer = login(krb5_env, ticket_caches["alice"], ctx)
    assert isinstance(result, Failure) and "no security layer" in result.reason
    assert (result.authcid, result.authenticated) == ("alice", True)
    assert peer.offered is None


def test_unoffered_layer_is_refused(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    result, peer = login(
        krb5_env, ticket_caches["alice"], context(krb5_env, max_ssf=1), layer=LAYER_CONFIDENTIALITY
    )
    assert isinstance(result, Failure) and "chose layer 4" in result.reason
    assert peer.offered == LAYER_NONE | LAYER_INTEGRITY


@pytest.mark.parametrize(
    ("choice", "outcome"),
    [
        (b"\x03\x00\x10\x00", Failure),  # two layers at once
        (b"\x08\x00\x10\x00", Failure),  # no such layer
        (b"\x00\x00\x10\x00", Failure),  # none at all
        (b"\x02\x00\x00\x00", Failure),  # a layer, but no room for a single frame
        (b"\x04\x00\x00\x3d", Failure),  # 61 octets: one octet of data a token
        (b"\x01\x00\x10", MalformedResponse),  # three octets
        (b"", MalformedResponse),
        (b"\x01\x00\x00\x00\xff\xfe", MalformedResponse),  # authzid not UTF-8
    ],
)
def test_bad_choice(
    krb5_env: Realm, ticket_caches: dict[str, Path], choice: bytes, outcome: type
) -> None:
    if outcome is MalformedResponse:
        result, _ = login(krb5_env, ticket_caches["alice"], choice_override=choice)
        assert_malformed(result)
        # the realm vouched for alice before the malformed choice: the log says so
        assert isinstance(result, Failure) and result.authcid == "alice"
    else:
        result, _ = login(krb5_env, ticket_caches["alice"], choice_override=choice)
        assert isinstance(result, Failure)
        # the realm proved alice: a choice refused is not a failed password for fail2ban
        assert (result.authcid, result.authenticated) == ("alice", True)


def test_unwrapped_choice_is_malformed(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    peer = GssapiClient(initiator(ticket_caches["alice"]))

    def respond(challenge: bytes) -> bytes:
        answer = peer.respond(challenge)
        return b"\x01\x00\x00\x00" if peer.offered is not None else answer

    result = run(GSSAPI(), context(krb5_env), peer.initial(), respond)
    assert_malformed(result)
    assert isinstance(result, Failure) and result.authcid == "alice"


def test_data_after_the_last_context_token(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    peer = GssapiClient(initiator(ticket_caches["alice"]))

    def respond(challenge: bytes) -> bytes:
        answer = peer.respond(challenge)
        return b"unexpected" if peer.ctx.complete and peer.offered is None else answer

    assert_malformed(run(GSSAPI(), context(krb5_env), peer.initial(), respond))


@pytest.mark.parametrize("cut", ["garbage", "truncated", "oversize", "flipped"])
def test_bad_first_token(krb5_env: Realm, ticket_caches: dict[str, Path], cut: str) -> None:
    token = GssapiClient(initiator(ticket_caches["alice"])).initial()
    bad = {
        "garbage": b"\x60\x03abc" + os.urandom(40),
        "truncated": token[: len(token) // 2],
        "oversize": token + os.urandom(1 << 20),
        "flipped": token[:-20] + bytes([token[-20] ^ 1]) + token[-19:],
    }[cut]
    result = run(GSSAPI(), context(krb5_env), bad, lambda _c: b"")
    assert isinstance(result, Failure), result


def test_empty_first_token_is_malformed(krb5_env: Realm) -> None:
    assert_malformed(run(GSSAPI(), context(krb5_env), b"", lambda _c: b""))


def test_ticket_for_another_service(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    peer = GssapiClient(initiator(ticket_caches["alice"], service="host@localhost"))
    result = run(GSSAPI(), context(krb5_env), peer.initial(), peer.respond)
    assert isinstance(result, Failure) and "does not match" in result.reason
    assert not result.temporary  # the client's doing


def test_keytab_without_our_key(
    krb5_env: Realm, ticket_caches: dict[str, Path], tmp_path: Path
) -> None:
    other = krb5_env.service_keytab(tmp_path, service="host")
    peer = GssapiClient(initiator(ticket_caches["alice"]))
    result = run(GSSAPI(), context(krb5_env, keytab=str(other)), peer.initial(), peer.respond)
    assert isinstance(result, Failure)


@pytest.mark.parametrize("spoiled", ["removed", "garbage", "without our key"])
def test_a_keytab_spoiled_after_the_start_is_the_servers_fault(
    krb5_env: Realm, ticket_caches: dict[str, Path], tmp_path: Path, spoiled: str
) -> None:
    """No verdict on the client (the session answers -ERR [SYS/TEMP] and logs no failed
    login): our own credentials cannot be had, whatever the client sent."""
    keytab = tmp_path / "pop.keytab"
    if spoiled == "garbage":
        keytab.write_bytes(b"\x05\x02" + bytes(range(256)))
    elif spoiled == "without our key":
        keytab = krb5_env.service_keytab(tmp_path, service="host")
    peer = GssapiClient(initiator(ticket_caches["alice"]))
    result = run(GSSAPI(), context(krb5_env, keytab=str(keytab)), peer.initial(), peer.respond)
    assert isinstance(result, Failure) and result.temporary, result
    assert "acceptor credentials" in result.reason


def test_a_key_rotated_at_the_kdc_and_not_in_the_keytab_is_the_servers_fault(
    krb5_env: Realm,
    ticket_caches: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The KDC seals tickets under a kvno the keytab lacks (MIT: "keytab is likely out of
    date"): no verdict on the client, and an error line for the operator naming the kvno.
    Found probing: every GSSAPI login during a rotation was a failure fail2ban counted."""
    keytab = krb5_env.stale_keytab(tmp_path)
    peer = GssapiClient(initiator(ticket_caches["alice"], service=f"pop@{ROTATED_HOST}"))
    ctx = context(krb5_env, servername=ROTATED_HOST, keytab=str(keytab))
    result = run(GSSAPI(), ctx, peer.initial(), peer.respond)
    assert isinstance(result, Failure) and result.temporary, result
    assert "keytab lacks the ticket's key" in result.reason and "kvno 2" in result.reason
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("kvno 2 not found in keytab" in message for message in errors), errors


def test_default_keytab_from_the_environment(
    krb5_env: Realm, ticket_caches: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRB5_KTNAME", f"FILE:{krb5_env.keytab}")
    result, _ = login(krb5_env, ticket_caches["alice"], context(krb5_env, keytab=None))
    assert result == Success("alice", "", principal=krb5_env.principal("alice"))


def test_replayed_ap_req(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    peer = GssapiClient(initiator(ticket_caches["alice"]))
    first = peer.initial()
    assert isinstance(run(GSSAPI(), context(krb5_env), first, peer.respond), Success)
    again = run(GSSAPI(), context(krb5_env), first, lambda _c: b"")
    assert isinstance(again, Failure) and "replay" in again.reason


def test_principal_with_an_instance_is_refused(
    krb5_env: Realm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    krb5_env.k5.addprinc("alice/admin", "instance-secret")
    cache = tmp_path / "admin.cc"
    env = dict(krb5_env.env, KRB5CCNAME=f"FILE:{cache}")
    import subprocess

    subprocess.run(
        ["kinit", "alice/admin"],
        input=b"instance-secret\n",
        env=env,
        check=True,
        capture_output=True,
    )
    result, _ = login(krb5_env, cache)
    assert isinstance(result, Failure) and "alice/admin@" in result.reason
    # The realm proved it: a refusal, not a failed password (found probing)
    assert result.authenticated


def test_principal_mapping() -> None:
    assert local_user("alice@EXAMPLE.COM", "EXAMPLE.COM", ()) == "alice"
    assert local_user("alice@OTHER.ORG", "EXAMPLE.COM", ("OTHER.ORG",)) == "alice"
    assert local_user("alice@OTHER.ORG", "EXAMPLE.COM", ("other.org",)) == "alice"
    for principal in (
        "alice@OTHER.ORG",  # a realm we were not told to trust
        "alice@example.com",  # realms are case-sensitive
        "alice/admin@EXAMPLE.COM",
        "al\\@ice@EXAMPLE.COM",
        "@EXAMPLE.COM",
        "alice@",
        "alice",
        "al\nice@EXAMPLE.COM",
    ):
        assert local_user(principal, "EXAMPLE.COM", ()) is None, principal


def test_channel_binding_verified(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    ctx = context(krb5_env, channel_bindings={"tls-server-end-point": BINDING})
    good = b"tls-server-end-point:" + BINDING
    result, _ = login(krb5_env, ticket_caches["alice"], ctx, binding=good)
    assert result == Success("alice", "", principal=krb5_env.principal("alice"))
    strict = dataclasses.replace(ctx, require_channel_binding=True)
    result, _ = login(krb5_env, ticket_caches["alice"], strict, binding=good)
    assert result == Success("alice", "", principal=krb5_env.principal("alice"))


@pytest.mark.parametrize(
    "binding",
    [
        b"tls-server-end-point:" + b"\x14" * 32,  # another certificate: a relay
        BINDING,  # without the RFC 5056 prefix
        b"tls-unique:" + BINDING,
    ],
)
def test_channel_binding_mismatch(
    krb5_env: Realm, ticket_caches: dict[str, Path], binding: bytes
) -> None:
    ctx = context(krb5_env, channel_bindings={"tls-server-end-point": BINDING})
    result, _ = login(krb5_env, ticket_caches["alice"], ctx, binding=binding)
    assert isinstance(result, Failure)


def test_channel_binding_required(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    ctx = context(krb5_env, channel_bindings={"tls-server-end-point": BINDING})
    result, _ = login(krb5_env, ticket_caches["alice"], ctx)  # MIT's rule: unbound passes
    assert result == Success("alice", "", principal=krb5_env.principal("alice"))
    strict = dataclasses.replace(ctx, require_channel_binding=True)
    result, _ = login(krb5_env, ticket_caches["alice"], strict)
    assert isinstance(result, Failure) and "bind" in result.reason


def test_context_without_integrity_offers_no_layer(
    krb5_env: Realm, ticket_caches: dict[str, Path]
) -> None:
    # MIT always grants integ/conf to a krb5 acceptor; what we check is that the offer is
    # built from the context's flags, so the initiator's request makes no difference here.
    sec = initiator(ticket_caches["alice"], flags=int(gr.RequirementFlag.mutual_authentication))
    peer = GssapiClient(sec)
    result = run(GSSAPI(), context(krb5_env), peer.initial(), peer.respond)
    assert result == Success("alice", "", principal=krb5_env.principal("alice"))
    assert peer.offered is not None and peer.offered & LAYER_NONE


def test_gssapi_module_is_importable_without_a_realm() -> None:
    assert gssapi.MechType.kerberos is not None


@pytest.mark.slow
def test_expired_ticket(krb5_env: Realm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ticket whose lifetime ended before the AP-REQ reached us is refused: the acceptor
    checks the ticket's times against its clock, within krb5.conf's clockskew (1 s here)."""
    import subprocess
    import time

    cache = tmp_path / "short.cc"
    env = dict(krb5_env.env, KRB5CCNAME=f"FILE:{cache}")
    subprocess.run(
        ["kinit", "-l", "2s", krb5_env.principal("alice")],
        input=b"wonderland\n",
        env=env,
        check=True,
        capture_output=True,
    )
    peer = GssapiClient(initiator(cache))
    first = peer.initial()  # the service ticket inherits the 2 s lifetime
    strict = tmp_path / "krb5.conf"
    text = Path(krb5_env.env["KRB5_CONFIG"]).read_text()
    strict.write_text(text.replace("[libdefaults]", "[libdefaults]\n\tclockskew = 1", 1))
    monkeypatch.setenv("KRB5_CONFIG", str(strict))
    time.sleep(4)
    result = run(GSSAPI(), context(krb5_env), first, peer.respond)
    assert isinstance(result, Failure), result
    assert "expired" in result.reason.lower() or "skew" in result.reason.lower(), result
