"""The GSSAPI security layer's contract, on real contexts (a python-gssapi initiator and
acceptor from the k5test realm): framing in any chunking, limits, and every bad frame a
LayerError."""

from __future__ import annotations

from pathlib import Path

import gssapi
import gssapi.raw as gr
import pytest

from pop3d.sasl.gssapi_layer import GSSAPILayer
from pop3d.transport.layer import LayerError, LayerStack
from tests.sasl.kerberos_client import initiator
from tests.support.kerberos import Realm

pytestmark = pytest.mark.usefixtures("krb5_env")


def pair(
    realm: Realm, ccache: Path, *, confidential: bool, max_in: int = 4096, max_out: int = 4096
) -> tuple[GSSAPILayer, gssapi.SecurityContext]:
    client = initiator(ccache)
    name = gr.import_name(b"pop@localhost", gr.NameType.hostbased_service)
    store = {b"keytab": str(realm.keytab).encode()}
    creds = gr.acquire_cred_from(store, name, usage="accept").creds
    accepted = gr.accept_sec_context(client.step(), acceptor_creds=creds)
    client.step(accepted.token)
    assert client.complete
    layer = GSSAPILayer(
        accepted.context,
        confidential=confidential,
        ssf=256 if confidential else 1,
        max_in=max_in,
        max_out=max_out,
    )
    return layer, client


def frame(client: gssapi.SecurityContext, data: bytes, confidential: bool) -> bytes:
    token = client.wrap(data, confidential).message
    return len(token).to_bytes(4, "big") + token


def frames(wire: bytes) -> list[bytes]:
    out = []
    while wire:
        size = int.from_bytes(wire[:4], "big")
        out.append(wire[4 : 4 + size])
        assert len(out[-1]) == size
        wire = wire[4 + size :]
    return out


@pytest.fixture(params=[False, True], ids=["integrity", "confidentiality"])
def confidential(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_frame_split_at_every_byte(
    krb5_env: Realm, ticket_caches: dict[str, Path], confidential: bool
) -> None:
    layer, client = pair(krb5_env, ticket_caches["alice"], confidential=confidential)
    wire = frame(client, b"RETR 1\r\n", confidential) + frame(client, b"QUIT\r\n", confidential)
    got = b"".join(layer.unwrap(wire[i : i + 1]) for i in range(len(wire)))
    assert got == b"RETR 1\r\nQUIT\r\n"


def test_two_frames_in_one_read_and_a_partial_third(
    krb5_env: Realm, ticket_caches: dict[str, Path], confidential: bool
) -> None:
    layer, client = pair(krb5_env, ticket_caches["alice"], confidential=confidential)
    wire = frame(client, b"STAT\r\n", confidential) + frame(client, b"LIST\r\n", confidential)
    third = frame(client, b"NOOP\r\n", confidential)
    assert layer.unwrap(wire + third[:7]) == b"STAT\r\nLIST\r\n"
    assert layer.unwrap(third[7:]) == b"NOOP\r\n"
    assert layer.unwrap(b"") == b""


@pytest.mark.parametrize("size", [0, 4097, 0xFFFFFFFF])
def test_bad_length_is_refused_at_once(
    krb5_env: Realm, ticket_caches: dict[str, Path], size: int
) -> None:
    layer, _ = pair(krb5_env, ticket_caches["alice"], confidential=True)
    assert layer.unwrap(size.to_bytes(4, "big")[:3]) == b""  # not yet known
    with pytest.raises(LayerError, match="frame of"):
        layer.unwrap(size.to_bytes(4, "big")[3:])  # no body needed to refuse it


def test_frame_at_the_limit_is_accepted(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    layer, client = pair(krb5_env, ticket_caches["alice"], confidential=True)
    wire = frame(client, b"x" * 1000, True)
    layer_exact, client_exact = pair(
        krb5_env, ticket_caches["alice"], confidential=True, max_in=len(wire) - 4
    )
    assert layer_exact.unwrap(frame(client_exact, b"x" * 1000, True)) == b"x" * 1000
    assert layer.unwrap(wire) == b"x" * 1000


@pytest.mark.parametrize("where", [4, 20, -1])
def test_corrupted_token(
    krb5_env: Realm, ticket_caches: dict[str, Path], confidential: bool, where: int
) -> None:
    layer, client = pair(krb5_env, ticket_caches["alice"], confidential=confidential)
    wire = bytearray(frame(client, b"DELE 1\r\n", confidential))
    wire[where] ^= 0x40
    with pytest.raises(LayerError):
        layer.unwrap(bytes(wire))


def test_garbage_token(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    layer, _ = pair(krb5_env, ticket_caches["alice"], confidential=False)
    with pytest.raises(LayerError):
        layer.unwrap(b"\x00\x00\x00\x05hello")


def test_wrong_protection(
    krb5_env: Realm, ticket_caches: dict[str, Path], confidential: bool
) -> None:
    layer, client = pair(krb5_env, ticket_caches["alice"], confidential=confidential)
    with pytest.raises(LayerError, match="protection"):
        layer.unwrap(frame(client, b"STAT\r\n", not confidential))


def test_replayed_frame(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    layer, client = pair(krb5_env, ticket_caches["alice"], confidential=True)
    wire = frame(client, b"DELE 1\r\n", True)
    assert layer.unwrap(wire) == b"DELE 1\r\n"
    with pytest.raises(LayerError):
        layer.unwrap(wire)


def test_reordered_frames(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    layer, client = pair(krb5_env, ticket_caches["alice"], confidential=True)
    first, second = frame(client, b"DELE 1\r\n", True), frame(client, b"QUIT\r\n", True)
    with pytest.raises(LayerError):
        layer.unwrap(second + first)


@pytest.mark.parametrize("max_out", [400, 1024, 65536])
def test_wrap_fits_the_peer_buffer(
    krb5_env: Realm, ticket_caches: dict[str, Path], confidential: bool, max_out: int
) -> None:
    layer, client = pair(
        krb5_env, ticket_caches["alice"], confidential=confidential, max_out=max_out
    )
    data = bytes(range(256)) * 600
    tokens = frames(layer.wrap(data))
    assert len(tokens) > 1 or max_out == 65536
    assert all(len(token) <= max_out for token in tokens)
    assert max(len(token) for token in tokens) > max_out - 80  # and uses the room it has
    plain = []
    for token in tokens:
        result = client.unwrap(token)
        assert result.encrypted is confidential
        plain.append(result.message)
    assert b"".join(plain) == data
    assert layer.wrap(b"") == b""


@pytest.mark.parametrize("max_out", [16, 61, 200])
def test_peer_buffer_too_small(
    krb5_env: Realm, ticket_caches: dict[str, Path], confidential: bool, max_out: int
) -> None:
    """A buffer holding less than SMALLEST_CHUNK octets of data a token is refused: one
    octet a token made a RETR a hundred times the CPU, stalling the worker (found probing)."""
    with pytest.raises(ValueError, match="fewer than the 256 a token must carry"):
        pair(krb5_env, ticket_caches["alice"], confidential=confidential, max_out=max_out)


def test_in_a_layer_stack(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    layer, client = pair(krb5_env, ticket_caches["alice"], confidential=True)
    stack = LayerStack()
    stack.push(layer)
    data, reply = stack.receive(frame(client, b"CAPA\r\n", True))
    assert (data, reply) == (b"CAPA\r\n", b"")
    assert client.unwrap(frames(stack.wrap(b"+OK\r\n"))[0]).message == b"+OK\r\n"
    assert stack.close() == b"" and not stack.peer_closed
    assert layer.ssf == 256 and layer.outgoing() == b""


def test_unwrap_leaves_the_token_alone(krb5_env: Realm, ticket_caches: dict[str, Path]) -> None:
    """MIT un-rotates CFX tokens in place; the bytes we were given must not change."""
    from pop3d.sasl.kerberos import unwrap

    layer, client = pair(krb5_env, ticket_caches["alice"], confidential=False)
    token = client.wrap(b"\x04\x01\x00\x00", False).message
    before = bytes(bytearray(token))
    assert unwrap(layer._context, token) == (b"\x04\x01\x00\x00", False)
    assert token == before
