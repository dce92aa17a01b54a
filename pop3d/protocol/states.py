"""The POP3 states and the shape of a rule. The table itself is in :mod:`.table` (it names
the handler functions, which need these types first).

RFC 1939 §3 names three states; AUTHORIZATION is split in two because "USER was accepted,
PASS must follow" has rules of its own (RFC 1939 §7; Cyrus agrees), and an AUTH exchange
in progress is a state of its own (RFC 5034 §4): its input lines are SASL responses, not
commands, and they have their own length limit (``sasl_line_max``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from pop3d.requests import Request


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    AUTHORIZATION_USER = "AUTHORIZATION (USER given)"
    AUTHENTICATING = "AUTHORIZATION (AUTH in progress)"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"

    @property
    def rfc_name(self) -> str:
        """The RFC 1939 name, for texts the client sees."""
        if self in (State.AUTHORIZATION_USER, State.AUTHENTICATING):
            return "AUTHORIZATION"
        return str(self.value)

    @property
    def unauthenticated(self) -> bool:
        return self in (State.AUTHORIZATION, State.AUTHORIZATION_USER, State.AUTHENTICATING)


# States whose input lines are answers to a running exchange, not commands.
READS_RESPONSES = frozenset({State.AUTHENTICATING})


class Outcome(enum.Enum):
    OK = "ok"
    FAIL = "fail"  # a refusal that is part of the protocol (bad password, no such message)
    BAD = "bad"  # the client sent something it should not have: counts toward the budget
    STAY = "stay"  # answered +OK without the rule's transition (AUTH alone lists mechanisms)


class AwaitResponse:
    __slots__ = ()

    def __repr__(self) -> str:
        return "AWAIT_RESPONSE"


# Yielded by a handler in a state that reads responses: "give me the client's next line".
AWAIT_RESPONSE: Final = AwaitResponse()

# A handler returns an Outcome at once, or a task: a generator that yields requests (and
# AWAIT_RESPONSE) and returns its Outcome.
Task: TypeAlias = Generator[Request | AwaitResponse, Any, Outcome]
HandlerResult: TypeAlias = Outcome | Task


@dataclass(frozen=True, slots=True)
class Rule:
    handler: Callable[[Any, bytes], Any]  # (session, argument) -> Outcome | task
    on_ok: State | None = None  # None: stay
    on_fail: State | None = None
    during: State | None = None  # the state while the handler runs (UPDATE for QUIT)
