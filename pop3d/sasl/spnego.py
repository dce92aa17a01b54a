"""GSS-SPNEGO: Kerberos V5 inside SPNEGO (RFC 4178), the SASL mechanism of Cyrus SASL and
Windows clients. Kerberos only: no NTLM.

Which SPNEGO: MIT's own, through python-gssapi's raw API (the acceptor credential is
acquired for the SPNEGO mechanism and ``gss_set_neg_mechs`` limits it to Kerberos), not
pyspnego. pyspnego's value is NTLM without a system library and a pure-Python SPNEGO for
hosts without one; we want neither (NTLM stays out), its Kerberos path is python-gssapi
underneath anyway, and its context object hides the library's per-step error behind its
own retry logic. With MIT's SPNEGO the three Kerberos mechanisms share one acceptor
(:class:`pop3d.sasl.kerberos.Acceptor`), one keytab and one replay cache, and the
negotiated mechanism is checked to be Kerberos after the exchange as well.

No layer negotiation takes place (Cyrus's ``gssapi_spnego_ssf``): the context's flags
decide, confidentiality if the context has it, else integrity, else none. Both ends apply
that rule, so we cannot pick another layer than the client will; when the one the flags
give is below min_ssf (or "none" where more is needed) the login fails rather than
desynchronise; above max_ssf it is kept (see below: over TLS). With MIT both ends always have
confidentiality, so in practice GSS-SPNEGO logins get a confidentiality layer. The layer's
buffer limit is ``context.max_buffer`` both ways (nothing is exchanged to learn the
client's; Cyrus uses its own maxbufsize, 65536, likewise). The final SPNEGO token
(accept-completed, with the mechListMIC) is the additional data with success.
"""

from __future__ import annotations

import gssapi.raw as gr

from pop3d.sasl.gssapi import MAX_BUFFER, establish, identify
from pop3d.sasl.gssapi_layer import INTEGRITY_SSF, GSSAPILayer
from pop3d.sasl.kerberos import SPNEGO, Acceptor, gssapi_bindings
from pop3d.sasl.mechanism import Context, Failure, Flag, Mechanism, Run, Success


class GSSSpnego(Mechanism):
    name = "GSS-SPNEGO"
    flags = Flag.MUTUAL | Flag.SECURITY_LAYER | Flag.KERBEROS

    def run(self, context: Context, initial: bytes | None) -> Run:
        acceptor = Acceptor(context, gssapi_bindings(context.channel_bindings), mechs=(SPNEGO,))
        accepted = yield from establish(acceptor, initial, "GSS-SPNEGO accept")
        if isinstance(accepted, Failure):
            return accepted
        user = identify(context, accepted)  # also: the negotiated mechanism is Kerberos
        if isinstance(user, Failure):
            return user
        if not accepted.flags & gr.RequirementFlag.mutual_authentication:
            # Every SPNEGO client asks for it (Cyrus SASL, SSPI, MIT). A context without it
            # may be a KPOP client's AP-REQ, which has no checksum and so no flags: MIT
            # accepts the missing checksum and then checks no channel binding, and over TLS
            # a captured one logged in (found probing). GS2 refuses it the same way.
            return Failure("GSS-SPNEGO needs mutual authentication", user)
        final = accepted.token or None
        if accepted.flags & gr.RequirementFlag.confidentiality:
            confidential, ssf = True, acceptor.confidentiality_ssf()
        elif accepted.flags & gr.RequirementFlag.integrity:
            confidential, ssf = False, INTEGRITY_SSF
        else:
            # These refusals are the policy's, after the realm vouched for the user: not
            # failed passwords fail2ban counts (as GSSAPI's layer refusals).
            if context.min_ssf > 0:
                reason = "GSS-SPNEGO without a layer is below sasl_minimum_layer"
                return Failure(reason, user, authenticated=True)
            if context.ssf < 2:
                # No layer and no encrypting transport: the session after it would be open
                # to hijacking; GSS-SPNEGO is for protected connections or with a layer.
                reason = "GSS-SPNEGO without a layer needs TLS"
                return Failure(reason, user, authenticated=True)
            return Success(user, "", final=final, principal=accepted.principal)
        if ssf < context.min_ssf:
            reason = f"GSS-SPNEGO layer of SSF {ssf} is below sasl_minimum_layer"
            return Failure(reason, user, authenticated=True)
        # Above sasl_maximum_layer (over TLS the net maximum is 0) the layer is kept: the
        # client's flags impose it and it cannot be declined without desynchronising, and
        # a second layer inside TLS costs CPU, not safety. Refusing would make GSS-SPNEGO
        # unusable over TLS with MIT clients, which always ask for confidentiality.
        size = min(context.max_buffer, MAX_BUFFER)
        try:
            layer = GSSAPILayer(
                acceptor.context, confidential=confidential, ssf=ssf, max_in=size, max_out=size
            )
        except ValueError as exc:
            return Failure(f"GSS-SPNEGO layer: {exc}", user, authenticated=True)
        return Success(user, "", final=final, layer=layer, principal=accepted.principal)
