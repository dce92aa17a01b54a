"""Runs one SASL mechanism against one vector case, with a real credential file and a
real Authenticator behind it (only the nonce is fixed, from the case)."""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pop3d.auth import credentials
from pop3d.auth.authenticator import Authenticator
from pop3d.auth.credentials import CredentialFile
from pop3d.requests import Request
from pop3d.sasl import exchange
from pop3d.sasl.mechanism import Challenge, Context, Failure, MalformedResponse, Mechanism, Success
from pop3d.sasl.requests import FetchSecrets
from pop3d.sasl.scram import derive_keys
from pop3d.security.secret import Secret
from pop3d.server import carry_out as table
from tests.support.lab import FAST_ARGON2
from tests.support.sasl_vectors import Case


class Mismatch(AssertionError):
    pass


def authenticator_for(tmp_path: Path, case: Case) -> Authenticator:
    """A credential file holding the case's user with every scheme, SCRAM keys made with
    the case's salt and iteration count so the recorded exchange verifies."""
    path = tmp_path / "passwd"
    password = Secret(case.password.encode())
    values, _ = _schemes(password)
    salt = case.server.get("salt")
    if salt is not None:
        iterations = int(case.server.get("iterations", 4096))
        for hash_name in ("SHA-1", "SHA-256", "SHA-512"):
            keys = derive_keys(hash_name, password, base64.b64decode(salt), iterations)
            values[f"SCRAM-{hash_name}"] = keys.encode()
    credentials.update(path, case.user, lambda _old: credentials.UserRecord(case.user, values))
    return Authenticator(CredentialFile(path), FAST_ARGON2)


def _schemes(password: Secret) -> tuple[dict[str, str], list[str]]:
    from pop3d.auth import schemes

    return schemes.derive(
        password, {"PLAIN.B64", "SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"}, FAST_ARGON2
    )


def context_for(case: Case, **overrides: Any) -> Context:
    server = case.server
    nonce = server.get("nonce")
    bindings = {k: base64.b64decode(v) for k, v in server.get("channel_binding", {}).items()}
    arguments: dict[str, Any] = {
        "servername": server.get("servername", "lab.test"),
        "channel_bindings": bindings,
        "plus_offered": bool(server.get("plus_offered", False)),
        "client_identity": server.get("client_identity"),
    }
    if nonce is not None:
        arguments["nonce"] = nonce.encode
    arguments.update(overrides)
    return Context(**arguments)


def carry_out(authenticator: Authenticator, request: object) -> object:
    """The drivers' own table (server/carry_out.py), with no maildrop store behind it."""
    assert isinstance(request, Request), request
    return table.carry_out(table.Work(authenticator), request)


def assert_one_response_only_fails(
    mechanism: Mechanism, context: Context, authenticator: Authenticator, response: bytes
) -> None:
    """For a challenge-first mechanism (CRAM-MD5, DIGEST-MD5) fed one response that is not
    a valid login: it is refused as malformed, or it ends in a Failure after the credential
    lookup, and never asks for more."""
    run = mechanism.run(context, None)
    run.send(None)
    try:
        step = run.send(response)
        assert isinstance(step, FetchSecrets)
        run.send(carry_out(authenticator, step))
    except MalformedResponse:
        return
    except StopIteration as stop:
        assert isinstance(stop.value, Failure), (response, stop.value)
        return
    raise AssertionError("the exchange did not end after the response")


Resolver = Callable[[object], object]


@dataclass
class Exchange:
    result: Success | Failure
    challenges: list[bytes]
    requests: list[object]


def converse(
    mechanism: Mechanism,
    context: Context,
    initial: bytes | None,
    respond: Callable[[bytes], bytes],
    resolve: Resolver,
) -> Success | Failure:
    """The exchange driver with a client answering challenges (``respond``) and a
    resolver answering credential requests."""
    steps = exchange.run(mechanism, context, initial)
    value: object = None
    while True:
        try:
            step = steps.send(value)
        except StopIteration as stop:
            return stop.value
        value = respond(step.data) if isinstance(step, Challenge) else resolve(step)


def script(
    mechanism: Mechanism,
    context: Context,
    initial: bytes | None,
    replies: Sequence[bytes],
    resolve: Resolver,
) -> Exchange:
    """Run ``mechanism`` with scripted client replies to its challenges; credential
    requests go to ``resolve``. A malformed message counts as a failure, as in the
    session; any other exception escapes (and fails the test)."""
    pending = list(replies)
    challenges: list[bytes] = []
    requests: list[object] = []
    steps = exchange.run(mechanism, context, initial)
    value: object = None
    while True:
        try:
            step = steps.send(value)
        except StopIteration as stop:
            return Exchange(stop.value, challenges, requests)
        if isinstance(step, Challenge):
            challenges.append(step.data)
            assert pending, f"no scripted reply left for challenge {step.data!r}"
            value = pending.pop(0)
        else:
            requests.append(step)
            value = resolve(step)


def run(
    mechanism: Mechanism,
    case: Case,
    authenticator: Authenticator | None = None,
    context: Context | None = None,
    resolve: Resolver | None = None,
) -> Success | Failure:
    """Replay ``case``: every server message must match byte for byte. Credential
    requests go to ``resolve``, or to ``authenticator``."""
    if resolve is None:
        assert authenticator is not None
        resolve = functools.partial(carry_out, authenticator)
    steps = list(case.steps)
    initial = steps.pop(0)[1] if steps and steps[0][0] == "C" else None
    running = exchange.run(mechanism, context or context_for(case), initial)
    value: object = None
    while True:
        try:
            step = running.send(value)
        except StopIteration as stop:
            result = stop.value
            break
        if isinstance(step, Challenge):
            if steps and steps[0][0] == "S":
                expected = steps.pop(0)[1]
                if step.data != expected:
                    raise Mismatch(f"{case.name}: server sent {step.data!r}, vector {expected!r}")
            if not steps or steps[0][0] != "C":
                raise Mismatch(f"{case.name}: the server wants a response the vector lacks")
            value = steps.pop(0)[1]
        else:
            value = resolve(step)
    assert isinstance(result, Success | Failure)
    if isinstance(result, Success) and result.final is not None and steps:
        kind, expected = steps.pop(0)
        if kind != "S" or result.final != expected:
            raise Mismatch(f"{case.name}: final {result.final!r}, vector {expected!r}")
    return result
