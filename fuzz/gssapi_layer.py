"""Fuzz target: the GSSAPI security layer's framing (pop3d/sasl/gssapi_layer.py) on a real
accepted MIT krb5 context, with no KDC: at start-up pop3d's own GSSAPI mechanism replays
the recorded exchange of vectors/kerberos/exchanges.json (its throwaway keytab, its
krb5.conf with a wide clock skew, KRB5RCACHETYPE=none), as tests/sasl/test_kerberos_vectors.py
does. The accepted context is exported once; every input imports a fresh copy (sequence
numbers as after the login), and a copy with its role flipped to initiator: the recorded
client's side of the same context (the client asked for no mutual authentication, so both
directions use the initiator's subkey), whose first wrap token carries exactly the
sequence number of the recorded client's first frame.

Invariant: ``GSSAPILayer.unwrap`` raises only LayerError (the constructor only ValueError,
for a peer buffer too small for any data); after every unwrap the layer buffers less than
one frame of the size it offered (4 + max_in); what comes out is the plaintext of the
initiator's frames in order, up to some frame (a token nobody wrapped never unwraps, a
frame is never delivered twice or out of turn, and none is delivered from the first frame
of the other protection or over max_in on); when every frame is genuine and untouched,
of the negotiated protection and within max_in, all of it comes out and nothing raises;
``wrap`` cuts data into frames within the peer's max_out that the initiator unwraps back
to the data, with the negotiated protection.

Input: byte 0 flags (bit 0: a confidentiality layer, else integrity; bits 1-2: max_in
65536, 100, 400, 1024; bits 3-4: max_out, the same choices), byte 1 the chunking, then
segments separated by ``fuzz.support.SASL_SEPARATOR``, each an op byte and its operand:
  op & 3 == 0  raw bytes onto the wire;
  op & 3 == 1  a frame the initiator wraps around the operand (bit 2: with the other
               protection than the layer's);
  op & 3 == 2  the same, the operand being a length byte n, n bytes of plaintext, then
               (offset high, offset low, XOR) triples applied to the frame, prefix included;
  op & 3 == 3  the operand is data the server wraps (``GSSAPILayer.wrap``).

    python fuzz/gssapi_layer.py [libFuzzer flags] [corpus dir ...]
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, not fuzz/

VECTOR = Path(__file__).resolve().parents[1] / "vectors" / "kerberos"
# Before MIT reads any configuration: the vector's realm and skew, no replay cache, and no
# keytab but the vector's (a Context names it).
os.environ["KRB5_CONFIG"] = str(VECTOR / "krb5.conf")
os.environ["KRB5RCACHETYPE"] = "none"
os.environ["KRB5_KTNAME"] = "FILE:/nonexistent/pop3d-fuzz.keytab"
os.environ.pop("KRB5_KDC_PROFILE", None)

import atheris

with atheris.instrument_imports(include=["pop3d"]):
    import gssapi.raw as gr

    from fuzz.support import SASL_SEPARATOR, InvariantBroken, check, chunks
    from pop3d.sasl.gssapi import GSSAPI
    from pop3d.sasl.gssapi_layer import GSSAPILayer
    from pop3d.sasl.kerberos import unwrap, wrap
    from pop3d.sasl.mechanism import Context, Success
    from pop3d.transport.layer import LayerError
    from tests.sasl.kerberos_client import run

HEADER = 2
SIZES = (65536, 100, 400, 1024)  # 100 as max_out: a buffer below SMALLEST_CHUNK
KRB5_OID = bytes.fromhex("2a864886f712010202")
KG_CONTEXT = bytes.fromhex("025ea108")  # MIT's magic for a serialised krb5 mech context


def _exported_contexts() -> tuple[bytes, bytes]:
    """(acceptor, initiator) as gss_export_sec_context tokens, from the recorded login."""
    document = json.loads((VECTOR / "exchanges.json").read_text())
    case = next(c for c in document["cases"] if c["mechanism"] == "GSSAPI")
    messages = [base64.b64decode(m, validate=True) for m in case["client"]]
    context = Context(servername=document["servername"], keytab=str(VECTOR / "pop.keytab"))
    result = run(GSSAPI(), context, messages.pop(0), lambda _challenge: messages.pop(0))
    if not isinstance(result, Success) or not isinstance(result.layer, GSSAPILayer):
        sys.exit(f"the recorded GSSAPI exchange did not replay: {result!r}")
    # The GSSAPI layer's context: its one owner, exported (which ends it) for copies.
    acceptor = bytes(gr.export_sec_context(result.layer._context))
    # mechglue: OID length, OID; then MIT's kg_ctx_externalize: magic, initiate, ...
    head = 4 + len(KRB5_OID)
    if acceptor[:head] != len(KRB5_OID).to_bytes(4, "big") + KRB5_OID or acceptor[
        head : head + 8
    ] != KG_CONTEXT + bytes(4):
        raise RuntimeError(f"unknown export layout {acceptor[:32].hex()}")
    initiator = acceptor[: head + 4] + (1).to_bytes(4, "big") + acceptor[head + 8 :]
    return acceptor, initiator


ACCEPTOR, INITIATOR = _exported_contexts()


def _check_startup() -> None:
    """The initiator copy wraps what the recorded client did: same header, same result."""
    frame = base64.b64decode(
        json.loads((VECTOR / "exchanges.json").read_text())["cases"][0]["frames"][0]["wire"]
    )
    token = wrap(gr.import_sec_context(INITIATOR), b"STAT\r\n", True)
    if token[:16] != frame[4:20]:
        raise RuntimeError(f"initiator copy wraps {token[:16].hex()}, not {frame[4:20].hex()}")
    acceptor = gr.import_sec_context(ACCEPTOR)
    if unwrap(acceptor, frame[4:]) != (b"STAT\r\n", True):
        raise RuntimeError("the recorded frame does not unwrap on the acceptor copy")


_check_startup()


def mutate(frame: bytes, triples: bytes) -> bytes:
    changed = bytearray(frame)
    for index in range(0, len(triples) - 2, 3):
        offset = (triples[index] << 8 | triples[index + 1]) % len(changed)
        changed[offset] ^= triples[index + 2] or 0xFF
    return bytes(changed)


def framed(token: bytes) -> bytes:
    return len(token).to_bytes(4, "big") + token


def check_outgoing(
    layer: GSSAPILayer, initiator: gr.SecurityContext, data: bytes, max_out: int
) -> None:
    wire = layer.wrap(data)
    position = 0
    plain = bytearray()
    while position < len(wire):
        check(len(wire) - position >= 4, "a wrapped frame without its length")
        size = int.from_bytes(wire[position : position + 4], "big")
        check(0 < size <= max_out, f"wrapped frame of {size} octets (peer takes {max_out})")
        token = wire[position + 4 : position + 4 + size]
        check(len(token) == size, "a wrapped frame cut short")
        position += 4 + size
        try:
            message, encrypted = unwrap(initiator, token)
        except gr.GSSError as exc:
            raise InvariantBroken(f"the initiator cannot unwrap our frame: {exc}") from None
        check(encrypted == layer.confidential, "wrapped with the wrong protection")
        check(len(message) <= layer.max_plaintext, "more plaintext than max_plaintext")
        plain += message
    check(plain == data, f"wrap of {data[:40]!r} unwraps to {bytes(plain)[:40]!r}")


def test_one_input(data: bytes) -> None:
    if len(data) < HEADER:
        return
    flags, seed = data[0], data[1]
    confidential = bool(flags & 1)
    max_in, max_out = SIZES[(flags >> 1) & 3], SIZES[(flags >> 3) & 3]
    acceptor = gr.import_sec_context(ACCEPTOR)
    initiator = gr.import_sec_context(INITIATOR)
    try:
        layer = GSSAPILayer(
            acceptor, confidential=confidential, ssf=256 if confidential else 1,
            max_in=max_in, max_out=max_out,
        )  # fmt: skip
    except ValueError:
        check(max_out <= 100, f"ValueError for a peer buffer of {max_out}")
        return
    wire = bytearray()
    plaintexts: list[bytes] = []  # of the frames the initiator wrapped that may come out
    genuine = True  # every frame so far untouched, in protection and size
    refusable = False  # a frame so far with the other protection or over max_in
    outgoing: list[bytes] = []
    for segment in data[HEADER:].split(SASL_SEPARATOR):
        if not segment:
            continue
        op, operand = segment[0], segment[1:]
        kind = op & 3
        if kind == 0:
            wire += operand
            genuine = False
            continue
        if kind == 3:
            outgoing.append(operand)
            continue
        protection = confidential != bool(op & 4)
        plain, triples = operand, b""
        if kind == 2:
            size = operand[0] if operand else 0
            plain, triples = operand[1 : 1 + size], operand[1 + size :]
        token = wrap(initiator, plain, protection)
        frame = framed(token)
        if triples:
            frame = mutate(frame, triples)
        wire += frame
        if protection != confidential or len(token) > max_in:
            refusable = True  # never delivered, nor anything after it
        if not refusable:
            plaintexts.append(plain)
        if triples or refusable:
            genuine = False
    received = bytearray()
    failed = False
    for chunk in chunks(bytes(wire), seed):
        try:
            received += layer.unwrap(chunk)
        except LayerError:
            failed = True
            break
        check(
            len(layer._buffer) < 4 + max_in,
            f"{len(layer._buffer)} octets buffered (frames of at most {max_in})",
        )
    prefixes = [b""]
    for plain in plaintexts:
        prefixes.append(prefixes[-1] + plain)
    check(bytes(received) in prefixes, f"unwrapped {bytes(received)[:80]!r}: not what was sent")
    if genuine:
        check(not failed, "a genuine frame raised LayerError")
        check(
            received == prefixes[-1], f"unwrapped {bytes(received)[:80]!r} of {prefixes[-1][:80]!r}"
        )
    for plain in outgoing:
        check_outgoing(layer, initiator, plain, max_out)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
