"""The POP3 state machine as one table: (state, command) -> rule. This table is the whole
truth about which command may run when; a pair that is missing is answered with ``-ERR`` and
nothing happens.

RFC 1939 §3 names three states; AUTHORIZATION is split in two because "USER was accepted,
PASS must follow" has rules of its own (RFC 1939 §7; Cyrus agrees). A rule names the
handler, the state after success, the state after failure, and the state while the handler
runs (QUIT in TRANSACTION runs in UPDATE: deletions happen there and nowhere else).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    AUTHORIZATION_USER = "AUTHORIZATION (USER given)"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"

    @property
    def rfc_name(self) -> str:
        """The RFC 1939 name, for texts the client sees."""
        return "AUTHORIZATION" if self is State.AUTHORIZATION_USER else self.value


class Outcome(enum.Enum):
    OK = "ok"
    FAIL = "fail"  # a refusal that is part of the protocol (bad password, no such message)
    BAD = "bad"  # the client sent something it should not have: counts toward the budget
    STAY = "stay"  # answered +OK without the rule's transition (AUTH alone lists mechanisms)


@dataclass(frozen=True, slots=True)
class Rule:
    handler: str  # name of the Session method
    on_ok: State | None = None  # None: stay
    on_fail: State | None = None
    during: State | None = None  # the state while the handler runs (UPDATE for QUIT)


A = State.AUTHORIZATION
U = State.AUTHORIZATION_USER
T = State.TRANSACTION

TABLE: dict[tuple[State, str], Rule] = {
    # AUTHORIZATION, nothing given yet
    (A, "CAPA"): Rule("capa"),
    (A, "QUIT"): Rule("quit_unauthenticated", on_ok=State.CLOSED),
    (A, "STLS"): Rule("stls", on_ok=A),
    (A, "USER"): Rule("user", on_ok=U),
    (A, "PASS"): Rule("pass_without_user"),
    (A, "APOP"): Rule("apop", on_ok=T),
    (A, "AUTH"): Rule("auth", on_ok=T),
    # AUTHORIZATION, USER accepted
    (U, "CAPA"): Rule("capa"),
    (U, "QUIT"): Rule("quit_unauthenticated", on_ok=State.CLOSED),
    (U, "STLS"): Rule("stls", on_ok=A),  # RFC 2595 §4: forget what was said before TLS
    (U, "USER"): Rule("user_again"),
    (U, "PASS"): Rule("pass_", on_ok=T, on_fail=A),
    (U, "APOP"): Rule("user_again"),
    (U, "AUTH"): Rule("user_again"),
    # TRANSACTION
    (T, "CAPA"): Rule("capa"),
    (T, "STAT"): Rule("stat"),
    (T, "LIST"): Rule("list_"),
    (T, "UIDL"): Rule("uidl"),
    (T, "RETR"): Rule("retr"),
    (T, "TOP"): Rule("top"),
    (T, "DELE"): Rule("dele"),
    (T, "RSET"): Rule("rset"),
    (T, "NOOP"): Rule("noop"),
    (T, "QUIT"): Rule("quit_update", on_ok=State.CLOSED, on_fail=State.CLOSED, during=State.UPDATE),
}

KNOWN_COMMANDS = frozenset(command for _, command in TABLE)
