"""Property tests on the state table: random command sequences against a real Maildir.

Invariants:
* nothing is deleted unless QUIT was accepted in TRANSACTION, and then exactly what was
  marked with DELE and not unmarked by RSET;
* a command outside its state gets -ERR and causes no request at all;
* every command line gets exactly one status line, in order, until the session closes.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pop3d.protocol import events as ev
from pop3d.protocol.states import State
from pop3d.protocol.table import KNOWN_COMMANDS, TABLE
from pop3d.security.policy import Policy
from tests.support.drive import drive, settings_for_lab
from tests.support.lab import Lab

PLAIN_BOB = "AUTH PLAIN AGJvYgBidWlsZGVy"  # \0bob\0builder
VOCABULARY = [
    PLAIN_BOB,
    "AUTH PLAIN AGJvYgB3cm9uZw==",
    "AUTH PLAIN",
    "AUTH",
    "AUTH X",
    "*",
    "USER bob",
    "USER alice",
    "PASS builder",
    "PASS wrong",
    "PASS",
    "APOP bob 0123",
    "STAT",
    "LIST",
    "LIST 1",
    "LIST 9",
    "UIDL",
    "UIDL 2",
    "RETR 1",
    "RETR 3",
    "TOP 2 1",
    "DELE 1",
    "DELE 2",
    "DELE 3",
    "DELE 4",
    "RSET",
    "NOOP",
    "CAPA",
    "QUIT x",
    "QUIT",
    "STLS",
    "FOO",
    "",
    "dele 2",
    "LIST 0",
]
# The commands that decide what gets deleted, drawn more often than the rest.
WEIGHTED = VOCABULARY + ["DELE 1", "DELE 2", "RSET", "RSET", "QUIT", "QUIT", "RSET x"]
STATUS = re.compile(rb"^[+-](OK|ERR)")
# Half the scripts start with a good login, so TRANSACTION is explored as well.
SCRIPTS = st.tuples(
    st.sampled_from([[], ["USER bob", "PASS builder"]]),
    st.lists(st.sampled_from(WEIGHTED), max_size=25),
).map(lambda parts: parts[0] + parts[1])


@pytest.fixture(scope="module")
def module_lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return Lab(tmp_path_factory.mktemp("states") / "lab").create()


def _expected_deletions(script: list[str]) -> set[int] | None:
    """What a correct server deletes: replay the rules by hand (None: no QUIT in T)."""
    state, user, marked = "A", None, set()
    sasl_pending = False
    for line in script:
        if sasl_pending:  # the line answers the "+ " challenge: never \0bob\0builder here
            sasl_pending = False
            continue
        word, _, arg = line.partition(" ")
        word = word.upper()
        if state == "A" and line == PLAIN_BOB:
            state = "T"
        elif state == "A" and line == "AUTH PLAIN":
            sasl_pending = True
        elif state == "A" and word == "USER" and arg:
            state, user = "U", arg
        elif state == "U" and word == "PASS" and arg:
            state = "T" if (user, arg) == ("bob", "builder") else "A"
        if state == "T" and word == "DELE" and arg.isdigit() and 1 <= int(arg) <= 3:
            marked.add(int(arg))
        elif state == "T" and word == "RSET" and not arg:
            marked = set()
        elif state == "T" and word == "QUIT" and not arg:
            return marked
        if word == "QUIT" and not arg and state in ("A", "U"):
            return None
    return None


@example(["USER bob", "PASS builder", "DELE 1", "RSET", "DELE 2", "QUIT"])
@example(["USER bob", "PASS builder", "DELE 1", "QUIT x", "RSET", "QUIT"])
@example(["USER bob", "PASS builder", "DELE 3", "USER bob"])
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(SCRIPTS)
def test_random_sessions_keep_the_invariants(module_lab: Lab, script: list[str]) -> None:
    module_lab.reset_maildrop("bob")
    before = {p.name for p in module_lab.messages("bob")}
    names = sorted(before)
    settings = settings_for_lab(policy=Policy(allow_plaintext=True), sasl_mechanisms=("PLAIN",))
    driven = drive(module_lab, settings)
    driven.feed()
    out = b""
    answered = 0
    continuations = 0  # lines that answered a SASL challenge rather than being commands
    chunk = b""
    for line in script:
        if driven.closed:
            break
        state_before = driven.session.state
        requests_before = len(driven.requests)
        keyword = line.partition(" ")[0].upper()
        answering = chunk.endswith(b"+ \r\n")
        continuations += answering
        chunk = driven.feed(line.encode() + b"\r\n")
        out += chunk
        answered += 1
        if not answering and keyword in KNOWN_COMMANDS and (state_before, keyword) not in TABLE:
            assert chunk.startswith(b"-ERR"), (line, state_before)
            assert len(driven.requests) == requests_before
        commits = [r for r in driven.requests[requests_before:] if isinstance(r, ev.CommitUpdate)]
        if commits:
            assert keyword == "QUIT" and state_before is State.TRANSACTION
    driven.release()
    statuses = [line for line in out.split(b"\r\n") if STATUS.match(line)]
    waiting = chunk.endswith(b"+ \r\n")  # the last command is a SASL exchange still open
    assert len(statuses) == answered - continuations - waiting
    after = {p.name for p in module_lab.messages("bob")}
    expected = _expected_deletions(script[:answered])
    gone = before - after
    if expected is None:
        assert gone == set()
    else:
        assert gone == {names[n - 1] for n in expected}


def test_every_table_entry_holds_a_handler_function() -> None:
    for (state, command), rule in TABLE.items():
        assert callable(rule.handler), (state, command)
        assert state not in (State.UPDATE, State.CLOSED, State.AUTHENTICATING)


def test_quit_is_the_only_way_into_update() -> None:
    into_update = [key for key, rule in TABLE.items() if rule.during is State.UPDATE]
    assert into_update == [(State.TRANSACTION, "QUIT")]
