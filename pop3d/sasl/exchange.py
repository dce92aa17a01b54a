"""One way to run a mechanism: the exchange driver every caller shares (the POP3 session,
the tests, the vector recorders), in the role Dovecot's server auth request plays.

It turns a mechanism's generator into a stream of steps for the caller: a
:class:`Challenge` to send (resume with the client's decoded response), a credential
:class:`Request` for the driver (resume with its result), and at the end a
:class:`Success` or :class:`Failure`. A message that does not parse
(:class:`MalformedResponse`) ends the exchange as a failure, so callers see only the three
outcomes. ``canonical`` rewrites user names in credential requests before they leave the
exchange (the session canonicalises once, for every mechanism); returning None refuses.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeAlias

from pop3d.requests import Request
from pop3d.sasl.mechanism import (
    Challenge,
    Context,
    Failure,
    MalformedResponse,
    Mechanism,
    Step,
    Success,
)

Exchange: TypeAlias = Generator[Step, Any, Success | Failure]
Canonical: TypeAlias = Callable[[Request], Request | None]


def run(
    mechanism: Mechanism,
    context: Context,
    initial: bytes | None,
    canonical: Canonical | None = None,
) -> Exchange:
    steps = mechanism.run(context, initial)
    value: object = None
    while True:
        try:
            step = steps.send(value)
        except StopIteration as stop:
            result = stop.value
            assert isinstance(result, Success | Failure), result
            return result
        except MalformedResponse as problem:
            return Failure(f"malformed: {problem}")
        if not isinstance(step, Challenge) and canonical is not None:
            rewritten = canonical(step)
            if rewritten is None:
                steps.close()
                # the refused name still goes to the log (escaped there), as USER's does
                return Failure("bad identity", authcid=str(getattr(step, "user", "")))
            step = rewritten
        value = yield step
