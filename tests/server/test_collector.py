"""The worker's collector settings (server/worker.py tune_collector): start-up objects
frozen out of full collections, young collections rarer; cycles made later still go; and
sessions that leave nothing to the collector (bench/RESULTS.md, section 11)."""

from __future__ import annotations

import gc
import poplib
import re
import socket
import ssl
import weakref
from collections.abc import Iterator

import pytest

from pop3d.server.worker import YOUNG_COLLECTION_THRESHOLD, tune_collector
from tests.support.lab import Lab, start_server


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class _Node:
    def __init__(self) -> None:
        self.peer: _Node | None = None


def test_start_up_objects_are_frozen_and_young_collections_rarer(
    restored_collector: None,
) -> None:
    before = gc.get_freeze_count()
    frozen = tune_collector()
    assert frozen > before
    assert frozen == gc.get_freeze_count()
    assert gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD


def test_a_cycle_made_after_the_freeze_is_still_collected(restored_collector: None) -> None:
    tune_collector()
    first, second = _Node(), _Node()
    first.peer, second.peer = second, first
    gone = weakref.ref(first)
    del first, second
    gc.collect()
    assert gone() is None


# A session over each transport, and a client refused a login that leaves without QUIT.
SESSIONS_EACH = 10
# Objects the workers may leave to the collector in all (none today). Before
# server/channel.py broke it, asyncio's transport cycle alone left 7 per connection.
LEFT_AT_MOST = 10
_DONE = re.compile(rb"worker done: (\d+) connections served, (\d+) objects left")


def _session(client: poplib.POP3) -> None:
    client.user("alice")
    client.pass_("wonderland")
    count, _ = client.stat()
    if count:
        client.retr(1)
    client.quit()


def test_sessions_leave_no_reference_cycles(tls_lab: Lab) -> None:
    """Real sessions (plain, pop3s, STLS, and clients that vanish) against a real worker,
    which reports at exit how many objects it found unreachable since its start-up: a
    session that leaves a reference cycle behind (an exception kept with its traceback, a
    bound method stored on its own object, ...) shows up here several objects at a time."""
    assert tls_lab.tls is not None
    context = ssl.create_default_context(cafile=str(tls_lab.tls.ca))
    server = start_server(tls_lab, {"pop3": "", "pop3s": "-s"})
    try:
        plain, implicit = server.ports["pop3"], server.ports["pop3s"]
        for _ in range(SESSIONS_EACH):
            _session(poplib.POP3("127.0.0.1", plain, timeout=10))
            _session(poplib.POP3_SSL("127.0.0.1", implicit, context=context, timeout=10))
            client = poplib.POP3("localhost", plain, timeout=10)
            client.stls(context)
            _session(client)
            with socket.create_connection(("127.0.0.1", plain), timeout=10) as gone:
                assert gone.recv(512).startswith(b"+OK")
                gone.sendall(b"USER alice\r\nPASS wrong\r\n")  # refused, then gone
                answers = b""
                for _ in range(3):  # USER's +OK and PASS's -ERR, in one or two reads
                    answers += gone.recv(512)
                    if b"-ERR" in answers:
                        break
                assert b"-ERR" in answers
    finally:
        server.stop()
    reports = [tuple(map(int, found)) for found in _DONE.findall(server.log.read_bytes())]
    assert len(reports) == 2, server.log_text()  # one worker per service
    assert sum(served for served, _ in reports) >= 4 * SESSIONS_EACH  # + start_server's probes
    assert sum(left for _, left in reports) <= LEFT_AT_MOST, reports
