"""GS2-KRB5 and GS2-KRB5-PLUS (RFC 5801): Kerberos V5 through the GS2 bridge, no security
layer.

The client's first message is a GS2 header (``n,``/``y,``/``p=<binding>,``, then
``a=<authzid>`` or nothing, then ``,``) followed by the Kerberos initial context token
*without* its RFC 2743 §3.1 framing (RFC 5801 §4), which we put back before the acceptor
sees it. The header is protected by the channel bindings: the acceptor is given
``application_data = gs2-header + binding data`` (RFC 5801 §5), so a relay that rewrote the
authzid or the binding choice fails in the library. MIT lets a context with no bindings at
all pass such a check, so the context must also come back ``channel_bound``; and GS2
requires mutual authentication (RFC 5801 §4), so the context must have it. The last
context token (the AP-REP) is the additional data with success.

Refused: the non-standard-token flag ``F`` (Kerberos tokens are standard), ``p=`` on
GS2-KRB5 or a binding this connection lacks, no ``p=`` on -PLUS, ``y`` when we offered a
-PLUS mechanism (a downgrade, as in SCRAM).
"""

from __future__ import annotations

import gssapi.raw as gr

from pop3d.sasl import gs2_header
from pop3d.sasl.gssapi import establish, identify
from pop3d.sasl.kerberos import Acceptor, channel_bound
from pop3d.sasl.mechanism import (
    Challenge,
    Context,
    Failure,
    Flag,
    MalformedResponse,
    Mechanism,
    Run,
    Success,
)

_KRB5_OID_DER = bytes.fromhex("06092a864886f712010202")  # DER of KRB5 (1.2.840.113554.1.2.2)


def _der_length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def framed(inner: bytes) -> bytes:
    """RFC 2743 §3.1: [APPLICATION 0] { mech OID, inner token }."""
    body = _KRB5_OID_DER + inner
    return b"\x60" + _der_length(len(body)) + body


def parse_header(message: bytes) -> tuple[bytes, str | None, str, bytes]:
    """(gs2 header as bound, binding name or None, authzid, token without framing)."""
    if message.startswith(b"F,"):
        raise MalformedResponse("non-standard token flag on a Kerberos token")
    header = gs2_header.parse(message)
    return header.raw, header.binding, header.authzid, header.rest


class GS2KRB5(Mechanism):
    def __init__(self, plus: bool) -> None:
        self.plus = plus
        self.name = "GS2-KRB5-PLUS" if plus else "GS2-KRB5"
        self.flags = Flag.MUTUAL | Flag.KERBEROS
        if plus:
            self.flags |= Flag.CHANNEL_BINDING

    def run(self, context: Context, initial: bytes | None) -> Run:
        first = initial if initial is not None else (yield Challenge(b""))
        if first.startswith(b"F,"):
            raise MalformedResponse("non-standard token flag on a Kerberos token")
        gs2 = gs2_header.parse(first)
        header, authzid, token = gs2.raw, gs2.authzid, gs2.rest
        data = gs2_header.binding_data(gs2, context, self.plus)
        if not token:
            raise MalformedResponse("no context token after the GS2 header")
        bindings = gr.ChannelBindings(application_data=header + data)
        acceptor = Acceptor(context, bindings)
        accepted = yield from establish(acceptor, framed(token), f"{self.name} accept")
        if isinstance(accepted, Failure):
            return accepted
        if not channel_bound(accepted.flags):
            return Failure("context not bound to the GS2 header", accepted.principal)
        if not accepted.flags & gr.RequirementFlag.mutual_authentication:
            return Failure("GS2 needs mutual authentication", accepted.principal)
        user = identify(context, accepted)
        if isinstance(user, Failure):
            return user
        return Success(user, authzid, final=accepted.token or None, principal=accepted.principal)


def family() -> list[GS2KRB5]:
    return [GS2KRB5(plus=True), GS2KRB5(plus=False)]
