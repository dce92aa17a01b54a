"""``pop3d-master``: binds every listener of the cyrus.conf SERVICES section and keeps
worker processes serving them (Cyrus master(8) in spirit; see DESIGN.md for the model).

Per service: ``prefork`` workers, each an asyncio loop serving many connections (without
``prefork``, or ``prefork=0``, Cyrus's default: one per core the master may run on);
``maxchild`` caps that service's simultaneous sessions, split evenly across its workers.

At start the master raises its soft file-descriptor limit to the hard limit (the workers
inherit it) and logs how many connections that permits per worker (server/fdlimit.py).

The master binds the sockets itself (so workers never need privileges to bind) and hands
them down by file descriptor with ``CYRUS_SERVICE``, ``CYRUS_ID`` and
``POP3D_LISTEN_FDS`` in the environment.

Before any worker starts, the master builds each service's context once, the way a worker
will: a bad option, a missing certificate or a group-readable credential file stops
the master with exit 78 and a file:line message instead of a crash loop.

SIGTERM/SIGINT/SIGQUIT (Cyrus's master stops on each): workers are told to stop (they
close idle sessions at once and let busy ones finish); whatever is left after 9.5 s is
killed; the master exits 0 within 10 s. SIGUSR1, SIGUSR2 (the workers' own) and the
other signals whose default action would end it (worker.IGNORED_SIGNALS) are logged and
ignored.
SIGHUP reloads (server/reload.py): the configuration re-read and checked, fresh workers
for a changed one, the certificates re-read for an unchanged one, nothing for a broken one;
one that comes while the master or a worker is starting is held until its handler is in
place (worker.hold_hangup).

A worker that dies is replaced after a pause that grows per service: 0.25 s after the
first death, doubling with each further one, at most 30 s; a worker that lived 10 s or more
before it died starts the count again (an OOM kill of a long-lived worker is not a crash
loop). A worker that exits 64 or 78 (its command line or configuration became unusable
after the master checked them) waits the longest pause at once. The master never exits
because workers die: the other services keep serving while one is backed off, and the
backed-off one comes back when its cause goes away.

Recycling (``-U``/``-T``): a worker that retires says so on its status pipe (one per
worker, ``POP3D_STATUS_FD``, as Cyrus's services report to their master) and is replaced at
once, not after the crash pause; it then finishes its sessions and exits 0 on its own. A
retiring worker still gets SIGHUP and SIGTERM.

Metrics (``prometheus_enabled``): the master makes a private directory for the workers'
counters (server/metrics.py), serves ``/metrics`` on ``prometheus_listen`` from a thread
(server/metrics_http.py: each connection closed after a few seconds), adds its own figures
(workers by state, workers that died), and removes the directory when it stops.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pop3d.config.cyrus import Listen, MasterConfig, Service, available_cores
from pop3d.config.imapd import Config
from pop3d.server import fdlimit, limits, metrics
from pop3d.server.limits import LIMITS_FD_ENV
from pop3d.server.reload import Loaded, ReloadRefused
from pop3d.server.worker import (
    HELD_AT_START,
    IGNORED_SIGNALS,
    RETIRE_SIGNAL,
    RETIRING,
    STATUS_FD_ENV,
    STOP_SIGNALS,
    release_hangup,
    signal_name,
)

log = logging.getLogger("pop3d.master")

STOP_DEADLINE = 9.5
# Replaced workers still finishing their sessions a reload allows, per worker serving.
RETIRING_PER_WORKER = 2
FATAL_EXITS = frozenset({64, 78})


@dataclass
class Backoff:
    """How long a service waits before replacing a worker that died."""

    first: float = 0.25
    cap: float = 30.0
    stable_after: float = 10.0  # a worker that lived this long resets the count
    failures: int = 0

    def after_death(self, lived: float, fatal: bool = False) -> float:
        if lived >= self.stable_after:
            self.failures = 0
        self.failures += 1
        if fatal:
            return self.cap
        return min(self.cap, self.first * 2.0 ** min(self.failures - 1, 32))


class ListenError(OSError):
    """A service's listening socket could not be made; the message names the service, its
    cyrus.conf line and the address."""


def _replace_stale_socket(path: Path) -> None:
    """Remove a unix socket nobody listens on (a master that was killed left it); one a
    server still answers on is another master's: OSError (EADDRINUSE), exit 71. It was
    unlinked and taken over, and whichever master stopped first removed the other's path
    (found probing)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # refused: nobody there
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another server is listening on {path}")


def addresses(listen: Listen) -> list[tuple[int, tuple[Any, ...]]]:
    """Every (family, address) a TCP ``listen`` stands for, as Cyrus's master resolves it:
    a port alone every address of each family the service's proto allows, a name each
    address it resolves to (raises socket.gaierror if none)."""
    found = socket.getaddrinfo(
        listen.host or None, listen.port, listen.family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    unique: dict[tuple[int, tuple[Any, ...]], None] = {}
    for family, _type, _proto, _name, address in found:
        unique[(family, address)] = None
    return list(unique)


# What says an address is not this host's to bind (IPv6 turned off, a name's address on
# no interface); skipped when another address of the service binds, as Cyrus's master
# skips them. Anything else (the port taken, not permitted) stops the master.
_NOT_HERE = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL})


def bind(service: Service) -> list[socket.socket]:
    """The service's listening sockets: one for a unix socket, one per address of a TCP
    ``listen`` (raises OSError, socket.gaierror for a name that resolves to nothing)."""
    if service.listen.family == socket.AF_UNIX:
        return [_bind_unix(service.listen.host)]
    return bind_each(service, addresses(service.listen))


def bind_each(service: Service, found: list[tuple[int, tuple[Any, ...]]]) -> list[socket.socket]:
    bound: list[socket.socket] = []
    skipped: list[OSError] = []
    try:
        for family, address in found:
            try:
                bound.append(_bind_tcp(family, address))
            except OSError as exc:
                if exc.errno not in _NOT_HERE:
                    raise
                skipped.append(exc)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    if not bound:
        raise skipped[0]
    for problem in skipped:
        log.warning(
            "service %s: not listening on an address of %s: %s",
            service.name,
            service.listen,
            problem,
        )
    return bound


def _bind_tcp(family: int, address: tuple[Any, ...]) -> socket.socket:
    def bind_it(sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # each family its own socket, as Cyrus binds them
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)

    return _listening_socket(family, bind_it)


def _bind_unix(where: str) -> socket.socket:
    def bind_it(sock: socket.socket) -> None:
        path = Path(where)
        if path.is_socket():
            _replace_stale_socket(path)
        # Any local user may connect, as to a TCP port: Cyrus binds with umask 0 too
        # (under root's umask only root could connect; found probing)
        umask = os.umask(0)
        try:
            sock.bind(where)
        finally:
            os.umask(umask)

    return _listening_socket(socket.AF_UNIX, bind_it)


def _listening_socket(family: int, bind_it: Callable[[socket.socket], None]) -> socket.socket:
    """A socket of ``family`` bound by ``bind_it``, listening, passed on to the workers;
    closed if any of it fails."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        bind_it(sock)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _listening(
    service: Service, held: dict[tuple[object, ...], socket.socket]
) -> tuple[list[socket.socket], bool]:
    """A reload's sockets for ``service``: those in ``held`` where it listens (taken out of
    it: one socket serves one service), or new ones (True). ReloadRefused if it cannot."""
    wanted = _wanted_at(service)
    if wanted and all(at in held for at in wanted):
        return [held.pop(at) for at in wanted], False
    try:
        return bind(service), True
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            why += " (a service listens there under the configuration in effect, or another"
            why += " server does; the master's own addresses change at a restart)"
        raise ReloadRefused(
            [
                f"{service.path}:{service.line}: service {service.name} cannot listen "
                f"on {service.listen}: {why}"
            ]
        ) from None


def _bound_at(sock: socket.socket) -> tuple[object, ...]:
    """Where a listening socket is bound, as :func:`_wanted_at` names it."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return (socket.AF_UNIX, os.path.normpath(str(name)))
    return (int(sock.family), name[0], name[1])


def _wanted_at(service: Service) -> list[tuple[object, ...]]:
    """Where ``service`` would listen; [] if its name does not resolve (bind says why)."""
    listen = service.listen
    if listen.family == socket.AF_UNIX:
        return [(socket.AF_UNIX, os.path.normpath(listen.host))]
    try:
        found = addresses(listen)
    except OSError:
        return []
    return [(int(family), address[0], address[1]) for family, address in found]


def where(sockets: list[socket.socket]) -> str:
    """The addresses a service's sockets listen on, for the log: the port taken where
    cyrus.conf said 0 or a name, each family's address."""
    shown = []
    for sock in sockets:
        name = sock.getsockname()
        if sock.family == socket.AF_UNIX:
            shown.append(str(name))
        elif sock.family == socket.AF_INET6:
            shown.append(f"[{name[0]}]:{name[1]}")
        else:
            shown.append(f"{name[0]}:{name[1]}")
    return ", ".join(shown)


@dataclass
class _Slot:
    service: Service
    index: int
    process: subprocess.Popen[bytes] | None = None
    status: int | None = None  # our end of the worker's status pipe
    started: float = 0.0
    restart_at: float = 0.0


class Master:
    def __init__(
        self,
        imapd_conf: str,
        cyrus: MasterConfig,
        config: Config,
    ) -> None:
        self.imapd_conf = imapd_conf
        self.cyrus = cyrus
        self.config = config
        # SIGHUP: ``check`` re-reads and checks the configuration (raises ReloadRefused),
        # ``loaded`` is the one in effect (server/reload.py; the command sets both).
        # Without them a SIGHUP only has the workers re-read their certificates.
        self.check: Callable[[], Loaded] | None = None
        self.loaded: Loaded | None = None
        self.sockets: dict[str, list[socket.socket]] = {}
        self.slots: list[_Slot] = []
        self.backoff: dict[str, Backoff] = {s.name: Backoff() for s in cyrus.services}
        self.retiring: list[subprocess.Popen[bytes]] = []
        self._retired_status: dict[int, int] = {}  # pid -> status pipe, retired by a reload
        self._stop = False
        self._stopped_by: int | None = None  # the signal, for the log
        self._reload = False
        self._strays: set[int] = set()  # RETIRE_SIGNAL, IGNORED_SIGNALS: logged in run()
        self.exit_code = 0
        # maxlogins_per_host/_per_user: one table for all workers (server/limits.py)
        self.logins = limits.LoginTable()
        self.selector = selectors.DefaultSelector()
        # Metrics: the workers' directory, the endpoint, and the master's own counts.
        self.metrics_dir: str | None = None
        self.metrics_address: tuple[str, int] | None = None
        self._metrics_server: Any = None
        self._metrics_lock = threading.Lock()  # scrapes against folding a dead worker
        self.worker_deaths: collections.Counter[str] = collections.Counter()

    def bind_all(self) -> None:
        """Raises :class:`ListenError` naming the service that could not bind."""
        for service in self.cyrus.services:
            try:
                self.sockets[service.name] = bind(service)
            except OSError as exc:  # socket.gaierror included: a name that resolves to nothing
                raise ListenError(
                    f"{service.path}:{service.line}: service {service.name} cannot listen "
                    f"on {service.listen}: {exc.strerror or exc}"
                ) from exc

    def _argv(self, service: Service) -> list[str]:
        args = list(service.argv[1:])
        if "-C" not in args:
            args = ["-C", self.imapd_conf, *args]
        return [sys.executable, "-m", "pop3d", *args]

    def workers_of(self, service: Service) -> int:
        """``prefork``, or where cyrus.conf leaves it out (or says 0, Cyrus's default):
        one worker per core this process may run on, and no more than ``maxchild``."""
        if service.prefork > 0:
            return service.prefork  # the configuration has kept it within maxchild
        cores = available_cores()
        return min(cores, service.maxchild) if service.maxchild > 0 else cores

    def maxchild_per_worker(self, service: Service) -> int:
        """The worker's share of ``maxchild`` (-1: no limit)."""
        if service.maxchild <= 0:
            return -1
        return -(-service.maxchild // self.workers_of(service))

    def raise_fd_limit(self) -> fdlimit.Limit:
        """Raise the soft RLIMIT_NOFILE to the hard limit (the workers inherit it) and log
        what it permits; warn where a service's maxchild share cannot be held."""
        limit = fdlimit.raise_soft_limit(self.config.string("maildrop_lock") != "table")
        log.info("%s", limit.describe())
        for service in self.cyrus.services:
            share = self.maxchild_per_worker(service)
            if share > limit.logged_in_idle:
                log.warning(
                    "service %s: %s sessions per worker (maxchild %s over %d workers), but "
                    "the file-descriptor limit %d permits %d logged-in sessions per worker; "
                    "raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower maxchild",
                    service.name,
                    share,
                    service.maxchild,
                    self.workers_of(service),
                    limit.soft,
                    limit.logged_in_idle,
                )
        return limit

    def _spawn(self, slot: _Slot) -> None:
        service = slot.service
        per_worker = self.maxchild_per_worker(service)
        sockets = self.sockets[service.name]
        status_read, status_write = os.pipe()
        os.set_blocking(status_read, False)
        try:
            limits_ours, limits_theirs = limits.pair()
        except OSError:  # out of descriptors: the pipe must not leak at each retry
            os.close(status_read)
            os.close(status_write)
            raise
        env = dict(
            os.environ,
            CYRUS_SERVICE=service.name,
            CYRUS_ID=str(slot.index),
            POP3D_LISTEN_FDS=",".join(str(sock.fileno()) for sock in sockets),
            POP3D_MAXCHILD=str(per_worker),
            **{STATUS_FD_ENV: str(status_write), LIMITS_FD_ENV: str(limits_theirs.fileno())},
        )
        env.pop(metrics.ENV, None)  # one from our own environment is not ours to fill
        if self.metrics_dir is not None:
            env[metrics.ENV] = self.metrics_dir
        # The worker starts with SIGHUP, RETIRE_SIGNAL and IGNORED_SIGNALS held
        # (worker.hold_hangup): our handlers do not survive exec, and the default action
        # killed workers importing.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_AT_START)
        try:
            slot.process = subprocess.Popen(
                self._argv(service),
                pass_fds=(
                    *(sock.fileno() for sock in sockets),
                    status_write,
                    limits_theirs.fileno(),
                ),
                env=env,
            )
        except BaseException:
            os.close(status_read)
            limits_ours.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(status_write)
            limits_theirs.close()
        # Kept until the worker's end closes (it exits), retiring or not: see _limits_io.
        limits_ours.setblocking(False)
        self.selector.register(limits_ours, selectors.EVENT_READ)
        slot.status = status_read
        slot.started = time.monotonic()
        log.info(
            "service %s worker %d started (pid %d)", service.name, slot.index, slot.process.pid
        )

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        elif signum in STOP_SIGNALS:
            self._stop = True
            self._stopped_by = self._stopped_by or signum
        else:
            # RETIRE_SIGNAL is the master's word to its workers, not to itself: sent to
            # the master (a `pkill -USR2 pop3d`) its default action ended it, every service
            # down (found probing); SIGUSR1 and the others did the same. Noted in the loop:
            # no logging inside a handler.
            self._strays.add(signum)

    def catch_signals(self) -> None:
        """From here a SIGTERM, SIGINT or SIGQUIT is a clean stop (exit 0, the pid file
        removed), not the signal's default death, and IGNORED_SIGNALS are logged and
        ignored: main() calls this before it writes the pid file, so an init system that
        stops the master as soon as the file names it gets the clean stop (seen in CI:
        under load a SIGTERM sent then killed the master, -15), and no signal leaves the
        file naming a master that died without a word."""
        for signum in STOP_SIGNALS | {signal.SIGHUP, RETIRE_SIGNAL} | IGNORED_SIGNALS:
            signal.signal(signum, self._on_signal)

    def run(self) -> int:
        self.catch_signals()
        release_hangup()  # held since main(): a reload asked meanwhile is passed on now
        self.raise_fd_limit()
        for service in self.cyrus.services:
            # Said here, not at bind time: a start-up check after the bind (a keytab, a
            # file cyrus_user cannot read) may still refuse to start, and the log should
            # not say a service listens that never served; with -d it also reaches syslog.
            if self._stop or not self._start_service(service, at_start=True):
                break  # (stopped before the services started: catch_signals)
        while not self._stop:
            if self._reload:
                self._reload = False
                self._reload_now()
            strays, self._strays = self._strays, set()
            for signum in sorted(strays):
                if signum == RETIRE_SIGNAL:
                    log.warning("%s is for workers; the master ignores it", RETIRE_SIGNAL.name)
                else:
                    log.warning("%s ignored: it means nothing to pop3d-master", signal_name(signum))
            self._reap()
            self._limits_io(0.1)
        self._shutdown()
        return self.exit_code

    def _start_service(self, service: Service, *, at_start: bool) -> bool:
        """Start the service's workers; False if one could not start at start-up (the
        master then stops, exit 71). After a reload such a worker is tried again later."""
        log.info("service %s listening on %s", service.name, where(self.sockets[service.name]))
        workers = self.workers_of(service)
        if service.prefork <= 0:
            log.info(
                "service %s: %d workers (one per core available%s; cyrus.conf sets no prefork)",
                service.name,
                workers,
                f", no more than maxchild={service.maxchild}"
                if workers < available_cores()
                else "",
            )
        for index in range(workers):
            slot = _Slot(service, index)
            self.slots.append(slot)
            if not at_start:
                self._respawn(slot, time.monotonic())
                continue
            try:
                self._spawn(slot)
            except OSError as exc:  # e.g. cyrus_user cannot run the interpreter
                log.error(
                    "service %s: cannot start a worker: %s (the interpreter and the "
                    "pop3d package must be readable by the user pop3d runs as, uid %d)",
                    service.name,
                    exc,
                    os.getuid(),
                )
                self._stop = True
                self.exit_code = 71  # EX_OSERR
                return False
        return True

    def _reload_now(self) -> None:
        """SIGHUP (server/reload.py): a changed configuration that checks out replaces the
        workers; otherwise the workers re-read their certificates and the configuration in
        effect stays."""
        if self.check is None or self.loaded is None:
            self._signal_all(signal.SIGHUP)
            self._restart_waiting_now()
            return
        try:
            fresh = self.check()
            if fresh.same_as(self.loaded):
                log.info("reload: configuration unchanged; workers re-read their certificates")
                self._signal_all(signal.SIGHUP)
                self._restart_waiting_now()
                return
            self.loaded.refuse_restart_only(fresh)
            self._refuse_if_retiring_too_many()
            sockets = self._sockets_for(fresh.cyrus)
        except ReloadRefused as exc:
            for problem in exc.problems:
                log.error("reload refused, serving on as before: %s", problem)
            self._signal_all(signal.SIGHUP)  # a renewed certificate is still taken
            return
        except Exception as exc:  # a check failing in a way no start-up check foresaw
            log.error("reload failed, serving on as before: %s: %s", type(exc).__name__, exc)
            return
        self._replace_workers(fresh, sockets)

    def _refuse_if_retiring_too_many(self) -> None:
        """Each changed reload leaves the workers it replaced until their last session ends
        (poptimeout for an idle one): reloads in a row stacked processes, 27 and 727 MB
        after ten (found probing). Past twice the workers serving, a reload waits."""
        most = RETIRING_PER_WORKER * max(len(self.slots), 1)
        if len(self.retiring) >= most:
            raise ReloadRefused(
                [
                    f"{len(self.retiring)} replaced workers are still finishing their sessions "
                    f"(at most {most}); reload again once fewer are"
                ]
            )

    def _sockets_for(self, cyrus: MasterConfig) -> dict[str, list[socket.socket]]:
        """Each service's sockets under ``cyrus``: those the master holds where the service
        listens (the same addresses however cyrus.conf spells them: "localhost:110" for
        "127.0.0.1:110", a service renamed), else bound now (as cyrus_user: a port below
        1024 cannot be, and the reload is refused, naming it). All or nothing."""
        held = {_bound_at(sock): sock for group in self.sockets.values() for sock in group}
        sockets: dict[str, list[socket.socket]] = {}
        made: list[socket.socket] = []
        try:
            for service in cyrus.services:
                found, new = _listening(service, held)
                sockets[service.name] = found
                if new:
                    made += found
        except BaseException:
            for sock in made:
                sock.close()
            raise
        return sockets

    def _replace_workers(self, fresh: Loaded, sockets: dict[str, list[socket.socket]]) -> None:
        """Every worker retires (RETIRE_SIGNAL: it stops accepting and lets its sessions
        end as they would), fresh workers start on the new configuration, and what no
        service listens on any more is closed."""
        log.info("reload: configuration changed; replacing %d workers", len(self.slots))
        for slot in self.slots:
            if slot.process is None:
                continue
            slot.process.send_signal(RETIRE_SIGNAL)
            self.retiring.append(slot.process)
            # Left open until it exits (its RETIRING goes unread): closed now, the worker
            # would take it for its master's death.
            if slot.status is not None:
                self._retired_status[slot.process.pid] = slot.status
                slot.status = None
        kept = {id(sock) for group in sockets.values() for sock in group}
        for name, group in self.sockets.items():
            for sock in group:
                if id(sock) not in kept:
                    log.info("service %s: no longer listening on %s", name, where([sock]))
                    sock.close()
        paths = {
            os.path.normpath(s.listen.host)
            for s in fresh.cyrus.services
            if s.listen.family == socket.AF_UNIX
        }
        for service in self.cyrus.services:
            if (
                service.listen.family == socket.AF_UNIX
                and os.path.normpath(service.listen.host) not in paths
            ):
                with contextlib.suppress(OSError):
                    Path(service.listen.host).unlink(missing_ok=True)
        self.cyrus, self.config, self.loaded = fresh.cyrus, fresh.config, fresh
        self.sockets = sockets
        self.slots = []
        self.backoff = {s.name: Backoff() for s in fresh.cyrus.services}
        self.raise_fd_limit()
        for service in fresh.cyrus.services:
            self._start_service(service, at_start=False)

    def _restart_waiting_now(self) -> None:
        """SIGHUP: a worker waiting out its restart pause is started now. Found probing:
        a configuration or certificate broken after start made every replacement exit 78
        and wait 30 s, clients hanging meanwhile, and fixing the file and asking for a
        reload changed nothing until the pause ended (Cyrus's master re-reads on SIGHUP).
        A worker that fails again waits again: the operator's reload, not a crash loop."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.process is None and slot.restart_at > now:
                log.info(
                    "service %s: reload: starting worker %d now, not in %.1f s",
                    slot.service.name,
                    slot.index,
                    slot.restart_at - now,
                )
                slot.restart_at = now
                self.backoff[slot.service.name].failures = 0

    def _limits_io(self, timeout: float) -> None:
        """Answer the workers' login claims for up to ``timeout`` seconds (the loop's
        pause); a worker that exited has its logins forgotten."""
        ready = [key.fileobj for key, _events in self.selector.select(timeout)]
        channels = [channel for channel in ready if isinstance(channel, socket.socket)]
        for channel in limits.answer(self.logins, channels):
            self.selector.unregister(channel)
            channel.close()

    def _reap(self) -> None:
        now = time.monotonic()
        for retired in list(self.retiring):
            code = retired.poll()
            if code is not None:
                self.retiring.remove(retired)
                if (status := self._retired_status.pop(retired.pid, None)) is not None:
                    os.close(status)
                self._worker_gone(retired.pid)
                log.log(
                    logging.INFO if code == 0 else logging.WARNING,
                    "retired worker (pid %d) exited with %s",
                    retired.pid,
                    code,
                )
        for slot in self.slots:
            process = slot.process
            if process is None:
                if slot.restart_at and now >= slot.restart_at:
                    slot.restart_at = 0.0
                    self._respawn(slot, now)
                continue
            if self._retires(slot):
                log.info(
                    "service %s worker %d (pid %d) retires; starting its successor",
                    slot.service.name,
                    slot.index,
                    process.pid,
                )
                self._close_status(slot)
                self.retiring.append(process)
                slot.process = None
                self._respawn(slot, now)
                continue
            code = process.poll()
            if code is None:
                continue
            self._close_status(slot)
            slot.process = None
            self._worker_gone(process.pid)
            self.worker_deaths[slot.service.name] += 1
            self._schedule_restart(slot, process.pid, code, now)

    def _respawn(self, slot: _Slot, now: float) -> None:
        """Start the slot's next worker; one that cannot start (no descriptor, no memory,
        no process left to fork) is tried again after the longest pause, the master
        serving on: a failed start on the retirement path once took every service down."""
        try:
            self._spawn(slot)
        except OSError as exc:
            slot.started = now
            delay = self.backoff[slot.service.name].after_death(0.0, fatal=True)
            slot.restart_at = now + delay
            log.error(
                "service %s: cannot start a worker: %s; trying again in %.2f s",
                slot.service.name,
                exc,
                delay,
            )

    def _schedule_restart(self, slot: _Slot, pid: int, code: int, now: float) -> None:
        name = slot.service.name
        lived = now - slot.started
        fatal = code in FATAL_EXITS
        delay = self.backoff[name].after_death(lived, fatal)
        if code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with {code}"
        log.log(
            logging.ERROR if fatal else logging.WARNING,
            "service %s worker %d (pid %d) %s after %.1f s; restarting it in %.2f s%s",
            name,
            slot.index,
            pid,
            how,
            lived,
            delay,
            " (its command line or configuration is unusable)" if fatal else "",
        )
        slot.restart_at = now + delay

    def _retires(self, slot: _Slot) -> bool:
        """Whether the worker wrote RETIRING on its status pipe (non-blocking)."""
        if slot.status is None:
            return False
        try:
            said = os.read(slot.status, 64)
        except BlockingIOError:
            return False
        if not said:  # the worker closed it: it is exiting, poll() will tell
            self._close_status(slot)
        return RETIRING in said

    @staticmethod
    def _close_status(slot: _Slot) -> None:
        if slot.status is not None:
            os.close(slot.status)
            slot.status = None

    def _workers(self) -> list[subprocess.Popen[bytes]]:
        return [s.process for s in self.slots if s.process is not None] + self.retiring

    def _signal_all(self, signum: int) -> None:
        for process in self._workers():
            if process.poll() is None:
                process.send_signal(signum)

    def _shutdown(self) -> None:
        workers = self._workers()
        if self._stopped_by is not None:
            log.info("stopping on %s: %d workers", signal_name(self._stopped_by), len(workers))
        else:
            log.info("stopping: %d workers", len(workers))
        for sockets in self.sockets.values():
            for sock in sockets:
                sock.close()
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_DEADLINE
        # Keep answering login claims while the workers finish their sessions.
        while time.monotonic() < deadline and any(p.poll() is None for p in workers):
            self._limits_io(0.05)
        for process in workers:
            if process.poll() is None:
                log.warning("worker pid %d did not stop in time; killing it", process.pid)
                process.kill()
                process.wait()
        for slot in self.slots:
            self._close_status(slot)
        for status in self._retired_status.values():
            os.close(status)
        self._retired_status.clear()
        for key in list(self.selector.get_map().values()):
            self.selector.unregister(key.fileobj)
            assert isinstance(key.fileobj, socket.socket)
            key.fileobj.close()
        for service in self.cyrus.services:
            if service.listen.family == socket.AF_UNIX:
                with contextlib.suppress(OSError):  # bound as root, we may be cyrus_user now
                    Path(service.listen.host).unlink(missing_ok=True)
        self.stop_metrics()

    # --- metrics ------------------------------------------------------------------------

    def start_metrics(self) -> None:
        """With ``prometheus_enabled``: make the workers' directory and serve /metrics on
        ``prometheus_listen`` (raises OSError if the address cannot be bound, ValueError
        for a malformed one). Call before the workers start, after any fork (-d): the
        endpoint is a thread."""
        if not self.config.switch("prometheus_enabled"):
            return
        from prometheus_client import CollectorRegistry, make_wsgi_app  # noqa: PLC0415
        from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

        from pop3d.server import metrics_http  # noqa: PLC0415

        host, port = metrics.parse_listen(
            self.config.string("prometheus_listen") or "127.0.0.1:9110"
        )
        directory = tempfile.mkdtemp(prefix="pop3d-metrics-")  # 0700, ours
        try:
            registry = CollectorRegistry(auto_describe=True)
            workers = MultiProcessCollector(None, path=directory)  # type: ignore[no-untyped-call]
            registry.register(metrics.Serialised(workers, self._metrics_lock))
            registry.register(_MasterCollector(self))
            server = metrics_http.serve(host, port, make_wsgi_app(registry))
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self.metrics_dir = directory
        self._metrics_server = server
        bound_port = int(server.server_address[1])
        self.metrics_address = (host, bound_port)
        log.info(
            "metrics on http://%s/metrics (worker counts in %s)",
            _url_host(host, bound_port),
            directory,
        )

    def stop_metrics(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            self.metrics_dir = None

    def _worker_gone(self, pid: int) -> None:
        """An exited worker's counters into the archive, its share of the gauges dropped,
        its files removed (server/metrics.py)."""
        if self.metrics_dir is not None:
            with self._metrics_lock:
                try:
                    metrics.fold_dead_worker(self.metrics_dir, pid)
                except OSError as exc:  # a full disk must not take the master down
                    log.warning("metrics: cannot fold worker %d's counts: %s", pid, exc)


def _url_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _MasterCollector:
    """What only the master knows, read at each scrape (from the endpoint's thread: a
    torn read of the slot table costs one scrape a count off by one, nothing more)."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        master = self.master
        workers = GaugeMetricFamily(
            "pop3d_workers", "Worker processes serving.", labels=["service"]
        )
        retiring = GaugeMetricFamily(
            "pop3d_workers_retiring",
            "Retired workers (-U, -T) still finishing their sessions.",
            value=len(master.retiring),
        )
        deaths = CounterMetricFamily(
            "pop3d_worker_deaths",
            "Workers that exited without retiring (crashes, kills), restarted after a pause.",
            labels=["service"],
        )
        serving = collections.Counter(
            slot.service.name for slot in list(master.slots) if slot.process is not None
        )
        for service in master.cyrus.services:
            workers.add_metric([service.name], serving[service.name])
            deaths.add_metric([service.name], master.worker_deaths[service.name])
        yield workers
        yield retiring
        yield deaths
