"""The POP3 state machine as one table: (state, command) -> rule. This table is the whole
truth about which command may run when; a pair that is missing is answered with ``-ERR`` and
nothing happens. A rule names the handler function, the state after success, the state
after failure, and the state while the handler runs: QUIT in TRANSACTION runs in UPDATE
(deletions happen there and nowhere else), AUTH runs in AUTHENTICATING (its input lines
are SASL responses). Reading the table is reading the protocol (h2's habit)."""

from __future__ import annotations

from pop3d.protocol import authorization as a
from pop3d.protocol import sasl_auth, transaction
from pop3d.protocol.states import Rule, State

A = State.AUTHORIZATION
U = State.AUTHORIZATION_USER
T = State.TRANSACTION

TABLE: dict[tuple[State, str], Rule] = {
    # AUTHORIZATION, nothing given yet
    (A, "CAPA"): Rule(a.capa),
    (A, "QUIT"): Rule(a.quit_unauthenticated, on_ok=State.CLOSED),
    (A, "STLS"): Rule(a.stls, on_ok=A),
    (A, "USER"): Rule(a.user, on_ok=U),
    (A, "PASS"): Rule(a.pass_without_user),
    (A, "APOP"): Rule(a.apop, on_ok=T),
    (A, "AUTH"): Rule(sasl_auth.auth, on_ok=T, on_fail=A, during=State.AUTHENTICATING),
    # AUTHORIZATION, USER accepted
    (U, "CAPA"): Rule(a.capa),
    (U, "QUIT"): Rule(a.quit_unauthenticated, on_ok=State.CLOSED),
    (U, "STLS"): Rule(a.stls, on_ok=A),  # RFC 2595 §4: forget what was said before TLS
    (U, "USER"): Rule(a.user_again),
    (U, "PASS"): Rule(a.pass_, on_ok=T, on_fail=A),
    (U, "APOP"): Rule(a.user_again),
    (U, "AUTH"): Rule(a.user_again),
    # TRANSACTION
    (T, "CAPA"): Rule(a.capa),
    (T, "STAT"): Rule(transaction.stat),
    (T, "LIST"): Rule(transaction.list_),
    (T, "UIDL"): Rule(transaction.uidl),
    (T, "RETR"): Rule(transaction.retr),
    (T, "TOP"): Rule(transaction.top),
    (T, "DELE"): Rule(transaction.dele),
    (T, "RSET"): Rule(transaction.rset),
    (T, "NOOP"): Rule(transaction.noop),
    (T, "QUIT"): Rule(
        transaction.quit_update, on_ok=State.CLOSED, on_fail=State.CLOSED, during=State.UPDATE
    ),
}

# A KPOP connection (pop3d -k): the same protocol, except that USER names the user the
# Kerberos handshake proved and PASS checks no password. APOP, AUTH and STLS stay in the
# table and are refused by the policy, which also keeps them out of CAPA.
KPOP_TABLE: dict[tuple[State, str], Rule] = {
    **TABLE,
    (A, "USER"): Rule(a.kpop_user, on_ok=U),
    (U, "PASS"): Rule(a.kpop_pass, on_ok=T, on_fail=A),
}

KNOWN_COMMANDS = frozenset(command for _, command in TABLE)
