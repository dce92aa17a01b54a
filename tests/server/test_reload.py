"""SIGHUP re-reads imapd.conf and cyrus.conf (server/reload.py): a changed configuration
that checks out replaces the workers, their sessions running to their end; one that would
not start is refused and the services go on as they were; an unchanged one starts nothing."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.lab import Lab, Server, free_port, start_server


def _workers(server: Server) -> set[int]:
    pid = server.process.pid
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _until(condition: Callable[[], bool], server: Server, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert server.process.poll() is None, server.log_text()
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)


def _reload(server: Server, says: str) -> None:
    """SIGHUP, and wait for the master to log ``says`` one more time."""
    before = server.log_text().count(says)
    server.process.send_signal(signal.SIGHUP)
    _until(lambda: server.log_text().count(says) > before, server)


class Session:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.reader = self.sock.makefile("rb")
        assert self.reader.readline().startswith(b"+OK")

    def __call__(self, line: str) -> bytes:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reader.readline()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def _login_answer(port: int) -> bytes:
    session = Session(port)
    try:
        session("USER alice")
        answer = session("PASS wonderland")
        if answer.startswith(b"+OK"):
            # QUIT's answer comes once the lock is let go: a hang-up is noticed later, and
            # the next login could meet the lock still held ([IN-USE], seen under load)
            session("QUIT")
        return answer
    finally:
        session.close()


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_a_changed_configuration_replaces_the_workers_and_spares_their_sessions(
    lab: Lab,
) -> None:
    server = start_server(lab)
    try:
        old_workers = _workers(server)
        messages = len(lab.messages("alice"))
        session = Session(server.port)
        assert session("USER alice").startswith(b"+OK")
        assert session("PASS wonderland").startswith(b"+OK")

        _edit(lab.config, "allowplaintext: yes", "allowplaintext: no")
        _reload(server, "reload: configuration changed; replacing 1 workers")
        _until(lambda: bool(_workers(server) - old_workers), server)
        # New connections meet the new configuration ...
        assert _login_answer(server.port).startswith(b"-ERR [AUTH]")
        # ... while the session the old worker holds goes on to its end, and commits.
        assert "worker retiring: the master reloaded its configuration" in server.log_text()
        assert session("STAT").startswith(b"+OK")
        assert session("DELE 1").startswith(b"+OK")
        assert session("QUIT").startswith(b"+OK")
        session.close()
        assert len(lab.messages("alice")) == messages - 1
        (old,) = old_workers
        _until(lambda: f"retired worker (pid {old}) exited with 0" in server.log_text(), server)
        assert "Traceback" not in server.log_text()
    finally:
        server.stop()


def test_a_configuration_that_would_not_start_is_refused_and_nothing_changes(lab: Lab) -> None:
    server = start_server(lab)
    try:
        # Served: the worker has read the configuration (one still starting reads it
        # as it is then, broken or not: a worker's own exit 78 is not what this tests)
        assert _login_answer(server.port).startswith(b"+OK")
        workers = _workers(server)
        # Unchanged (a comment aside): nothing is started, the certificates are re-read.
        lab.config.write_text(lab.config.read_text() + "# a comment\n")
        _reload(server, "reload: configuration unchanged")
        # Broken: refused whole, logged with file:line, served on as before.
        _edit(lab.config, "allowplaintext: yes", "allowplaintext: banana")
        _reload(server, "reload refused, serving on as before:")
        assert f"{lab.config}:4: error: allowplaintext: 'banana' is not a switch" in (
            server.log_text()
        )
        assert _workers(server) == workers
        assert _login_answer(server.port).startswith(b"+OK")
        # What only a restart may change is refused too, named.
        _edit(lab.config, "allowplaintext: banana", "allowplaintext: yes")
        lab.config.write_text(lab.config.read_text() + "maildrop_lock: table\n")
        _reload(server, "maildrop_lock changed: restart pop3d-master")
        assert _workers(server) == workers
        # A service whose cmd pop3d refuses: the same refusal as at start.
        _edit(lab.config, "maildrop_lock: table\n", "")
        cyrus_conf = lab.root / "cyrus.conf"
        _edit(cyrus_conf, 'cmd="pop3d ', 'cmd="pop3d -Z ')
        _reload(server, f"reload refused, serving on as before: {cyrus_conf}:2: service pop3:")
        # ... and a listen the master could not bind, refused as check-config says it
        _edit(cyrus_conf, 'cmd="pop3d -Z ', 'cmd="pop3d ')
        _edit(cyrus_conf, 'listen="127.0.0.1:', 'listen="nonexist.invalid:')
        _reload(server, "listen nonexist.invalid:")
        assert "no address to bind" in server.log_text()
        assert _workers(server) == workers
        assert _login_answer(server.port).startswith(b"+OK")
        assert server.process.poll() is None
    finally:
        server.stop()


def test_services_added_and_removed_from_cyrus_conf(lab: Lab) -> None:
    server = start_server(lab)
    try:
        cyrus_conf = lab.root / "cyrus.conf"
        first = cyrus_conf.read_text().splitlines()[1]
        added = free_port()
        cyrus_conf.write_text(
            "SERVICES {\n"
            + first
            + "\n"
            + f'  pop3b cmd="pop3d -C {lab.config}" listen="127.0.0.1:{added}" prefork=1\n'
            + "}\n"
        )
        _reload(server, "reload: configuration changed")
        _until(lambda: _serves(added), server)
        assert _login_answer(server.port).startswith(b"+OK")  # the first one, still served

        cyrus_conf.write_text(
            "SERVICES {\n"
            + f'  pop3b cmd="pop3d -C {lab.config}" listen="127.0.0.1:{added}" prefork=1\n'
            + "}\n"
        )
        _reload(server, "reload: configuration changed")
        assert f"service pop3: no longer listening on 127.0.0.1:{server.port}" in (
            server.log_text()
        )
        _until(lambda: not _accepts(server.port), server)
        assert _login_answer(added).startswith(b"+OK")
    finally:
        server.stop()


@pytest.mark.parametrize("setting", ["cyrus_user: nobody", "prometheus_enabled: yes"])
def test_what_the_master_read_once_needs_a_restart(lab: Lab, setting: str) -> None:
    server = start_server(lab)
    try:
        assert _login_answer(server.port).startswith(b"+OK")  # the worker has read it
        lab.config.write_text(lab.config.read_text() + setting + "\n")
        name = setting.split(":", maxsplit=1)[0]
        _reload(server, f"{name} changed: restart pop3d-master to change it")
    finally:
        server.stop()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def _serves(port: int) -> bool:
    try:
        return _login_answer(port).startswith(b"+OK")
    except OSError:
        return False


def test_a_service_renamed_or_respelled_keeps_its_socket_and_the_lock_rule(lab: Lab) -> None:
    """Found probing: the restart-only rule compared services by name, so renaming one
    while changing maildrop_lock let two sessions hold one maildrop; and a listen spelled
    another way ("localhost" for "127.0.0.1") was refused, its own socket in the way."""
    server = start_server(lab)
    try:
        assert _login_answer(server.port).startswith(b"+OK")
        cyrus_conf = lab.root / "cyrus.conf"
        _edit(cyrus_conf, "  pop3 cmd=", "  pop3r cmd=")
        lab.config.write_text(lab.config.read_text() + "maildrop_lock: table\n")
        _reload(server, "maildrop_lock changed: restart pop3d-master to change it")
        _edit(lab.config, "maildrop_lock: table\n", "poptimeout: 20m\n")
        _edit(cyrus_conf, 'listen="127.0.0.1:', 'listen="localhost:')
        _reload(server, "reload: configuration changed")
        assert "cannot listen" not in server.log_text()
        _until(lambda: _serves(server.port), server)
    finally:
        server.stop()


def test_replaced_workers_still_serving_hold_off_more_reloads(lab: Lab) -> None:
    """Found probing: changed reloads in a row, each leaving the workers it replaced to
    their idle sessions, stacked processes (27, 727 MB after ten). Past twice the workers
    serving, a reload is refused until they have finished."""
    server = start_server(lab)
    held = []
    try:
        for timeout in range(11, 13):  # two replacements, each leaving a session behind
            held.append(Session(server.port))
            lab.configure(f"poptimeout: {timeout}m\n")
            _reload(server, "reload: configuration changed")
        held.append(Session(server.port))
        lab.configure("poptimeout: 13m\n")
        _reload(server, "2 replaced workers are still finishing their sessions (at most 2)")
        for session in held:  # their sessions end: the retired workers go, a reload works
            assert session("QUIT").startswith(b"+OK")
            session.close()
        _until(lambda: server.log_text().count("retired worker") >= 2, server)
        _reload(server, "reload: configuration changed")
    finally:
        for session in held:
            session.close()
        server.stop()


def test_the_workers_signal_sent_to_the_master_is_ignored(lab: Lab) -> None:
    """Found probing: SIGUSR2 (a worker's word to retire) sent to the master ended it."""
    server = start_server(lab)
    try:
        server.process.send_signal(signal.SIGUSR2)
        _until(lambda: "SIGUSR2 is for workers; the master ignores it" in server.log_text(), server)
        assert _login_answer(server.port).startswith(b"+OK")
        assert server.process.poll() is None
    finally:
        assert server.stop() == 0
