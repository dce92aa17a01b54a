"""PLAIN (RFC 4616): authzid NUL authcid NUL password, in one message. The password crosses
the wire, so the mechanism is offered only where the policy allows plaintext passwords."""

from __future__ import annotations

from pop3d.sasl.mechanism import (
    Challenge,
    Context,
    Failure,
    Flag,
    MalformedResponse,
    Mechanism,
    Run,
    Success,
    split_nul,
    utf8,
)
from pop3d.sasl.requests import (
    AuthResult,
    VerifyPassword,
)
from pop3d.security.secret import Secret


class Plain(Mechanism):
    name = "PLAIN"
    flags = Flag.PLAINTEXT

    def run(self, context: Context, initial: bytes | None) -> Run:
        message = initial if initial is not None else (yield Challenge(b""))
        authzid_raw, authcid_raw, password = split_nul(message, 3)
        authzid = utf8(authzid_raw, "authorization identity")
        authcid = utf8(authcid_raw, "authentication identity")
        if not authcid or not password:
            raise MalformedResponse("empty authentication identity or password")
        result = yield VerifyPassword(authcid, Secret(password))
        assert isinstance(result, AuthResult)
        if result.identity is None:
            return Failure(result.reason, authcid)
        return Success(result.identity, authzid)
