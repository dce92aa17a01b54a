"""GS2-KRB5, GS2-KRB5-PLUS (RFC 5801) and GSS-SPNEGO against the k5test realm, with a real
python-gssapi initiator playing the client."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
from pathlib import Path

import gssapi.raw as gr
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pop3d.sasl.gs2 import GS2KRB5, framed, parse_header
from pop3d.sasl.gssapi_layer import GSSAPILayer
from pop3d.sasl.kerberos import KRB5, SPNEGO, krb_error_code
from pop3d.sasl.mechanism import Context, Failure, Success
from pop3d.sasl.spnego import GSSSpnego
from tests.sasl.kerberos_client import assert_malformed, initiator, run
from tests.support.kerberos import ROTATED_HOST, Realm
from tests.support.sendauth import SendauthThread

pytestmark = pytest.mark.usefixtures("krb5_env")

END_POINT = b"\x21" * 32
UNIQUE = b"\x42" * 12


def context(realm: Realm, **overrides: object) -> Context:
    arguments: dict[str, object] = {
        "servername": "localhost",
        "keytab": str(realm.keytab),
        "channel_bindings": {"tls-server-end-point": END_POINT, "tls-unique": UNIQUE},
    }
    arguments.update(overrides)
    return Context(**arguments)  # type: ignore[arg-type]


def strip(token: bytes) -> bytes:
    """Remove the RFC 2743 §3.1 framing, as a GS2 client does."""
    assert token[0] == 0x60
    index = 2 if token[1] < 0x80 else 2 + (token[1] & 0x7F)
    assert token[index] == 0x06
    return token[index + 2 + token[index + 1] :]


def gs2_login(
    realm: Realm,
    ccache: Path,
    header: bytes,
    bound: bytes,
    *,
    plus: bool,
    ctx: Context | None = None,
    flags: int | None = None,
) -> tuple[Success | Failure, bytes | None]:
    """Run GS2-KRB5(-PLUS); ``bound`` is what the client puts in its channel bindings."""
    client = initiator(ccache, binding=bound, flags=flags)
    first = header + strip(client.step())
    result = run(GS2KRB5(plus), ctx or context(realm), first, lambda _c: b"")
    if isinstance(result, Success) and result.final is not None:
        client.step(result.final)
        assert client.complete  # the AP-REP authenticates the server to the client
    return result, result.final if isinstance(result, Success) else None


def test_framing_round_trip(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    token = initiator(ticket_caches["alice"]).step()
    assert token is not None
    assert framed(strip(token)) == token


def test_gs2_krb5(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    result, final = gs2_login(krb5_env, ticket_caches["alice"], b"n,,", b"n,,", plus=False)
    assert result == Success("alice", "", final=final, principal=krb5_env.principal("alice"))
    assert final


def test_gs2_authzid(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    header = b"n,a=bo=2Cb=3D,"
    result, _ = gs2_login(krb5_env, ticket_caches["alice"], header, header, plus=False)
    assert isinstance(result, Success) and result.authzid == "bo,b="


@pytest.mark.parametrize("name", ["tls-server-end-point", "tls-unique"])
def test_gs2_krb5_plus(krb5_env: Realm, ticket_caches: dict[str, Path], name: str) -> None:
    header = b"p=" + name.encode() + b",,"
    data = END_POINT if name == "tls-server-end-point" else UNIQUE
    result, _ = gs2_login(krb5_env, ticket_caches["bob"], header, header + data, plus=True)
    assert isinstance(result, Success) and result.authcid == "bob"


@pytest.mark.parametrize(
    ("header", "bound"),
    [
        (b"p=tls-unique,,", b"p=tls-unique,," + b"\x43" * 12),  # another TLS channel
        (b"n,a=bob,", b"n,a=alice,"),  # a relay rewrote the authzid
        (b"n,,", b"y,,"),  # ... or the binding flag
    ],
)
def test_gs2_binding_mismatch(
    krb5_env: Realm, ticket_caches: dict[str, Path], header: bytes, bound: bytes
) -> None:
    plus = header.startswith(b"p=")
    result, _ = gs2_login(krb5_env, ticket_caches["alice"], header, bound, plus=plus)
    assert isinstance(result, Failure)


def test_gs2_unbound_context_is_refused(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    client = initiator(ticket_caches["alice"])  # no channel bindings at all
    result = run(GS2KRB5(False), context(krb5_env), b"n,a=bob," + strip(client.step()), bytes)
    assert isinstance(result, Failure) and "bound" in result.reason


def test_gs2_needs_mutual_authentication(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    result, _ = gs2_login(
        krb5_env,
        ticket_caches["alice"],
        b"n,,",
        b"n,,",
        plus=False,
        flags=int(gr.RequirementFlag.integrity),
    )
    assert isinstance(result, Failure) and "mutual" in result.reason


def test_gs2_downgrade(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    ctx = context(krb5_env, plus_offered=True)
    result, _ = gs2_login(krb5_env, ticket_caches["alice"], b"y,,", b"y,,", plus=False, ctx=ctx)
    assert isinstance(result, Failure) and "downgrade" in result.reason
    ctx = context(krb5_env, plus_offered=False)
    result, _ = gs2_login(krb5_env, ticket_caches["alice"], b"y,,", b"y,,", plus=False, ctx=ctx)
    assert isinstance(result, Success)


@pytest.mark.parametrize(
    ("message", "plus"),
    [
        (b"F,n,,xxxx", False),
        (b"n,,", False),  # no token
        (b"nonsense", False),
        (b"x,,abcd", False),
        (b"n,b=alice,abcd", False),
        (b"n,a=al=ZZice,abcd", False),
        (b"p=tls-exporter,,abcd", False),  # on the plain name, one this connection lacks
        (b"n,,abcd", True),  # -PLUS without one
        (b"p=tls-exporter,,abcd", True),  # one this connection lacks
        (b"p=,,abcd", True),
    ],
)
def test_gs2_malformed(krb5_env: Realm, message: bytes, plus: bool) -> None:
    assert_malformed(run(GS2KRB5(plus), context(krb5_env), message, bytes))


@pytest.mark.parametrize("token", [b"\x00", b"garbage" * 10, b"\xff" * 5000])
def test_gs2_garbage_token(krb5_env: Realm, token: bytes) -> None:
    result = run(GS2KRB5(False), context(krb5_env), b"n,," + token, bytes)
    assert isinstance(result, Failure)


def test_parse_header() -> None:
    assert parse_header(b"p=tls-unique,a=x,T") == (b"p=tls-unique,a=x,", "tls-unique", "x", b"T")
    assert parse_header(b"n,,T,more") == (b"n,,", None, "", b"T,more")


# --- GSS-SPNEGO ---------------------------------------------------------------------------


def spnego_login(
    realm: Realm,
    ccache: Path,
    ctx: Context | None = None,
    binding: bytes | None = None,
    flags: int | None = None,
    *,
    service: str = "pop@localhost",
) -> tuple[Success | Failure, object]:
    client = initiator(ccache, mech=SPNEGO, binding=binding, flags=flags, service=service)
    token = client.step()

    def respond(challenge: bytes) -> bytes:
        return client.step(challenge) or b""

    result = run(GSSSpnego(), ctx or context(realm, channel_bindings={}), token, respond)
    if isinstance(result, Success) and result.final is not None:
        client.step(result.final)
    return result, client


def test_spnego_gives_a_confidentiality_layer(
    krb5_env: Realm, ticket_caches: dict[str, Path]
) -> None:
    result, client = spnego_login(krb5_env, ticket_caches["alice"])
    assert isinstance(result, Success) and result.authcid == "alice"
    assert result.final is not None and client.complete  # type: ignore[attr-defined]
    assert isinstance(result.layer, GSSAPILayer) and result.layer.confidential
    assert result.layer.ssf == 256
    token = client.wrap(b"STAT\r\n", True).message  # type: ignore[attr-defined]
    assert result.layer.unwrap(len(token).to_bytes(4, "big") + token) == b"STAT\r\n"


def test_spnego_layer_below_the_minimum(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    ctx = context(krb5_env, channel_bindings={}, min_ssf=100_000)
    result, _ = spnego_login(krb5_env, ticket_caches["alice"], ctx)
    assert isinstance(result, Failure) and "below" in result.reason
    # the realm proved alice: the policy's refusal, not a failed password for fail2ban
    assert (result.authcid, result.authenticated) == ("alice", True)


def test_a_key_rotated_at_the_kdc_and_not_in_the_keytab_is_the_servers_fault(
    krb5_env: Realm, ticket_caches: dict[str, Path], tmp_path: Path
) -> None:
    """GS2-KRB5 and GSS-SPNEGO as GSSAPI: a ticket under a kvno the keytab lacks is no
    verdict on the client (found probing: it was a failure fail2ban counted)."""
    service = f"pop@{ROTATED_HOST}"
    ctx = context(
        krb5_env,
        servername=ROTATED_HOST,
        keytab=str(krb5_env.stale_keytab(tmp_path)),
        channel_bindings={},
    )
    spnego, _ = spnego_login(krb5_env, ticket_caches["alice"], ctx, service=service)
    client = initiator(ticket_caches["alice"], service=service)
    gs2 = run(GS2KRB5(False), ctx, b"n,," + strip(client.step()), lambda _c: b"")
    for result in (spnego, gs2):
        assert isinstance(result, Failure) and result.temporary, result
        assert "keytab lacks the ticket's key" in result.reason


@given(st.binary(max_size=300))
def test_reading_a_failure_tokens_krb_error_never_raises(data: bytes) -> None:
    """It reads what our own library answered, but whatever that is: a code or None."""
    assert krb_error_code(data) is None or isinstance(krb_error_code(data), int)


def test_spnego_over_tls_keeps_the_layer_the_flags_impose(
    krb5_env: Realm, ticket_caches: dict[str, Path]
) -> None:
    """Over TLS the policy's net maximum is 0, but MIT clients always ask for
    confidentiality and GSS-SPNEGO cannot decline it: the login works, with the layer."""
    ctx = context(krb5_env, channel_bindings={}, ssf=256, min_ssf=0, max_ssf=0)
    result, _ = spnego_login(krb5_env, ticket_caches["alice"], ctx)
    assert isinstance(result, Success) and result.layer is not None


def test_spnego_channel_binding(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    ctx = context(krb5_env, channel_bindings={"tls-server-end-point": END_POINT})
    good = b"tls-server-end-point:" + END_POINT
    result, _ = spnego_login(krb5_env, ticket_caches["alice"], ctx, binding=good)
    assert isinstance(result, Success)
    result, _ = spnego_login(krb5_env, ticket_caches["alice"], ctx, binding=b"other")
    assert isinstance(result, Failure)
    strict = dataclasses.replace(ctx, require_channel_binding=True)
    result, _ = spnego_login(krb5_env, ticket_caches["alice"], strict)
    assert isinstance(result, Failure)


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + body


def kpop_ap_req(ccache: Path) -> bytes:
    """The AP-REQ a KPOP client (krb5_sendauth, as fetchmail calls it) sends: no checksum
    in its authenticator, so no GSS flags."""
    ours, theirs = socket.socketpair()
    thread = SendauthThread(theirs, f"FILE:{ccache}")
    thread.start()
    with ours, theirs:
        ours.settimeout(10)
        received = b""
        while len(received) < 36:  # the two version strings, framed
            received += ours.recv(4096)
        ours.sendall(b"\0")  # versions accepted: the AP-REQ follows, framed
        while len(received) < 40 or len(received) < 40 + int.from_bytes(received[36:40]):
            received += ours.recv(65536)
        size = int.from_bytes(received[36:40])
        ours.shutdown(socket.SHUT_RDWR)
    thread.join(10)
    return received[40 : 40 + size]


def test_spnego_refuses_a_kpop_ap_req(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    """Found probing: over TLS a KPOP client's AP-REQ, captured and wrapped in a GSS header
    inside a SPNEGO NegTokenInit, logged in by GSS-SPNEGO: MIT takes the missing checksum
    (MS-KILE) and then checks no channel binding. Every real SPNEGO client asks for mutual
    authentication; a context without it is refused, as GS2 refuses it."""
    krb5_oid = bytes.fromhex("06092a864886f712010202")
    inner = _der(0x60, krb5_oid + b"\x01\x00" + kpop_ap_req(ticket_caches["alice"]))
    init = _der(0x30, _der(0xA0, _der(0x30, krb5_oid)) + _der(0xA2, _der(0x04, inner)))
    token = _der(0x60, bytes.fromhex("06062b0601050502") + _der(0xA0, init))
    ctx = context(krb5_env, channel_bindings={}, ssf=256, min_ssf=0, max_ssf=0)
    result = run(GSSSpnego(), ctx, token, lambda _challenge: b"")
    assert isinstance(result, Failure) and "mutual" in result.reason, result


def test_spnego_refuses_a_bare_kerberos_token(
    krb5_env: Realm, ticket_caches: dict[str, Path]
) -> None:
    token = initiator(ticket_caches["alice"], mech=KRB5).step()
    assert token is not None
    result = run(GSSSpnego(), context(krb5_env), token, bytes)
    assert isinstance(result, Failure)


@pytest.mark.parametrize("token", [b"\x60\x00", b"garbage", b"\xa1" * 3000])
def test_spnego_garbage(krb5_env: Realm, token: bytes) -> None:
    result = run(GSSSpnego(), context(krb5_env), token, bytes)
    assert isinstance(result, Failure)


def test_framing_names_kerberos() -> None:
    assert framed(b"")[2:] == b"\x06\x09" + bytes(KRB5)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def instance_cache(kerberos_realm: Realm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bob/admin's TGT: a principal the realm proves that maps to no local user."""
    kerberos_realm.k5.addprinc("bob/admin", "instance-secret")
    cache = tmp_path_factory.mktemp("instance") / "bob-admin.cc"
    env = dict(kerberos_realm.env, KRB5CCNAME=f"FILE:{cache}")
    subprocess.run(
        ["kinit", "bob/admin"], input=b"instance-secret\n", env=env, check=True, capture_output=True
    )
    return cache


@pytest.mark.parametrize("mechanism", ["GS2-KRB5", "GSS-SPNEGO"])
def test_a_principal_without_a_user_is_a_refusal(
    krb5_env: Realm, instance_cache: Path, mechanism: str
) -> None:
    """The realm proved bob/admin; the name has no user here: refused, not a failed
    password fail2ban counts (found probing)."""
    if mechanism == "GS2-KRB5":
        result, _ = gs2_login(krb5_env, instance_cache, b"n,,", b"n,,", plus=False)
    else:
        result, _ = spnego_login(krb5_env, instance_cache)
    assert isinstance(result, Failure) and "maps to no local user" in result.reason, result
    assert result.authenticated and result.authcid.startswith("bob/admin@")
