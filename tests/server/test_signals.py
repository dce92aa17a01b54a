"""SIGHUP asks for a reload and nothing else: from the moment a process starts (the master
reading its configuration, a worker importing) until its handler is in place, it is held,
not acted on by its default action, which ended the process (found probing). And pop3d -X
handles SIGHUP and SIGTERM as its manual page says."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest

from pop3d.cli import start
from pop3d.server import worker
from tests.server.test_master_backoff import serves
from tests.support.lab import ROOT, Lab, free_port, start_server


def _hangups(pid: int, seconds: float, signum: int = signal.SIGHUP) -> None:
    """SIGHUP (or ``signum``) every 10 ms, as a reload script run in a loop would."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        os.kill(pid, signum)
        time.sleep(0.01)


def _until_served(port: int, master: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert master.poll() is None, log.read_text()
        with contextlib.suppress(OSError):
            if serves(port):
                return
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def test_sighup_while_the_master_and_its_workers_start_is_a_reload(lab: Lab) -> None:
    port = free_port()
    cyrus_conf = lab.root / "cyrus.conf"
    cyrus_conf.write_text(
        f'SERVICES {{\n  pop3 cmd="pop3d -C {lab.config}" listen="127.0.0.1:{port}" prefork=1\n}}\n'
    )
    log = lab.root / "master.log"
    with log.open("ab") as handle:
        master = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pop3d.cli.master",
                "-C",
                str(lab.config),
                "-M",
                str(cyrus_conf),
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        # Bound: the master is past its imports and checks its configuration now; its
        # workers come next.
        deadline = time.monotonic() + 20
        while True:
            assert master.poll() is None, log.read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.005)
        _hangups(master.pid, 3.0)
        _until_served(port, master, log)
        # A worker killed is replaced 0.25 s later; the reloads go on while it starts.
        (worker,) = worker_pids_of(master.pid)
        # The stops the master held while importing are not left held for its workers
        assert not _blocked(worker) & start.MASTER_HELD_WHILE_IMPORTING, _blocked(worker)
        os.kill(worker, signal.SIGKILL)
        _hangups(master.pid, 3.0)
        _until_served(port, master, log)
        text = log.read_text()
        assert "killed by SIGHUP" not in text, text
        assert text.count("worker 0 started") == 2, text
    finally:
        if master.poll() is None:
            master.send_signal(signal.SIGTERM)
        assert master.wait(timeout=15) == 0, log.read_text()


def worker_pids_of(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _line(process: subprocess.Popen[bytes]) -> bytes:
    assert process.stdout is not None
    return process.stdout.readline()


def _x_session(lab: Lab) -> subprocess.Popen[bytes]:
    """pop3d -X logged in as bob, waiting for a command."""
    process = subprocess.Popen(
        lab.pop3d_x(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    watchdog = threading.Timer(30, process.kill)
    watchdog.start()
    assert process.stdin is not None
    assert _line(process).startswith(b"+OK")
    process.stdin.write(b"USER bob\r\nPASS builder\r\n")
    process.stdin.flush()
    assert _line(process).startswith(b"+OK")
    assert _line(process).startswith(b"+OK")
    watchdog.cancel()
    return process


def test_pop3d_x_sighup_leaves_the_session_and_sigterm_ends_it_with_exit_0(lab: Lab) -> None:
    process = _x_session(lab)
    watchdog = threading.Timer(30, process.kill)  # every read below is bounded by it
    watchdog.start()
    try:
        assert process.stdin is not None
        process.send_signal(signal.SIGHUP)
        process.stdin.write(b"DELE 1\r\n")
        process.stdin.flush()
        assert _line(process) == b"+OK Message 1 deleted\r\n"
        # pop3d-master's word to its workers means nothing here: it ended the session
        # (a `pkill -USR2 pop3d` meant for a master's workers; found probing)
        process.send_signal(signal.SIGUSR2)
        process.stdin.write(b"NOOP\r\n")
        process.stdin.flush()
        assert _line(process) == b"+OK\r\n"
        process.send_signal(signal.SIGTERM)
        assert _line(process) == b""  # closed, without UPDATE
        assert process.wait(timeout=15) == 0
        assert process.stderr is not None
        assert b"ended: server shutting down" in process.stderr.read()
        assert len(lab.messages("bob")) == 3
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()


def _console_script(name: str) -> list[str]:
    """What pip's wrapper for ``name`` in pyproject.toml runs: its target, imported and
    called (the installed wrapper is the one made at the last ``pip install -e``)."""
    with (ROOT / "pyproject.toml").open("rb") as handle:
        target = tomllib.load(handle)["project"]["scripts"][name]
    module, _, function = target.partition(":")
    return [
        sys.executable,
        "-c",
        f"import sys; from {module} import {function}; sys.exit({function}())",
    ]


def _blocked(pid: int) -> set[signal.Signals]:
    with open(f"/proc/{pid}/status") as status:
        mask = next(int(line.split()[1], 16) for line in status if line.startswith("SigBlk"))
    return {signum for signum in signal.Signals if mask & (1 << (signum - 1))}


def _held_or_importing(pid: int) -> bool:
    """SIGHUP held, or pop3d's imports begun (an extension module of a library mapped)
    without it. Maps first: a library mapped while SIGHUP, read afterwards, is not held
    was never held before that library."""
    importing = _importing(pid)
    with open(f"/proc/{pid}/status") as status:
        blocked = next(int(line.split()[1], 16) for line in status if line.startswith("SigBlk"))
    return importing or bool(blocked & (1 << (signal.SIGHUP - 1)))


@pytest.mark.parametrize(
    "entry",
    [
        "python -m pop3d.cli.master",
        "pop3d-master",
        "python -m pop3d",
        "pop3d",
        "python -m pop3d.cli.pop3d",
    ],
)
def test_sighup_from_the_first_import_never_ends_the_process(lab: Lab, entry: str) -> None:
    """Found probing: the entries held SIGHUP in main(), after 0.3 s of imports, and a
    reload asked meanwhile ended the master (exit 129). Hangups every 10 ms from the moment
    the process holds SIGHUP or begins importing its libraries, for a second: it serves,
    and SIGTERM ends it with 0. (Python's own start, before any of pop3d's code, cannot
    hold it: the hangups begin after it.)"""
    program = entry.removeprefix("python -m ")
    argv = _console_script(entry) if program == entry else [sys.executable, "-m", program]
    master = program in ("pop3d.cli.master", "pop3d-master")
    _signalled_from_the_first_import(lab, argv, master, signal.SIGHUP)


@pytest.mark.parametrize("entry", ["python -m pop3d.cli.master", "python -m pop3d"])
def test_sigusr1_from_the_first_import_never_ends_the_process(lab: Lab, entry: str) -> None:
    """SIGUSR1 means nothing to pop3d, and is held as SIGHUP is until its handler logs it:
    its default action ended a process still starting."""
    argv = [sys.executable, "-m", entry.removeprefix("python -m ")]
    log = _signalled_from_the_first_import(lab, argv, entry.endswith("master"), signal.SIGUSR1)
    assert "SIGUSR1 ignored: it means nothing to pop3d" in log


def _signalled_from_the_first_import(lab: Lab, argv: list[str], master: bool, signum: int) -> str:
    """Start ``argv`` (pop3d-master or pop3d -X), send ``signum`` every 10 ms for a second
    from the moment it holds signals or begins importing, then see it serve and stop with
    0 on SIGTERM or QUIT. Its log."""
    port = free_port()
    if master:
        cyrus_conf = lab.root / "cyrus.conf"
        cyrus_conf.write_text(
            f'SERVICES {{\n  pop3 cmd="pop3d -C {lab.config}" listen="127.0.0.1:{port}" '
            "prefork=1\n}\n"
        )
        argv = [*argv, "-C", str(lab.config), "-M", str(cyrus_conf)]
    else:
        argv = [*argv, "-X", "-C", str(lab.config)]
    log = lab.root / "process.log"
    with log.open("ab") as handle:
        process = subprocess.Popen(
            argv,
            stdin=None if master else subprocess.PIPE,
            stdout=handle if master else subprocess.PIPE,
            stderr=handle,
        )
    try:
        deadline = time.monotonic() + 20
        while not _held_or_importing(process.pid):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
        _hangups(process.pid, 1.0, signum)
        assert process.poll() is None, (process.returncode, log.read_text())
        if master:
            _until_served(port, process, log)
            process.send_signal(signal.SIGTERM)
        else:
            watchdog = threading.Timer(30, process.kill)
            watchdog.start()
            try:
                assert _line(process).startswith(b"+OK"), log.read_text()
                assert process.stdin is not None
                process.stdin.write(b"QUIT\r\n")
                process.stdin.flush()
                assert _line(process).startswith(b"+OK"), log.read_text()
            finally:
                watchdog.cancel()
        assert process.wait(timeout=15) == 0, log.read_text()
        return log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_entries_hold_what_a_worker_holds() -> None:
    assert start.HELD_AT_START == worker.HELD_AT_START


@pytest.mark.parametrize("name", ["pop3d-master", "pop3d"])
def test_ctrl_c_while_starting_is_exit_130_without_a_traceback(name: str) -> None:
    """Found probing: a SIGINT during the imports printed KeyboardInterrupt's traceback."""
    process = subprocess.Popen(
        _console_script(name), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not _held_or_importing(process.pid):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.001)
        process.send_signal(signal.SIGINT)
        _out, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert b"Traceback" not in errors, errors
    # interrupted (the master: stopped, pop3d-master(8)'s 0), or done already
    assert process.returncode in ((0,) if name == "pop3d-master" else (130,)) + (64, 78), errors


def _importing(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as maps:
        return any("site-packages/" in line and ".so" in line for line in maps)


def _entry_argv(entry: str) -> list[str]:
    program = entry.removeprefix("python -m ")
    return _console_script(entry) if program == entry else [sys.executable, "-m", program]


def _stopped_while_importing(argv: list[str], stop: signal.Signals) -> tuple[int, bytes]:
    """Start ``argv``, send ``stop`` once its imports have begun: (exit status, stderr)."""
    process = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while not _importing(process.pid):
            assert process.poll() is None and time.monotonic() < deadline
        process.send_signal(stop)
        _, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, err


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGQUIT], ids=lambda s: s.name)
@pytest.mark.parametrize("entry", ["pop3d", "python -m pop3d", "python -m pop3d.cli.pop3d"])
def test_sigterm_while_importing_is_exit_0(lab: Lab, entry: str, stop: signal.Signals) -> None:
    """Found probing: a SIGTERM in pop3d's 0.3 s of imports ended it with 143 and nothing
    said, where pop3d(8) promises 0 after SIGTERM. Held through the imports, it stops
    pop3d at main()'s start: exit 0 and a line saying so. SIGQUIT is a stop too."""
    code, err = _stopped_while_importing([*_entry_argv(entry), "-X", "-C", str(lab.config)], stop)
    assert code == 0, err
    assert b"Traceback" not in err, err


@pytest.mark.parametrize(
    "stop", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=lambda s: s.name
)
@pytest.mark.parametrize("entry", ["pop3d-master", "python -m pop3d.cli.master"])
def test_the_master_stopped_while_importing_is_exit_0(
    lab: Lab, entry: str, stop: signal.Signals
) -> None:
    """Found probing: a SIGTERM in the master's 0.3 s of imports ended it with -15, a
    SIGINT with 130, nothing said, where pop3d-master(8) says exit 0 is stopped by either.
    Held through the imports, they stop it at main()'s start: exit 0, a line saying so."""
    cyrus_conf = lab.root / "cyrus.conf"
    cyrus_conf.write_text(
        f'SERVICES {{\n  pop3 cmd="pop3d -C {lab.config}" listen="127.0.0.1:{free_port()}"\n}}\n'
    )
    code, err = _stopped_while_importing(
        [*_entry_argv(entry), "-C", str(lab.config), "-M", str(cyrus_conf)], stop
    )
    assert code == 0, err
    assert f"stopped by {stop.name}".encode() in err, err
    assert b"Traceback" not in err, err


# Each signal whose default action ends a process and which pop3d ignores, as `kill -l`
# names it (the real-time ones are no members of signal.Signals).
STRAYS = {
    "SIGUSR1": signal.SIGUSR1,
    "SIGALRM": signal.SIGALRM,
    "SIGVTALRM": signal.SIGVTALRM,
    "SIGPROF": signal.SIGPROF,
    "SIGIO": signal.SIGIO,
    "SIGPWR": signal.SIGPWR,
    "SIGSTKFLT": signal.SIGSTKFLT,
    "SIGXCPU": signal.SIGXCPU,
    "SIGRTMIN": signal.SIGRTMIN,
    "SIGRTMIN+1": signal.SIGRTMIN + 1,
    "SIGRTMAX": signal.SIGRTMAX,
}


def _wait_for(log: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while text not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, (text, log.read_text())
        time.sleep(0.02)


def test_the_master_stops_on_sigquit_and_logs_and_ignores_sigusr1(lab: Lab) -> None:
    """Found probing: SIGUSR1 and SIGQUIT ended the master by their default action, no line
    logged, its pid file left naming it; its workers then retired and the service was down.
    SIGQUIT is a clean stop now, as in Cyrus's master (master.c: sigquit_handler), and
    SIGUSR1 and every other signal whose default action would end it are logged and
    ignored, by the master and by its workers, which serve on."""
    pidfile = lab.root / "master.pid"
    log = lab.root / "master.log"
    for _attempt in range(5):  # exit 71: another test took the port free_port() found
        port = free_port()
        cyrus_conf = lab.root / "cyrus.conf"
        cyrus_conf.write_text(
            f'SERVICES {{\n  pop3 cmd="pop3d" listen="127.0.0.1:{port}" prefork=1\n}}\n'
        )
        with log.open("wb") as handle:
            master = subprocess.Popen(
                [sys.executable, "-m", "pop3d.cli.master", "-C", str(lab.config),
                 "-M", str(cyrus_conf), "-p", str(pidfile)],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while master.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    if serves(port):
                        break
                time.sleep(0.05)
            if master.poll() == 71 and "Address already in use" in log.read_text():
                continue
            assert serves(port), log.read_text()
            (worker,) = worker_pids_of(master.pid)
            for name, signum in STRAYS.items():
                os.kill(master.pid, signum)
                _wait_for(log, f"{name} ignored: it means nothing to pop3d-master", master)
                os.kill(worker, signum)
                _wait_for(log, f"{name} ignored: it means nothing to pop3d\n", master)
            assert serves(port), log.read_text()
            assert worker_pids_of(master.pid) == [worker]  # the same worker, serving on
            assert pidfile.read_text() == f"{master.pid}\n"
            os.kill(master.pid, signal.SIGQUIT)
            assert master.wait(timeout=15) == 0, log.read_text()
        finally:
            if master.poll() is None:
                master.kill()
                master.wait()
        break
    text = log.read_text()
    assert "stopping on SIGQUIT: 1 workers" in text, text
    assert "Traceback" not in text and "worker done: " in text, text
    assert not pidfile.exists()


def test_a_worker_stops_on_sigquit_as_on_sigterm(lab: Lab) -> None:
    """Its session waiting for a command is closed without UPDATE (nothing deleted), and
    the master starts another worker. SIGQUIT's default action was a core dump."""
    server = start_server(lab)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"+OK")
            sock.sendall(b"USER bob\r\nPASS builder\r\nDELE 1\r\n")
            assert all(reader.readline().startswith(b"+OK") for _ in range(3))
            (worker,) = worker_pids_of(server.process.pid)
            os.kill(worker, signal.SIGQUIT)
            assert reader.readline() == b""  # closed, without UPDATE
        assert len(lab.messages("bob")) == 3
        _wait_for(server.log, f"worker 0 (pid {worker}) exited with 0", server.process)
        text = server.log_text()
        assert "ended: server shutting down" in text and "Traceback" not in text, text
    finally:
        assert server.stop() == 0


def test_pop3d_x_ignores_sigusr1_and_stops_on_sigquit(lab: Lab) -> None:
    process = _x_session(lab)
    watchdog = threading.Timer(30, process.kill)  # every read below is bounded by it
    watchdog.start()
    try:
        assert process.stdin is not None
        for signum in STRAYS.values():
            process.send_signal(signum)
        process.stdin.write(b"DELE 1\r\n")
        process.stdin.flush()
        assert _line(process) == b"+OK Message 1 deleted\r\n"
        process.send_signal(signal.SIGQUIT)
        assert _line(process) == b""  # closed, without UPDATE
        assert process.wait(timeout=15) == 0
        assert process.stderr is not None
        errors = process.stderr.read().decode()
        assert "ended: server shutting down" in errors, errors
        for name in STRAYS:
            assert f"{name} ignored: it means nothing to pop3d\n" in errors, (name, errors)
        assert len(lab.messages("bob")) == 3
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
