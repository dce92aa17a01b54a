"""EXTERNAL (RFC 4422 Appendix A): the identity the transport already established, here
the verified TLS client certificate (``tls_client_certs``, ``tls_client_identity``). The
client's message is the authorization identity it asks for, often empty."""

from __future__ import annotations

from pop3d.sasl.mechanism import Challenge, Context, Failure, Flag, Mechanism, Run, Success, utf8


class External(Mechanism):
    name = "EXTERNAL"
    flags = Flag.TRANSPORT_IDENTITY

    def run(self, context: Context, initial: bytes | None) -> Run:
        message = initial if initial is not None else (yield Challenge(b""))
        authzid = utf8(message, "authorization identity")
        if not context.client_identity:
            return Failure("no verified client certificate")
        return Success(context.client_identity, authzid)
