"""Running safely, with real processes: the master as root giving up root for cyrus_user,
maxlogins_per_host / maxlogins_per_user counted across the workers of the master, Cyrus's
shutdown file, and systemd socket activation through the real systemd-socket-activate."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import grp
import importlib.metadata
import itertools
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pop3d.config.imapd import load
from pop3d.server.context import RuntimeOptions, ServiceContext
from tests.server.test_network import command, connect, worker_pids
from tests.support.lab import ROOT, Lab, free_port, start_server

ACCOUNT = "pop3d-test"  # a throwaway system account, made here when missing
USERS = {"alice": "wonderland", "bob": "builder", "carol": "singer"}


def _account() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("the privilege drop needs root")
    try:
        return pwd.getpwnam(ACCOUNT)
    except KeyError:
        pass
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", ACCOUNT],
        check=False,
        capture_output=True,
    )  # fmt: skip
    return pwd.getpwnam(ACCOUNT)  # another test process may have made it meanwhile


def _runtime_distributions() -> list[importlib.metadata.Distribution]:
    """The distributions pop3d needs at run time, its own requirements followed down
    (markers evaluated without extras: not the test or bench tools)."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = ["pop3d"]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        dist = importlib.metadata.distribution(name)
        seen[name] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    del seen[canonicalize_name("pop3d")]
    return list(seen.values())


@functools.cache
def _public_site() -> Path:
    """pop3d and what it needs at run time, copied where any account can read them: the
    checkout and its venv may sit in a private home (a clean clone under /root), which the
    account the master drops to cannot enter, and its workers import after the drop."""
    folder = Path(tempfile.mkdtemp(prefix="pop3d-site-", dir="/tmp"))
    atexit.register(shutil.rmtree, folder, True)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "pop3d", folder / "pop3d", ignore=ignore)
    for dist in _runtime_distributions():
        for file in dist.files or []:
            if file.parts[0] == "..":  # scripts, not importable
                continue
            source = Path(str(dist.locate_file(file)))
            if source.is_file() and "__pycache__" not in file.parts:
                (folder / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, folder / file)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def _python_for(user: str) -> tuple[str, dict[str, str]]:
    """An interpreter ``user`` can run with pop3d and its dependencies importable: this
    one; or, when it lives under a private home (as pyenv's does), the system python3 of
    the same version with this environment's site-packages on PYTHONPATH; or, when the
    checkout and its venv are private too, that python3 with a public copy of both."""
    site = sysconfig.get_paths()["purelib"]
    candidates: list[tuple[str, Callable[[], dict[str, str]]]] = [
        (sys.executable, dict),
        ("/usr/bin/python3", lambda: {"PYTHONPATH": f"{ROOT}:{site}"}),
        ("/usr/bin/python3", lambda: {"PYTHONPATH": str(_public_site())}),
    ]
    for python, make_env in candidates:
        env = make_env()
        probe = subprocess.run(
            ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in env.items()),
             python, "-c", "import pop3d.cli.master, nacl, gssapi"],
            capture_output=True,
            cwd="/",
            check=False,
        )  # fmt: skip
        if probe.returncode == 0:
            return python, env
    pytest.fail(f"no Python interpreter that {user} can run with pop3d's dependencies")


@pytest.fixture
def public_root() -> Iterator[Path]:
    """A folder the account can reach (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="pop3d-ops-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, gid, follow_symlinks=False)


def _status_ids(pid: int) -> tuple[list[int], list[int]]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return [int(v) for v in fields["Uid"].split()], [int(v) for v in fields["Gid"].split()]


def _login(port: int, user: str) -> tuple[socket.socket, object, bytes]:
    sock, reader = connect(port)
    assert reader.readline().startswith(b"+OK")
    assert command(sock, reader, b"USER " + user.encode()).startswith(b"+OK")
    return sock, reader, command(sock, reader, b"PASS " + USERS[user].encode())


# --- privilege drop ---------------------------------------------------------------------


def test_master_started_as_root_serves_as_cyrus_user(public_root: Path) -> None:
    account = _account()
    lab = Lab(
        public_root / "lab",
        extra_config=f"cyrus_user: {ACCOUNT}\ncyrus_group: {ACCOUNT}\n",
    ).create()
    _chown_tree(lab.root, account.pw_uid, account.pw_gid)
    python, env = _python_for(ACCOUNT)
    server = start_server(lab, prefork=2, env=env, python=python)
    try:
        sock, reader, reply = _login(server.port, "alice")
        assert reply.startswith(b"+OK"), reply
        assert command(sock, reader, b"STAT").startswith(b"+OK 7 ")
        assert command(sock, reader, b"QUIT").startswith(b"+OK")
        sock.close()
        gid = grp.getgrnam(ACCOUNT).gr_gid
        pids = [server.process.pid, *worker_pids(server)]
        assert len(pids) == 3
        for pid in pids:  # real, effective, saved and filesystem ids: no way back to root
            uids, gids = _status_ids(pid)
            assert uids == [account.pw_uid] * 4, (pid, uids)
            assert gids == [gid] * 4, (pid, gids)
            groups = Path(f"/proc/{pid}/status").read_text().split("Groups:")[1].splitlines()[0]
            assert "0" not in groups.split(), groups
        assert f"running as {ACCOUNT} (uid {account.pw_uid}, gid {gid})" in server.log_text()
    finally:
        assert server.stop() == 0


def test_admin_run_as_root_makes_mail_the_server_can_read(public_root: Path) -> None:
    """pop3d-admin deliver and import, run as root with cyrus_user set, become that account
    first (as Cyrus's tools do): the Maildir, the message, the kept UIDLs and the lock
    belong to it, and the server, which runs as it, serves them."""
    account = _account()
    lab = Lab(public_root / "lab", extra_config=f"cyrus_user: {ACCOUNT}\n").create()
    lab.set_password("carol", USERS["carol"])  # no Maildir yet: deliver makes it
    _chown_tree(lab.root, account.pw_uid, account.pw_gid)
    python, env = _python_for(ACCOUNT)
    admin = [python, "-m", "pop3d.cli.admin", "-C", str(lab.config)]
    run_env = {**os.environ, **env}
    message = b"From: a@example.org\r\nSubject: delivered as root\r\n\r\nbody\r\n"
    done = subprocess.run(
        [*admin, "deliver", "carol"], input=message, env=run_env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    mbox = public_root / "old.mbox"
    mbox.write_bytes(b"From a@example.org Mon Jan  1 00:00:00 2024\nSubject: imported\n\nold\n")
    os.chown(mbox, account.pw_uid, account.pw_gid)
    done = subprocess.run(
        [*admin, "import", "--mbox", str(mbox), "carol"], env=run_env, capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    made = [lab.root / "spool" / "carol", *(lab.root / "spool" / "carol").rglob("*")]
    assert len(made) > 6
    for path in made:
        assert path.lstat().st_uid == account.pw_uid, path
    server = start_server(lab, env=env, python=python)
    try:
        sock, reader, reply = _login(server.port, "carol")
        assert reply.startswith(b"+OK"), reply
        assert command(sock, reader, b"STAT").startswith(b"+OK 2 ")
        for number in (1, 2):
            assert command(sock, reader, b"RETR %d" % number).startswith(b"+OK")
            lines = list(itertools.takewhile(_not_end, iter(reader.readline, b"")))
            assert any(line.startswith(b"Subject: ") for line in lines), lines
        assert command(sock, reader, b"QUIT").startswith(b"+OK")
        sock.close()
    finally:
        assert server.stop() == 0


def _not_end(line: bytes) -> bool:
    return line != b".\r\n"


def test_a_file_the_user_cannot_read_stops_the_master(public_root: Path) -> None:
    account = _account()
    lab = Lab(public_root / "lab", extra_config=f"cyrus_user: {ACCOUNT}\n").create()
    _chown_tree(lab.root, account.pw_uid, account.pw_gid)
    os.chown(lab.credentials, 0, 0)  # mode 0600, owned by root: the account cannot read it
    (lab.root / "cyrus.conf").write_text(
        f'SERVICES {{\n  pop3 cmd="pop3d" listen="127.0.0.1:{free_port()}"\n}}\n'
    )
    python, env = _python_for(ACCOUNT)
    done = _master(lab, python, env)
    assert done.returncode == 78, done.stderr
    assert "Permission denied" in done.stderr and str(lab.credentials) in done.stderr
    assert f"pop3d runs as cyrus_user {ACCOUNT}" in done.stderr


def test_an_interpreter_the_user_cannot_run_stops_the_master_before_it_binds(
    public_root: Path,
) -> None:
    """Found probing: with the virtualenv in root's private home, check-config said
    "configuration OK", and the master, become cyrus_user, logged "cannot start a worker:
    Permission denied" and died with a traceback (exit 70), its pid file left in root's
    folder. Root runs the interpreter here through a folder only root may enter: the
    master says so before it binds or writes anything, exit 78, as check-config does."""
    account = _account()
    lab = Lab(public_root / "lab", extra_config=f"cyrus_user: {ACCOUNT}\n").create()
    _chown_tree(lab.root, account.pw_uid, account.pw_gid)
    python, env = _python_for(ACCOUNT)
    private = public_root / "private"
    private.mkdir(mode=0o700)
    # The interpreter's whole prefix, so a virtualenv is still one (pyvenv.cfg beside bin/)
    (private / "prefix").symlink_to(Path(python).parent.parent)
    interpreter = private / "prefix" / "bin" / Path(python).name
    run = public_root / "run"
    run.mkdir(mode=0o755)
    pidfile = run / "pop3d-master.pid"
    port = free_port()
    (lab.root / "cyrus.conf").write_text(
        f'SERVICES {{\n  pop3 cmd="pop3d" listen="127.0.0.1:{port}" prefork=1\n}}\n'
    )
    done = subprocess.run(
        [str(interpreter), "-m", "pop3d.cli.master", "-C", str(lab.config),
         "-M", str(lab.root / "cyrus.conf"), "-p", str(pidfile)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )  # fmt: skip
    said = f"{lab.config}:{len(lab.config.read_text().splitlines())}: error: cyrus_user "
    said += f"{ACCOUNT} (uid {account.pw_uid}) cannot run the interpreter {interpreter} "
    assert done.returncode == 78, done.stderr
    assert done.stderr.startswith(f"pop3d-master: {said}"), done.stderr
    assert ": Permission denied: the interpreter, its libraries and" in done.stderr
    assert "Traceback" not in done.stderr
    assert not pidfile.exists()
    with pytest.raises(ConnectionRefusedError):  # nothing was bound
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    checked = subprocess.run(
        [str(interpreter), "-m", "pop3d.cli.admin", "-C", str(lab.config), "check-config",
         "-M", str(lab.root / "cyrus.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )  # fmt: skip
    assert checked.returncode == 78, checked.stdout
    assert said in checked.stdout, checked.stdout
    # The same interpreter, reached where the account may: it starts
    public = subprocess.run(
        [python, "-m", "pop3d.cli.admin", "-C", str(lab.config), "check-config",
         "-M", str(lab.root / "cyrus.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )  # fmt: skip
    assert public.returncode == 0, public.stdout


def test_a_package_the_user_cannot_read_stops_the_master(public_root: Path) -> None:
    """The interpreter runs, but the pop3d the master imported is in a folder only root may
    enter: the account would import another release (here the one it can read, which the
    copy's version tells apart), or none. Another copy of the same release would do."""
    account = _account()
    lab = Lab(public_root / "lab", extra_config=f"cyrus_user: {ACCOUNT}\n").create()
    _chown_tree(lab.root, account.pw_uid, account.pw_gid)
    python, env = _python_for(ACCOUNT)
    private = public_root / "private"
    private.mkdir(mode=0o700)
    shutil.copytree(ROOT / "pop3d", private / "pop3d", ignore=shutil.ignore_patterns("__pycache__"))
    init = private / "pop3d" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "0.0.0+private.'))
    path = os.pathsep.join(filter(None, [str(private), env.get("PYTHONPATH", "")]))
    (lab.root / "cyrus.conf").write_text(
        f'SERVICES {{\n  pop3 cmd="pop3d" listen="127.0.0.1:{free_port()}"\n}}\n'
    )
    done = subprocess.run(  # from /: no pop3d in the working folder, first on sys.path
        [python, "-m", "pop3d.cli.master", "-C", str(lab.config),
         "-M", str(lab.root / "cyrus.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env, "PYTHONPATH": path},
        cwd="/",
    )  # fmt: skip
    assert done.returncode == 78, done.stderr
    assert f"cyrus_user {ACCOUNT} (uid {account.pw_uid}) " in done.stderr, done.stderr
    assert f"from {private / 'pop3d'}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_root_without_cyrus_user_refuses_to_serve(lab: Lab) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lab.config.write_text(lab.config.read_text().replace("allow_root: yes\n", ""))
    (lab.root / "cyrus.conf").write_text(
        f'SERVICES {{\n  pop3 cmd="pop3d" listen="127.0.0.1:{free_port()}"\n}}\n'
    )
    done = _master(lab)
    assert done.returncode == 78
    assert "started as root and cyrus_user is not set" in done.stderr
    # pop3d alone (inetd, systemd) says the same
    alone = subprocess.run(lab.pop3d_x(), input=b"QUIT\r\n", capture_output=True, timeout=30)
    assert alone.returncode == 78 and b"cyrus_user is not set" in alone.stderr
    assert alone.stdout == b""  # not a byte to the client


def test_the_pid_file_is_written_as_root_before_the_drop(public_root: Path) -> None:
    """-p in a folder only root may write (/run): written before the master becomes
    cyrus_user, root's, readable by all; left there at exit, since cyrus_user may not
    remove it (pop3d-master(8)). It was written after the drop: a traceback, exit 70."""
    account = _account()
    lab = Lab(public_root / "lab", extra_config=f"cyrus_user: {ACCOUNT}\n").create()
    _chown_tree(lab.root, account.pw_uid, account.pw_gid)
    run = public_root / "run"
    run.mkdir(mode=0o755)
    pidfile = run / "pop3d-master.pid"
    python, env = _python_for(ACCOUNT)
    for _attempt in range(5):  # exit 71: another test took the port free_port() found
        port = free_port()
        (lab.root / "cyrus.conf").write_text(
            f'SERVICES {{\n  pop3 cmd="pop3d" listen="127.0.0.1:{port}" prefork=1\n}}\n'
        )
        master = subprocess.Popen(
            [python, "-m", "pop3d.cli.master", "-C", str(lab.config),
             "-M", str(lab.root / "cyrus.conf"), "-p", str(pidfile)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **env},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            answered = False
            while not answered and master.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    sock, reader = connect(port)
                    with sock:
                        answered = reader.readline().startswith(b"+OK")
                time.sleep(0.05)
            if master.poll() == 71:
                continue
            assert answered, master.poll()
            assert int(pidfile.read_text()) == master.pid
            status = pidfile.stat()
            assert (status.st_uid, status.st_mode & 0o777) == (0, 0o644)
            master.send_signal(signal.SIGTERM)
            assert master.wait(timeout=15) == 0
            break
        finally:
            if master.poll() is None:
                master.kill()
            errors = master.communicate(timeout=15)[1]
    assert b"Traceback" not in errors, errors
    assert pidfile.exists()  # cyrus_user may not remove it from root's folder


def _master(
    lab: Lab, python: str = sys.executable, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [python, "-m", "pop3d.cli.master", "-C", str(lab.config)]
    return subprocess.run(
        [*argv, "-M", str(lab.root / "cyrus.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


# --- maxlogins_* across the workers of the master -----------------------------------------


def _worker_of(sock: socket.socket, server_port: int, workers: list[int]) -> int:
    """Which worker holds the server end of this connection (/proc/net/tcp and fds)."""
    client_port = sock.getsockname()[1]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{server_port:04X}") and fields[2].endswith(
                f":{client_port:04X}"
            ):
                target = f"socket:[{fields[9]}]"
                for pid in workers:
                    with contextlib.suppress(OSError):
                        for fd in Path(f"/proc/{pid}/fd").iterdir():
                            with contextlib.suppress(OSError):
                                if os.readlink(fd) == target:
                                    return pid
        time.sleep(0.05)
    raise AssertionError("connection not found in any worker")


def _one_per_worker(port: int, workers: list[int]) -> dict[int, tuple[socket.socket, object]]:
    """A greeted connection on each worker (the kernel picks the acceptor: keep trying)."""
    found: dict[int, tuple[socket.socket, object]] = {}
    for _ in range(200):
        sock, reader = connect(port)
        assert reader.readline().startswith(b"+OK")
        pid = _worker_of(sock, port, workers)
        if pid in found:
            sock.close()
        else:
            found[pid] = (sock, reader)
        if len(found) == len(workers):
            return found
    raise AssertionError("the connections all went to one worker")


def test_maxlogins_hold_across_workers_and_die_with_a_worker(tmp_path: Path) -> None:
    lab = Lab(
        tmp_path / "lab",
        extra_config="maxlogins_per_host: 2\nmaxlogins_per_user: 1\n",
        users=dict(USERS),
    ).create()
    server = start_server(lab, prefork=2)
    try:
        workers = worker_pids(server)
        (first, (a, a_reader)), (second, (b, b_reader)) = _one_per_worker(
            server.port, workers
        ).items()
        assert first != second
        for sock, reader in ((a, a_reader), (b, b_reader)):
            assert command(sock, reader, b"USER alice").startswith(b"+OK")
        assert command(a, a_reader, b"PASS wonderland").startswith(b"+OK Mailbox locked")
        # alice's second session, on the other worker: the user limit, not the lock
        refused = command(b, b_reader, b"PASS wonderland")
        assert (
            refused
            == b"-ERR [IN-USE] Too many open sessions for alice (1 of 1), try again later\r\n"
        )
        # the connection stays usable: bob logs in on it (host: 2 of 2 now)
        assert command(b, b_reader, b"USER bob").startswith(b"+OK")
        assert command(b, b_reader, b"PASS builder").startswith(b"+OK Mailbox locked")
        c, c_reader, reply = _login(server.port, "carol")
        assert reply == (
            b"-ERR [SYS/TEMP] Too many open sessions from 127.0.0.1 (2 of 2), try again later\r\n"
        )
        # alice QUITs on the first worker: carol (wherever she landed) gets her place
        assert command(a, a_reader, b"QUIT").startswith(b"+OK")
        a.close()
        assert command(c, c_reader, b"USER carol").startswith(b"+OK")
        assert command(c, c_reader, b"PASS singer").startswith(b"+OK Mailbox locked")
        # the worker holding bob is killed: the master forgets bob's login
        holder = _worker_of(b, server.port, workers)
        os.kill(holder, signal.SIGKILL)
        b.close()
        deadline = time.monotonic() + 10
        while True:
            d, _, reply = _login(server.port, "bob")
            if reply.startswith(b"+OK") or time.monotonic() > deadline:
                break
            d.close()
            time.sleep(0.1)
        assert reply.startswith(b"+OK Mailbox locked"), reply
        log = server.log_text()
        assert "maxlogins_per_user 1 reached" in log
        # Good credentials over a limit are refused, not failed passwords fail2ban bans
        # (its cyrus-imap filter wants SASL(-13) on a badlogin: line); found probing.
        over = [line for line in log.splitlines() if "reason=<maxlogins_per_" in line]
        # alice's (user) and carol's (host), and bob's tries before the kill was seen
        assert len(over) >= 2, over
        assert all("result=<refused>" in line and "SASL(" not in line for line in over)
        for sock in (c, d):
            sock.close()
    finally:
        server.stop()


# --- Cyrus's shutdown file --------------------------------------------------------------


def test_shutdown_file_turns_new_connections_away(lab: Lab) -> None:
    server = start_server(lab, prefork=2)
    try:
        already, already_reader = connect(server.port)
        assert already_reader.readline().startswith(b"+OK")
        assert command(already, already_reader, b"USER alice").startswith(b"+OK")
        assert command(already, already_reader, b"PASS wonderland").startswith(b"+OK")
        stat = command(already, already_reader, b"STAT")
        assert command(already, already_reader, b"DELE 1").startswith(b"+OK")
        folder = lab.root / "config" / "msg"
        folder.mkdir()
        # Written whole, then renamed into place: the open session may check the folder
        # at any moment (just after DELE's answer), and an empty file is a shutdown too
        # ("Server is shutting down"), which this test does not expect.
        (folder / "shutdown.new").write_text("[ALERT] Down for maintenance until 10:00\nmore\n")
        (folder / "shutdown.new").rename(folder / "shutdown")
        for _ in range(4):  # whichever worker takes it
            sock, reader = connect(server.port)
            assert reader.read() == b"-ERR [SYS/TEMP] ALERT] Down for maintenance until 10:00\r\n"
            sock.close()
        # a session already open ends at its next command, as in Cyrus (pop3d.c cmdloop
        # checks before each read, so a command already waiting is still answered; here
        # the check after DELE's answer may also have come after the file appeared), and
        # without UPDATE: its DELE is not carried out. When the server ends it before the
        # NOOP arrives, its close lingers (server/channel.py): the NOOP is dropped, not
        # answered with a reset that would take the answer with it.
        already.sendall(b"NOOP\r\n")
        told = b"-ERR [SYS/TEMP] ALERT] Down for maintenance until 10:00\r\n"
        assert already_reader.read() in (told, b"+OK\r\n" + told)
        already.close()
        (folder / "shutdown").unlink()
        (folder / "shutdown.pop3").write_text("pop3 only\n")
        sock, reader = connect(server.port)
        assert reader.read() == b"-ERR [SYS/TEMP] pop3 only\r\n"
        (folder / "shutdown.pop3").unlink()
        sock, reader = connect(server.port)
        assert reader.readline().startswith(b"+OK")
        assert command(sock, reader, b"USER alice").startswith(b"+OK")
        assert command(sock, reader, b"PASS wonderland").startswith(b"+OK")
        assert command(sock, reader, b"STAT") == stat  # nothing was deleted
        sock.close()
        assert "shutdown file present" in server.log_text()
    finally:
        server.stop()


def test_shutdown_file_under_x(lab: Lab) -> None:
    folder = lab.root / "config" / "msg"
    folder.mkdir()
    (folder / "shutdown").write_text("Back soon\n")
    done = subprocess.run(lab.pop3d_x(), input=b"CAPA\r\n", capture_output=True, timeout=30)
    assert done.stdout == b"-ERR [SYS/TEMP] Back soon\r\n"


@pytest.mark.parametrize("first_line", ["x" * 600, "x" + "\u00e9" * 300])
def test_a_long_shutdown_message_is_cut_to_a_response_line(lab: Lab, first_line: str) -> None:
    """RFC 2449 §4: 512 octets at most, CRLF included (a 600-character first line made a
    530-octet answer, found probing); cut between two UTF-8 characters."""
    folder = lab.root / "config" / "msg"
    folder.mkdir()
    (folder / "shutdown").write_text(first_line + "\n")
    done = subprocess.run(lab.pop3d_x(), input=b"CAPA\r\n", capture_output=True, timeout=30)
    answer = done.stdout
    assert answer.startswith(b"-ERR [SYS/TEMP] ") and answer.endswith(b"\r\n"), answer
    assert 500 <= len(answer) <= 512, len(answer)
    assert answer[16:-2].decode("utf-8") in first_line


def test_shutdown_file_under_x_with_implicit_tls_is_a_close(tls_lab: Lab) -> None:
    """Under -X -s the client speaks TLS first: an -ERR in clear where its ServerHello
    belongs read as a handshake failure. The close alone, as on a pop3s listener."""
    folder = tls_lab.root / "config" / "msg"
    folder.mkdir()
    (folder / "shutdown").write_text("Back soon\n")
    done = subprocess.run(tls_lab.pop3d_x("-s"), input=b"", capture_output=True, timeout=30)
    assert done.stdout == b""
    assert b"shutdown file present" in done.stderr


def test_a_fifo_as_shutdown_file_is_a_shutdown_not_a_hang(lab: Lab) -> None:
    """A FIFO under a shutdown file's name blocked the worker in open(): every connection
    of the service hung until SIGTERM. It is now a shutdown file that cannot be read:
    the default message and a warning; its removal ends it."""
    folder = lab.root / "config" / "msg"
    folder.mkdir()
    os.mkfifo(folder / "shutdown")
    server = start_server(lab)
    try:
        for _ in range(2):
            sock, reader = connect(server.port)  # 10 s timeout on every read
            assert reader.read() == b"-ERR [SYS/TEMP] Server is shutting down\r\n"
            sock.close()
        assert "shutdown file" in server.log_text() and "not a regular file" in server.log_text()
        (folder / "shutdown").unlink()
        sock, reader = connect(server.port)
        assert reader.readline().startswith(b"+OK")
        sock.close()
    finally:
        server.stop()
    os.mkfifo(folder / "shutdown.pop3")
    done = subprocess.run(lab.pop3d_x(), input=b"CAPA\r\n", capture_output=True, timeout=30)
    assert done.stdout == b"-ERR [SYS/TEMP] Server is shutting down\r\n"


# --- systemd socket activation ------------------------------------------------------------


def test_socket_activation_serves_pop3_and_pop3s(tmp_path: Path) -> None:
    if shutil.which("systemd-socket-activate") is None:
        pytest.skip("systemd-socket-activate (Debian systemd) is not installed")
    lab = Lab(tmp_path / "lab", extra_config="maxlogins_per_user: 1\n").create(with_tls=True)
    assert lab.tls is not None
    pop3, pop3s = free_port(), free_port()
    process = subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{pop3}", "-l", f"127.0.0.1:{pop3s}",
         "--fdname=pop3:pop3s", "-E", f"PYTHONPATH={ROOT}",
         sys.executable, "-m", "pop3d", "-C", str(lab.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:  # systemd-socket-activate binds, then waits for the first connection
            try:
                sock, reader = connect(pop3)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.05)
        assert reader.readline().startswith(b"+OK")
        assert command(sock, reader, b"USER alice").startswith(b"+OK")
        assert command(sock, reader, b"PASS wonderland").startswith(b"+OK Mailbox locked")
        # pop3s: TLS from the first byte, on the other socket of the same process
        context = ssl.create_default_context(cafile=str(lab.tls.ca))
        with (
            socket.create_connection(("127.0.0.1", pop3s), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls_reader = tls.makefile("rb")
            assert tls_reader.readline().startswith(b"+OK")
            assert command(tls, tls_reader, b"USER alice").startswith(b"+OK")  # type: ignore[arg-type]
            refused = command(tls, tls_reader, b"PASS wonderland")  # type: ignore[arg-type]
            # limits count per service, as in Cyrus: on pop3s the maildrop lock answers
            assert refused.startswith(b"-ERR [IN-USE] Maildrop is locked"), refused
        # a second pop3 session of alice: the limit, counted in this process
        other, other_reader = connect(pop3)
        assert other_reader.readline().startswith(b"+OK")
        assert command(other, other_reader, b"USER alice").startswith(b"+OK")
        assert command(other, other_reader, b"PASS wonderland").startswith(
            b"-ERR [IN-USE] Too many open sessions for alice (1 of 1)"
        )
        other.close()
        sock.close()
        # one process served both sockets: systemd-socket-activate exec'd pop3d itself
        with open(f"/proc/{process.pid}/cmdline", "rb") as handle:
            assert b"pop3d" in handle.read()
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=20)
    assert process.returncode == 0, out
    assert b"socket activation: service pop3s" in out, out


def test_shutdown_file_looked_for_once_per_turn_of_the_loop(lab: Lab) -> None:
    """The checks made in one turn of a worker's event loop share one look at msg/; the
    next turn looks again, so a file is seen by every session that begins to wait after
    the turn in which it appeared."""
    context = ServiceContext(load(lab.config), RuntimeOptions())
    folder = lab.root / "config" / "msg"
    folder.mkdir()

    async def turns() -> list[bytes | None]:
        seen = [context.shutdown_message()]
        (folder / "shutdown").write_text("maintenance\n")
        seen.append(context.shutdown_message())  # the same turn: the look it made
        await asyncio.sleep(0)
        seen.append(context.shutdown_message())  # the next turn looks again
        (folder / "shutdown").unlink()
        await asyncio.sleep(0)
        seen.append(context.shutdown_message())
        return seen

    try:
        answer = b"-ERR [SYS/TEMP] maintenance\r\n"
        assert asyncio.run(turns()) == [None, None, answer, None]
        # outside an event loop every call looks
        (folder / "shutdown").write_text("maintenance\n")
        assert context.shutdown_message() == answer
    finally:
        context.close()


def test_shutdown_file_seen_however_msg_changes(lab: Lab) -> None:
    """shutdown_message() remembers a msg/ without a shutdown file (one stat a connection
    instead of two opens) and must still see every way one appears."""
    context = ServiceContext(load(lab.config), RuntimeOptions())
    try:
        folder = lab.root / "config" / "msg"
        assert context.shutdown_message() is None  # no msg/ at all
        folder.mkdir()
        old = time.time() - 60
        os.utime(folder, (old, old))  # settled: this state is remembered
        assert context.shutdown_message() is None
        assert context.shutdown_message() is None
        (folder / "shutdown").write_text("one\n")  # changes msg/'s mtime
        assert context.shutdown_message() == b"-ERR [SYS/TEMP] one\r\n"
        (folder / "shutdown").unlink()
        os.utime(folder, (old, old))
        assert context.shutdown_message() is None
        # a dangling link is an entry: never remembered as "none", so the file it names
        # counts as soon as it exists, though msg/ itself does not change
        target = lab.root / "later"
        (folder / "shutdown.pop3").symlink_to(target)
        os.utime(folder, (old, old), follow_symlinks=True)
        assert context.shutdown_message() is None
        target.write_text("two\n")
        assert context.shutdown_message() == b"-ERR [SYS/TEMP] two\r\n"
        # a folder changed in the last seconds is checked every time
        (folder / "shutdown.pop3").unlink()
        (folder / "shutdown").write_text("three\n")
        (folder / "shutdown").unlink()
        assert context.shutdown_message() is None
        (folder / "shutdown").write_text("four\n")
        assert context.shutdown_message() == b"-ERR [SYS/TEMP] four\r\n"
    finally:
        context.close()


def test_check_config_as_root_reads_the_files_as_cyrus_user(public_root: Path) -> None:
    """Found probing: run as root, check-config read the files as root, so a TLS key only
    root can read was "configuration OK", and the master (whose workers load it as
    cyrus_user) then refused to start, exit 78. It checks them as cyrus_user now."""
    account = _account()
    lab = Lab(public_root / "lab", extra_config=f"cyrus_user: {ACCOUNT}\n").create(with_tls=True)
    _chown_tree(lab.root, account.pw_uid, account.pw_gid)
    cyrus_conf = lab.root / "cyrus.conf"
    cyrus_conf.write_text('SERVICES {\n  pop3 cmd="pop3d" listen="127.0.0.1:1110"\n}\n')
    python, env = _python_for(ACCOUNT)  # one the account can run: check-config checks it
    command = [python, "-m", "pop3d.cli.admin", "-C", str(lab.config)]
    command += ["check-config", "-M", str(cyrus_conf)]
    run_env = {**os.environ, **env}
    clean = subprocess.run(command, capture_output=True, timeout=60, check=False, env=run_env)
    assert (clean.returncode, clean.stdout.strip()) == (0, b"configuration OK"), clean
    assert lab.tls is not None
    os.chown(lab.tls.key, 0, 0)  # root's alone (mode 0600): the account cannot read it
    refused = subprocess.run(command, capture_output=True, timeout=60, check=False, env=run_env)
    assert refused.returncode == 78, refused
    assert f"cannot read {lab.tls.key}: Permission denied".encode() in refused.stdout


def test_check_config_as_root_makes_no_file_the_master_cannot_read(public_root: Path) -> None:
    """Found probing: as root with cyrus_user set, check-config built each service as root,
    which made the server secret (and maildrop_lock: table's files) root's, mode 0600; the
    master, which checks as cyrus_user, could not read them and exited 78, and contrib's
    unit, running check-config before the master, never came up. Built as cyrus_user now:
    what it makes is that account's, and the master starts."""
    account = _account()
    extra = f"cyrus_user: {ACCOUNT}\nmaildrop_lock: table\n"
    lab = Lab(public_root / "lab", extra_config=extra).create()
    secret, table = lab.root / "config" / "pop3d.secret", lab.root / "config" / "lock"
    secret.unlink(missing_ok=True)
    shutil.rmtree(table, ignore_errors=True)
    _chown_tree(lab.root, account.pw_uid, account.pw_gid)
    before = set(lab.root.rglob("*"))
    cyrus_conf = lab.root / "cyrus.conf"
    cyrus_conf.write_text(f'SERVICES {{\n  pop3 cmd="pop3d" listen="127.0.0.1:{free_port()}"\n}}\n')
    python, env = _python_for(ACCOUNT)  # one the account can run: check-config checks it
    command_line = [python, "-m", "pop3d.cli.admin", "-C", str(lab.config)]
    checked = subprocess.run(
        [*command_line, "check-config", "-M", str(cyrus_conf)],
        capture_output=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert (checked.returncode, checked.stdout.strip()) == (0, b"configuration OK"), checked
    made = set(lab.root.rglob("*")) - before - {cyrus_conf}
    assert secret in made and table in made, made
    assert {path: path.stat().st_uid for path in made} == dict.fromkeys(made, account.pw_uid)
    server = start_server(lab, env=env, python=python)
    try:
        sock, reader, reply = _login(server.port, "alice")
        assert reply.startswith(b"+OK"), reply
        assert command(sock, reader, b"QUIT").startswith(b"+OK")
        sock.close()
    finally:
        assert server.stop() == 0
