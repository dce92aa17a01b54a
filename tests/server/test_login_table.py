"""The master's side of maxlogins_*: the datagrams the workers send, answered in order."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from pop3d.server import limits
from pop3d.server.limits import Claim, Exceeded, Limits, LoginTable, MasterLimits

ONE_EACH = Limits(per_host=0, per_user=1)


def _channel() -> tuple[socket.socket, socket.socket]:
    master_end, worker_end = limits.pair()
    master_end.setblocking(False)
    return master_end, worker_end


def _claimed(
    table: LoginTable, master_end: socket.socket, ask: Callable[[], Claim | Exceeded]
) -> Claim | Exceeded:
    """Run a worker's blocking claim on a thread while the master answers it."""
    result: list[Claim | Exceeded] = []
    asking = threading.Thread(target=lambda: result.append(ask()))
    asking.start()
    for _ in range(200):
        limits.answer(table, [master_end])
        asking.join(0.01)
        if not asking.is_alive():
            break
    assert result, "the claim was never answered"
    return result[0]


def test_a_release_is_counted_before_a_claim_waiting_beside_it() -> None:
    """alice QUITs on one worker (her release sent before her client reads +OK) and her
    next session logs in through another: both datagrams wait in one wake-up of the master,
    the claim's channel listed first. Her place is free for the claim."""
    table = LoginTable()
    first_master, first_worker = _channel()
    second_master, second_worker = _channel()
    first = MasterLimits(first_worker)
    held = _claimed(
        table, first_master, lambda: first.claim("pop3", "192.0.2.1", "alice", ONE_EACH)
    )
    assert isinstance(held, Claim)
    assert table.count("pop3", user="alice") == 1

    held.release()  # one datagram; nothing answers it
    second_worker.send(b'["claim", 1, "pop3", "192.0.2.1", "alice", 0, 1]')
    assert limits.answer(table, [second_master, first_master]) == []
    assert second_worker.recv(4096) == b"null"  # accepted: not ["user", 1, 1, "alice"]
    assert table.count("pop3", user="alice") == 1


def test_a_claim_past_the_limit_is_refused_and_says_why() -> None:
    table = LoginTable()
    first_master, first_worker = _channel()
    second_master, second_worker = _channel()
    first, second = MasterLimits(first_worker), MasterLimits(second_worker)
    held = _claimed(
        table, first_master, lambda: first.claim("pop3", "192.0.2.1", "alice", ONE_EACH)
    )
    refused = _claimed(
        table, second_master, lambda: second.claim("pop3", "192.0.2.2", "alice", ONE_EACH)
    )
    assert isinstance(held, Claim)
    assert refused == Exceeded("user", 1, 1, "alice")


def test_a_garbled_claim_is_answered_so_its_worker_does_not_wait_for_ever() -> None:
    table = LoginTable()
    master_end, worker_end = _channel()
    worker_end.send(b"{not json")
    worker_end.send(b'["claim", "x"]')
    assert limits.answer(table, [master_end]) == []
    assert worker_end.recv(4096) == b"null"
    assert worker_end.recv(4096) == b"null"


def test_a_worker_gone_is_returned_and_its_logins_forgotten() -> None:
    table = LoginTable()
    master_end, worker_end = _channel()
    worker = MasterLimits(worker_end)
    held = _claimed(table, master_end, lambda: worker.claim("pop3", "192.0.2.1", "bob", ONE_EACH))
    assert isinstance(held, Claim)
    worker_end.close()
    assert limits.answer(table, [master_end]) == [master_end]
    assert table.count("pop3", user="bob") == 0
    assert table.count("pop3", host="192.0.2.1") == 0
