"""Scripted Kerberos SASL clients over python-gssapi (a real MIT initiator), and the loop
that runs a mechanism against one, carrying out its ``Offload`` requests as the driver
does (the call's result, or the exception object it raised)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gssapi
import gssapi.raw as gr

from pop3d.requests import Offload
from pop3d.sasl import exchange
from pop3d.sasl.kerberos import KRB5, SPNEGO
from pop3d.sasl.mechanism import Challenge, Context, Failure, Mechanism, Success

SERVICE = "pop@localhost"


def credentials(ccache: Path) -> gssapi.Credentials:
    return gssapi.Credentials(usage="initiate", store={"ccache": f"FILE:{ccache}"})


def initiator(
    ccache: Path,
    *,
    service: str = SERVICE,
    mech: gssapi.OID = KRB5,
    binding: bytes | None = None,
    flags: int | None = None,
) -> gssapi.SecurityContext:
    if flags is None:
        flags = (
            gr.RequirementFlag.mutual_authentication
            | gr.RequirementFlag.integrity
            | gr.RequirementFlag.confidentiality
            | gr.RequirementFlag.replay_detection
            | gr.RequirementFlag.out_of_sequence_detection
        )
    return gssapi.SecurityContext(
        name=gssapi.Name(service, gssapi.NameType.hostbased_service),
        usage="initiate",
        mech=mech,
        creds=credentials(ccache),
        flags=flags,
        channel_bindings=None if binding is None else gr.ChannelBindings(application_data=binding),
    )


@dataclass
class GssapiClient:
    """RFC 4752's client side. ``choose`` picks the layer bit from the server's mask;
    ``tamper`` may rewrite the wrapped choice before it is sent."""

    ctx: gssapi.SecurityContext
    layer: int = 1
    max_buffer: int = 65536
    authzid: bytes = b""
    choice_override: bytes | None = None
    offered: int | None = None
    server_max: int | None = None
    transcript: list[tuple[str, bytes]] = field(default_factory=list)

    def initial(self) -> bytes:
        token = self.ctx.step()
        assert token is not None
        return token

    def respond(self, challenge: bytes) -> bytes:
        if not self.ctx.complete:
            out = self.ctx.step(challenge)
            return out or b""
        if not challenge:
            return b""
        # A copy: MIT un-rotates the token in place, and the log keeps what was sent.
        offer = self.ctx.unwrap(bytes(bytearray(challenge))).message
        assert len(offer) == 4
        self.offered, self.server_max = offer[0], int.from_bytes(offer[1:], "big")
        plain = self.choice_override
        if plain is None:
            plain = bytes([self.layer]) + self.max_buffer.to_bytes(3, "big") + self.authzid
        return self.ctx.wrap(plain, False).message


def carry_out(request: object) -> object:
    assert isinstance(request, Offload), request
    try:
        return request.call()
    except Exception as exc:  # the driver's contract: the exception object is the result
        return exc


def run(
    mechanism: Mechanism,
    context: Context,
    initial: bytes | None,
    respond: Callable[[bytes], bytes],
    log: list[tuple[str, bytes]] | None = None,
) -> Success | Failure:
    """Run the exchange to its end. Challenges go to ``respond``; ``log`` records the
    wire messages (C: initial and responses, S: challenges)."""
    steps = exchange.run(mechanism, context, initial)
    if log is not None and initial is not None:
        log.append(("C", initial))
    reply: object = None
    while True:
        try:
            step = steps.send(reply)
        except StopIteration as stop:
            result = stop.value
            assert isinstance(result, Success | Failure)
            return result
        if isinstance(step, Challenge):
            if log is not None:
                log.append(("S", step.data))
            reply = respond(step.data)
            if log is not None:
                log.append(("C", reply))
        else:
            reply = carry_out(step)


def assert_malformed(result: Success | Failure) -> None:
    """The exchange driver turns a message that does not parse into this failure."""
    assert isinstance(result, Failure) and result.reason.startswith("malformed:"), result


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


__all__ = ["SPNEGO", "GssapiClient", "b64", "carry_out", "credentials", "initiator", "run"]
