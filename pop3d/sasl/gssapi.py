"""GSSAPI (RFC 4752): Kerberos V5 through python-gssapi, with integrity and confidentiality
layers.

The exchange:

1. context tokens until the acceptor completes (each step an ``Offload``: it reads the
   keytab and writes the replay cache); a Kerberos error ends the exchange with a failure;
2. if completing produced a token (the AP-REP of mutual authentication), it goes out as a
   challenge and the client must answer with an empty response (RFC 4752 §3.1; Cyrus
   refuses data here too);
3. the offer, wrapped without confidentiality: a layer bitmask and our maximum buffer.
   A layer is offered when its SSF lies within [min_ssf, max_ssf] and the context allows it
   (integ/conf flags); "no layer" only when nothing more is needed (min_ssf == 0); the
   buffer size is 0 when only "no layer" is offered (RFC 4752 §3.3);
4. the client's wrapped choice: exactly one offered bit, its maximum buffer (non-zero with a
   layer), then the authorization identity.

Principal -> user: :func:`pop3d.kerberos.names.local_user`, as for every Kerberos login:
krb5.conf's ``auth_to_local`` rules (MIT's ``krb5_aname_to_localname`` through our ctypes
binding, as python-gssapi has no ``gss_localname``), else MIT's DEFAULT rule for the default
realm, then ``user@REALM`` for the ``loginrealms``; anything else is refused.

Channel bindings over TLS: the acceptor is given ``tls-server-end-point`` (see
:mod:`pop3d.sasl.kerberos`); a client that sends another binding fails in the library, one
that sends none passes unless ``context.require_channel_binding``.

Returns ``Success(user, authzid, layer=GSSAPILayer | None)``: the session installs the layer
after its ``+OK``.
"""

from __future__ import annotations

import functools
from collections.abc import Generator
from typing import Any

import gssapi.raw as gr

from pop3d.requests import Offload
from pop3d.sasl.gssapi_layer import INTEGRITY_SSF, GSSAPILayer
from pop3d.sasl.kerberos import (
    KRB5,
    Accepted,
    Acceptor,
    AcceptorUnavailable,
    KerberosError,
    channel_bound,
    gssapi_bindings,
    unwrap,
    wrap,
)
from pop3d.sasl.mechanism import (
    Challenge,
    Context,
    Failure,
    Flag,
    MalformedResponse,
    Mechanism,
    Run,
    Step,
    Success,
    utf8,
)

LAYER_NONE = 1
LAYER_INTEGRITY = 2
LAYER_CONFIDENTIALITY = 4
MAX_BUFFER = 0xFFFFFF  # three octets


def establish(
    acceptor: Acceptor, initial: bytes | None, what: str
) -> Generator[Step, Any, Accepted | Failure]:
    """The context-token loop the Kerberos mechanisms share (``accepted = yield from
    establish(...)``): the completed step, or a ``Failure`` when the library refused."""
    token = initial if initial is not None else (yield Challenge(b""))
    while True:
        if not token:
            raise MalformedResponse("empty context token")
        result = yield Offload(functools.partial(acceptor.step, token), what)
        if isinstance(result, AcceptorUnavailable):
            return Failure(f"{what}: {result}", temporary=True)
        if isinstance(result, KerberosError):
            return Failure(f"{what}: {result}")
        if isinstance(result, Exception):
            return Failure(f"{what}: unexpected {type(result).__name__}: {result}")
        assert isinstance(result, Accepted)
        if result.complete:
            return result
        if not result.token:  # MIT's answer to some garbage: "continue", with nothing to say
            return Failure(f"{what}: the context token led nowhere")
        token = yield Challenge(result.token)


def offer_mask(context: Context, flags: int, conf_ssf: int) -> int:
    mask = 0
    if context.min_ssf == 0:  # the connection meets sasl_minimum_layer without a layer
        mask |= LAYER_NONE
    low, high = context.min_ssf, context.max_ssf
    if flags & gr.RequirementFlag.integrity and low <= INTEGRITY_SSF <= high:
        mask |= LAYER_INTEGRITY
    if flags & gr.RequirementFlag.confidentiality and low <= conf_ssf <= high:
        mask |= LAYER_CONFIDENTIALITY
    return mask


def identify(context: Context, accepted: Accepted) -> str | Failure:
    """The local user for a completed Kerberos context, or why not."""
    if accepted.mech is not None and accepted.mech != KRB5:
        return Failure(f"negotiated mechanism {accepted.mech} is not Kerberos V5")
    bound = channel_bound(accepted.flags)
    if context.require_channel_binding and context.channel_bindings and not bound:
        return Failure("client did not bind to the TLS channel", accepted.principal)
    user = accepted.user
    if user is None:
        # The realm proved the principal; it is the name that has no use here: refused,
        # not a failed password fail2ban counts (found probing: x/admin@REALM was one).
        reason = f"principal {accepted.principal} maps to no local user"
        return Failure(reason, accepted.principal, authenticated=True)
    return user


class GSSAPI(Mechanism):
    name = "GSSAPI"
    flags = Flag.MUTUAL | Flag.SECURITY_LAYER | Flag.KERBEROS

    def run(self, context: Context, initial: bytes | None) -> Run:
        acceptor = Acceptor(context, gssapi_bindings(context.channel_bindings))
        accepted = yield from establish(acceptor, initial, "GSSAPI accept")
        if isinstance(accepted, Failure):
            return accepted
        user = identify(context, accepted)
        if isinstance(user, Failure):
            return user
        try:
            return (yield from self._negotiate_layer(context, acceptor, accepted, user))
        except MalformedResponse as problem:
            # As the exchange driver words it, but naming who: the realm vouched for the
            # user before the malformed message (found probing: logged as "-").
            return Failure(f"malformed: {problem}", user)

    def _negotiate_layer(
        self, context: Context, acceptor: Acceptor, accepted: Accepted, user: str
    ) -> Run:
        if accepted.token:
            answer = yield Challenge(accepted.token, user, accepted.principal)
            if answer:
                raise MalformedResponse("data after the last context token")

        conf_ssf = acceptor.confidentiality_ssf()
        mask = offer_mask(context, accepted.flags, conf_ssf)
        if not mask:
            # The realm vouched for the user; it is the policy that refuses: not a failed
            # password fail2ban counts (found probing: minimum 56, maximum 100 and an
            # aes256 context, SSF 256, was a SASL(-13)).
            reason = "no security layer within sasl_minimum_layer..maximum"
            return Failure(reason, user, authenticated=True)
        max_in = min(context.max_buffer, MAX_BUFFER) if mask & ~LAYER_NONE else 0
        offer = bytes([mask]) + max_in.to_bytes(3, "big")
        try:
            wrapped = wrap(acceptor.context, offer, False)
        except gr.GSSError as exc:
            return Failure(f"GSSAPI: cannot wrap the offer: {exc}", user)

        reply = yield Challenge(wrapped, user, accepted.principal)
        try:
            choice, _encrypted = unwrap(acceptor.context, reply)
        except (gr.GSSError, ValueError, TypeError):
            raise MalformedResponse("the layer choice does not unwrap") from None
        if len(choice) < 4:
            raise MalformedResponse("the layer choice is shorter than four octets")
        layer_bit, max_out = choice[0], int.from_bytes(choice[1:4], "big")
        authzid = utf8(choice[4:], "authorization identity")
        if layer_bit not in (LAYER_NONE, LAYER_INTEGRITY, LAYER_CONFIDENTIALITY):
            return Failure(
                f"layer choice {layer_bit:#x} is not exactly one layer", user, authenticated=True
            )
        if not layer_bit & mask:
            return Failure(
                f"client chose layer {layer_bit} of offered {mask:#x}", user, authenticated=True
            )
        if layer_bit == LAYER_NONE:
            return Success(user, authzid, principal=accepted.principal)
        confidential = layer_bit == LAYER_CONFIDENTIALITY
        try:
            layer = GSSAPILayer(
                acceptor.context,
                confidential=confidential,
                ssf=conf_ssf if confidential else INTEGRITY_SSF,
                max_in=max_in,
                max_out=max_out,
            )
        except ValueError as exc:
            return Failure(f"GSSAPI layer: {exc}", user, authenticated=True)
        return Success(user, authzid, layer=layer, principal=accepted.principal)
