"""SIGKILL of the worker while QUIT's UPDATE commits (1,500 unlinks and two directory
fsyncs, about 30 ms here), at several delays after QUIT was sent: every message not marked
deleted is still there, unchanged; the marked ones are all there or gone, nothing else;
the master replaces the worker and the next session logs in (the flock died with the
process) and sees exactly what is on disk."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.faults.client import LogWatch, Pop, files, worker_pid
from tests.support.lab import Lab, Server, start_server

MESSAGES = 3000  # in cur/, after bob's three in new/


def fill(maildir: Path) -> None:
    cur = maildir / "cur"
    for i in range(MESSAGES):
        body = b"Subject: %d\n\nmessage %d\n" % (i, i)
        size = len(body) + body.count(b"\n")
        (cur / f"18{i:08d}.M{i}P4.lab,S={len(body)},W={size}:2,S").write_bytes(body)


@pytest.mark.parametrize("delay_ms", [0, 1, 5, 20])
def test_sigkill_during_update(tmp_path: Path, delay_ms: int) -> None:
    lab = Lab(tmp_path / "lab").create()
    maildir = lab.maildir("bob")
    fill(maildir)
    server = start_server(lab)
    try:
        before = files(maildir)
        worker = worker_pid(server)
        client = Pop(server.port)
        assert client.login().startswith(b"+OK")
        listing = [line.split()[1].decode() for line in _uidl(client)]
        # Every other message, bob's first three included.
        marked = range(1, MESSAGES + 4, 2)
        deleted_names = {listing[n - 1] for n in marked}
        client.send(b"".join(b"DELE %d\r\n" % n for n in marked))
        for _ in marked:
            assert client.line().startswith(b"+OK")
        watch = LogWatch(server)
        client.send(b"QUIT\r\n")
        time.sleep(delay_ms / 1000)
        os.kill(worker, signal.SIGKILL)
        client.close()
        watch.wait_for(r"was killed by SIGKILL")

        after = files(maildir)
        kept = {name: data for name, data in before.items() if name not in deleted_names}
        assert {name: after.get(name) for name in kept} == kept  # nothing unmarked is lost
        assert set(after) <= set(before)
        assert not list((maildir / "tmp").iterdir())
        gone = len(before) - len(after)
        print(f"killed {delay_ms} ms after QUIT: {gone} of {len(marked)} removed")

        # The master restarts the worker; the lock died with the old one.
        assert worker_pid_changes(server, worker)
        fresh = Pop(server.port)
        reply = fresh.login()
        assert reply.startswith(b"+OK Mailbox locked"), (reply, gone)
        assert fresh.stat()[0] == len(after)
        assert fresh.ask(b"QUIT").startswith(b"+OK")
        fresh.close()
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()


def _uidl(client: Pop) -> list[bytes]:
    assert client.ask(b"UIDL").startswith(b"+OK")
    return client.multiline()


def worker_pid_changes(server: Server, old: int) -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if worker_pid(server) != old:
            return True
        time.sleep(0.02)
    return False
