"""LOGIN (draft-murchison-sasl-login): "Username:" and "Password:" prompts, one value each.
Legacy and plaintext: offered only when sasl_mech_list names it, on a protected link."""

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
    utf8,
)
from pop3d.sasl.requests import (
    AuthResult,
    VerifyPassword,
)
from pop3d.security.secret import Secret


class Login(Mechanism):
    name = "LOGIN"
    flags = Flag.PLAINTEXT | Flag.LEGACY

    def run(self, context: Context, initial: bytes | None) -> Run:
        # An initial response carries the user name (as curl and Outlook send it).
        raw_user = initial if initial else (yield Challenge(b"Username:"))
        user = utf8(raw_user, "user name")
        password = yield Challenge(b"Password:")
        if not user or not password:
            raise MalformedResponse("empty user name or password")
        result = yield VerifyPassword(user, Secret(password))
        assert isinstance(result, AuthResult)
        if result.identity is None:
            return Failure(result.reason, user)
        return Success(result.identity)
