"""Fuzz target: the server side of every SASL mechanism (pop3d/sasl/registry.py), fed
mutated client messages as Dovecot's fuzz-sasl-authentication.c does, with a real
credential file, Authenticator and TokenValidator behind it.

Invariant: an exchange ends in MalformedResponse, or returns a Failure or a Success, and
never raises anything else; it yields only Challenges (of bytes) and the credential
requests the driver knows; abandoning it mid-exchange (``close``) raises nothing; a
Success names a non-empty authentication identity and carries bytes or None as final.

Input: byte 0 picks the mechanism (sorted names), byte 1 the server context (one per
vector case: its nonce, salt, iterations, channel bindings, and a credential file with
its user), byte 2 flags (bit 0: the first message is the initial response; bit 1: flip
"a -PLUS mechanism was offered"; bit 2: no channel bindings; bit 3: a TLS client
identity "alice"), then the client's messages separated by fuzz.support.SASL_SEPARATOR.

    python fuzz/sasl_mechanisms.py [libFuzzer flags] [corpus dir ...]
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, not fuzz/

import atheris

with atheris.instrument_imports(include=["pop3d"]):
    from fuzz.support import SASL_HEADER, SASL_SEPARATOR, InvariantBroken, check
    from pop3d.auth.authenticator import Authenticator
    from pop3d.auth.tokens import TokenValidator, read_jwks
    from pop3d.requests import Offload
    from pop3d.sasl import registry
    from pop3d.sasl import requests as rq
    from pop3d.sasl.mechanism import (
        Challenge,
        Context,
        Failure,
        MalformedResponse,
        Mechanism,
        Success,
    )
    from tests.support import sasl_run, sasl_vectors

# What vectors/sasl/make_oauth.py signed its tokens for (tests/sasl/test_oauth.py).
VECTOR_ISSUER = "https://issuer.example.com"
VECTOR_AUDIENCE = "pop3d.example.com"
MAX_STEPS = 64


def _cases() -> list[sasl_vectors.Case]:
    cases: list[sasl_vectors.Case] = []
    for path in sorted(sasl_vectors.SASL_VECTORS.glob("*.json")):
        if path.name != "oauth-jwks.json":
            cases += sasl_vectors.load(path.name)
    return cases


def _servers() -> list[tuple[Context, Authenticator]]:
    """One (context, authenticator) per vector case, in fuzz/seed.py's order; cases with
    the same user, password, salt and iterations share a credential file."""
    folder = Path(tempfile.mkdtemp(prefix="pop3d-fuzz-sasl-"))
    shared: dict[tuple[object, ...], Authenticator] = {}
    servers = []
    for case in _cases():
        server = case.server
        key = (case.user, case.password, server.get("salt"), server.get("iterations"))
        if key not in shared:
            home = folder / str(len(shared))
            home.mkdir()
            shared[key] = sasl_run.authenticator_for(home, case)
        servers.append((sasl_run.context_for(case), shared[key]))
    return servers


MECHANISMS: list[Mechanism] = []
for _name in sorted(registry.names()):
    _mechanism = registry.get(_name)
    assert _mechanism is not None
    MECHANISMS.append(_mechanism)
SERVERS = _servers()
VALIDATOR = TokenValidator(
    issuer=VECTOR_ISSUER,
    audience=VECTOR_AUDIENCE,
    jwks=read_jwks(sasl_vectors.SASL_VECTORS / "oauth-jwks.json"),
)


def resolve(authenticator: Authenticator, request: object) -> object:
    """The driver's part, as server/connection.py does it."""
    if isinstance(request, rq.VerifyPassword):
        return authenticator.verify_password(request.user, request.password)
    if isinstance(request, rq.FetchSecrets):
        return authenticator.fetch_secrets(request.user, request.schemes)
    if isinstance(request, rq.ResolveUser):
        return authenticator.resolve_user(request.user)
    if isinstance(request, rq.VerifyBearer):
        return VALIDATOR.verify(request.token)
    if isinstance(request, Offload):
        try:
            return request.call()
        except Exception as exc:  # the core decides what a failure means
            return exc
    raise InvariantBroken(f"a mechanism asked for {request!r}")


def test_one_input(data: bytes) -> None:
    if len(data) < SASL_HEADER:
        return
    mechanism = MECHANISMS[data[0] % len(MECHANISMS)]
    context, authenticator = SERVERS[data[1] % len(SERVERS)]
    flags = data[2]
    if flags & 2:
        context = dataclasses.replace(context, plus_offered=not context.plus_offered)
    if flags & 4:
        context = dataclasses.replace(context, channel_bindings={})
    if flags & 8:
        context = dataclasses.replace(context, client_identity="alice")
    messages = data[SASL_HEADER:].split(SASL_SEPARATOR)
    initial = messages.pop(0) if flags & 1 else None
    run = mechanism.run(context, initial)
    value: object = None
    for _step in range(MAX_STEPS):
        try:
            step = run.send(value)
        except StopIteration as stop:
            result = stop.value
            check(isinstance(result, Success | Failure), f"{mechanism.name} returned {result!r}")
            if isinstance(result, Success):
                check(isinstance(result.authcid, str) and result.authcid, "empty authcid")
                check(isinstance(result.authzid, str), "authzid is not a str")
                check(result.final is None or isinstance(result.final, bytes), "final")
            else:
                check(isinstance(result.reason, str), "reason is not a str")
            return
        except MalformedResponse:
            return
        if isinstance(step, Challenge):
            check(isinstance(step.data, bytes), f"challenge {step.data!r}")
            if not messages:
                run.close()  # the client went away (or cancelled with "*")
                return
            value = messages.pop(0)
        else:
            value = resolve(authenticator, step)
    raise InvariantBroken(f"{mechanism.name} did not end after {MAX_STEPS} steps")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
