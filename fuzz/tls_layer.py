"""Fuzz target: TLS as a security layer (pop3d/transport/tls_layer.py) in a LayerStack
(pop3d/transport/layer.py), with the server context pop3d builds from imapd.conf
(pop3d/transport/tls.py: TLS 1.2+, optional client certificates).

Invariant: whatever the client sends, the server's handshake raises only
TLSHandshakeError and its unwrap (through the stack) only LayerError; after a completed
handshake the connection facts (SSF, version, channel bindings, client identity) are
well-typed, what a genuine client wraps comes out unchanged, and wrap/close/outgoing raise
nothing.

Input: byte 0 the mode, byte 1 the chunking of what reaches the server, then:
  mode 0: raw bytes as the client's side of the handshake;
  mode 1/2: a genuine client (with a certificate when the mode byte's bit 2 is set,
            TLS 1.2 only when bit 3 is set), whose first (1) or second (2) flight is
            changed by (offset high, offset low, XOR) triples;
  mode 3: a genuine handshake, then the bytes as records after it, between two
          genuine application records; a triple-mutated genuine record when bit 4 is set.

    python fuzz/tls_layer.py [libFuzzer flags] [corpus dir ...]
"""

from __future__ import annotations

import contextlib
import ssl
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, not fuzz/

import atheris

with atheris.instrument_imports(include=["pop3d"]):
    from fuzz.support import InvariantBroken, check, chunks
    from pop3d.config import imapd
    from pop3d.transport import selfsigned, tls
    from pop3d.transport.layer import LayerError, LayerStack
    from pop3d.transport.tls_layer import TLSHandshakeError, TLSLayer

FOLDER = Path(tempfile.mkdtemp(prefix="pop3d-fuzz-tls-"))
CA = selfsigned.make_ca("fuzz CA")
CA.write(FOLDER / "ca.pem")
selfsigned.issue(CA, "lab.test", dns_names=("lab.test",)).write(
    FOLDER / "cert.pem", FOLDER / "key.pem"
)
selfsigned.issue(CA, "alice", email="alice@lab.test", client=True).write(
    FOLDER / "client.pem", FOLDER / "client-key.pem"
)
SERVER = tls.server_tls(
    imapd.from_text(
        f"tls_server_cert: {FOLDER / 'cert.pem'}\ntls_server_key: {FOLDER / 'key.pem'}\n"
        f"tls_client_certs: optional\ntls_client_ca_file: {FOLDER / 'ca.pem'}\n"
    ),
    None,
)


def _client_context(certificate: bool, tls12: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(FOLDER / "ca.pem"))
    if certificate:
        context.load_cert_chain(str(FOLDER / "client.pem"), str(FOLDER / "client-key.pem"))
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


CLIENTS = {(c, t): _client_context(c, t) for c in (False, True) for t in (False, True)}
APPLICATION = b"CAPA\r\nUSER alice\r\n"


class Client:
    """A genuine client over memory BIOs."""

    def __init__(self, certificate: bool, tls12: bool) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        context = CLIENTS[(certificate, tls12)]
        self.ssl = context.wrap_bio(self.incoming, self.outgoing, server_hostname="lab.test")

    def step(self, data: bytes) -> bytes:
        """Feed the server's bytes; the client's next flight (b"" when it has none)."""
        if data:
            self.incoming.write(data)
        with contextlib.suppress(ssl.SSLWantReadError):
            self.ssl.do_handshake()
        return self.outgoing.read()


def mutate(flight: bytes, triples: bytes) -> bytes:
    if not flight:
        return flight
    changed = bytearray(flight)
    for index in range(0, len(triples) - 2, 3):
        offset = (triples[index] << 8 | triples[index + 1]) % len(changed)
        changed[offset] ^= triples[index + 2] or 0xFF
    return bytes(changed)


def serve(layer: TLSLayer, data: bytes, seed: int) -> bool:
    """Feed the server's handshake; True when it completed. Only TLSHandshakeError may
    escape, and it is the caller's to catch."""
    done = layer.handshake(b"") if not data else False
    for chunk in chunks(data, seed):
        done = layer.handshake(chunk)
        if done:
            break
    return done


def after_handshake(layer: TLSLayer) -> None:
    facts = tls.facts(layer.connection, SERVER)
    check(isinstance(facts.ssf, int) and facts.ssf > 0, f"ssf {facts.ssf!r}")
    check(facts.version in ("TLSv1.2", "TLSv1.3"), f"version {facts.version!r}")
    check(all(isinstance(v, bytes) for _k, v in facts.channel_bindings), "bindings")
    check(facts.client_identity in (None, "alice"), f"identity {facts.client_identity!r}")
    layer.wrap(b"+OK\r\n")
    layer.outgoing()


def handshake(data: bytes, mode: int, seed: int) -> tuple[TLSLayer, Client] | None:
    """Modes 1-3: the genuine exchange, a flight mutated in modes 1 and 2."""
    layer = TLSLayer(SERVER.context)
    client = Client(bool(mode & 4), bool(mode & 8))
    flight = client.step(b"")
    for number in (1, 2, 3):
        if number < 3 and mode & 3 == number:
            flight = mutate(flight, data)
        try:
            done = serve(layer, flight, seed)
        except TLSHandshakeError:
            return None
        reply = layer.outgoing()
        if done:
            break
        try:
            flight = client.step(reply)
        except ssl.SSLError:
            return None  # the client refused the server's answer to a mutated flight
    else:
        return None
    try:
        client.step(reply)  # TLS 1.2: the server's Finished; 1.3: session tickets
    except ssl.SSLError:
        return None
    return layer, client


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    mode, seed, payload = data[0] & 0x1F, data[1], data[2:]
    if mode & 3 == 0:
        layer = TLSLayer(SERVER.context)
        try:
            done = serve(layer, payload, seed)
        except TLSHandshakeError:
            return
        layer.outgoing()
        if done:  # a handshake from nothing: possible only in theory
            after_handshake(layer)
        return
    made = handshake(payload, mode, seed)
    if made is None:
        return
    layer, client = made
    after_handshake(layer)
    stack = LayerStack()
    stack.push(layer)
    client.ssl.write(APPLICATION)
    genuine = client.outgoing.read()
    stream = payload if mode & 3 == 3 else b""
    if mode & 0x10:
        stream = mutate(genuine, payload)
    received = bytearray()
    try:
        for chunk in chunks(genuine + stream + genuine, seed):
            plain, _reply = stack.receive(chunk)
            received += plain
    except LayerError:
        return
    except Exception as exc:
        raise InvariantBroken(f"{exc!r} escaped unwrap (only LayerError may)") from None
    if not stream:
        check(received == APPLICATION * 2, f"received {bytes(received)[:80]!r}")
    stack.wrap(b"+OK\r\n")
    stack.close()


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
