"""A worker process: one asyncio loop serving every connection accepted on its listening
sockets (thousands per process, where Cyrus forks one process per connection).

Shutdown (SIGTERM/SIGINT/SIGQUIT): stop accepting, close sessions that are waiting for a command
(nothing is lost: a session without QUIT deletes nothing), let sessions in the middle of a
command finish it, and give up on stragglers after ``grace`` seconds. SIGHUP re-reads the
TLS certificate and key.

Recycling (Cyrus's ``-U`` and ``-T``, per worker): after ``-U`` connections, or after ``-T``
to 2x``-T`` seconds without a session once it has served one (randomised as Cyrus does, so
workers do not retire together), a worker *retires*: it stops accepting, tells the master
on its status pipe so a fresh worker takes its place at once, lets its sessions run to
their natural end (QUIT, drop or idle timeout: no session is cut short), and exits 0. A
SIGTERM while retiring turns into the shutdown above.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import random
import signal
import socket
from typing import Any

from pop3d.server import fdlimit, heap
from pop3d.server.channel import Channel, FdChannel
from pop3d.server.connection import Connection
from pop3d.server.context import ServiceContext
from pop3d.transport import proxy
from pop3d.transport.peer import peer_text

log = logging.getLogger("pop3d")

SHUTDOWN_GRACE = 8.0
PROXY_HEADER_TIMEOUT = 10.0
# -H: out of descriptors, accepting waits this long before it tries again (asyncio's own
# accept loop waits the same, constants.ACCEPT_RETRY_DELAY).
ACCEPT_RETRY_DELAY = 1.0
# Seconds between two "connection refused" lines; the refusals between are counted in
# the next one.
REFUSALS_LOGGED_EVERY = 1.0
# Connections asyncio accepts per wake-up (serve()), and the kernel's queue of connections
# not yet accepted.
ACCEPT_BATCH = 32
LISTEN_QUEUE = 1024
TOO_MANY = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
# How long a worker that stops accepting waits for connections already accepted to reach
# it (normally a loop iteration or two).
IN_FLIGHT_PATIENCE = 1.0
# The master's end of this pipe learns that a worker retires (server/master.py).
STATUS_FD_ENV = "POP3D_STATUS_FD"
RETIRING = b"R"
# The master's word that its configuration changed: retire, fresh workers take our place
# (server/reload.py). Held from the start, as SIGHUP is: its default action ends a process.
RETIRE_SIGNAL = signal.SIGUSR2
# A stop, as in Cyrus: its services and its master shut down cleanly on SIGQUIT as on
# SIGTERM and SIGINT (lib/signals.c, master/master.c). Its default action (a core dump) ended
# a worker, or the master with every service, its pid file left, with nothing logged
# (found probing).
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
# What else would end a process by its default action and means nothing to pop3d: logged
# and ignored. SIGUSR1 ended the master and its service the same way (Cyrus's services turn
# debug logging on and off with it; nothing here does), so did the timers no code here
# sets and the real-time signals. Not here: SIGPIPE and SIGXFSZ, which Python ignores (the
# write that caused one fails and says so), and the faults (SIGSEGV, SIGBUS, SIGILL,
# SIGFPE, SIGABRT, SIGTRAP, SIGSYS), which no handler can carry on from.
IGNORED_SIGNALS: frozenset[int] = frozenset(
    {
        signal.SIGUSR1,
        signal.SIGALRM,
        signal.SIGVTALRM,
        signal.SIGPROF,
        signal.SIGIO,
        signal.SIGPWR,
        signal.SIGSTKFLT,
        signal.SIGXCPU,
        *range(signal.SIGRTMIN, signal.SIGRTMAX + 1),
    }
)
HELD_AT_START: frozenset[int] = frozenset({signal.SIGHUP, RETIRE_SIGNAL}) | IGNORED_SIGNALS
# The cyclic collector's first threshold (CPython's default is 700 allocations). A worker
# holding thousands of idle sessions has a large old generation, and every full collection
# walks all of it with the event loop stopped: 300 to 430 ms over 266,000 objects beside
# 3,867 idle sessions (bench/RESULTS.md, section 7.1), the whole of the NOOP p99. Full
# collections come when a quarter as many objects again have been promoted; at 700 the
# objects of sessions in flight (alive for milliseconds, freed by reference counting) are
# swept into the old generation hundreds of times a second. At 50,000 they are gone before
# a young collection sees them, and a young collection is still a few milliseconds.
YOUNG_COLLECTION_THRESHOLD = 50_000


def hold_hangup() -> None:
    """Block SIGHUP until :func:`release_hangup`, once its handler is in place. Its default
    action ends the process: a reload asked of a process still starting (importing,
    reading its configuration) killed it, and a worker the master had just replaced died
    again, its back-off growing (found probing). Blocked, not ignored: a reload asked
    meanwhile is delivered to the handler. The mask survives fork and exec, so the master
    starts its workers with it held. RETIRE_SIGNAL and IGNORED_SIGNALS likewise."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_AT_START)


def release_hangup() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_AT_START)


def ignore_retire(loop: asyncio.AbstractEventLoop) -> None:
    """RETIRE_SIGNAL where no master replaces this process (-X, socket activation): it
    means nothing here, and its default action ended a session mid-way (``pkill -USR2
    pop3d`` meant for a master's workers; found probing). Said, then ignored."""

    def ignored() -> None:
        log.info("SIGUSR2 ignored: it is pop3d-master's word to its workers, and none is here")

    loop.add_signal_handler(RETIRE_SIGNAL, ignored)


def signal_name(signum: int) -> str:
    """SIGUSR1; a real-time signal as ``kill -l`` names it (SIGRTMIN+1), which is no
    member of signal.Signals."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"


def ignore_strays(loop: asyncio.AbstractEventLoop) -> None:
    """Each of IGNORED_SIGNALS logged and ignored (see there). Before release_hangup: they
    are held until then."""

    def ignored(signum: int) -> None:
        log.warning("%s ignored: it means nothing to pop3d", signal_name(signum))

    for signum in IGNORED_SIGNALS:
        loop.add_signal_handler(signum, ignored, signum)


class Worker:
    def __init__(
        self, context: ServiceContext, maxchild: int = -1, status_fd: int | None = None
    ) -> None:
        self.context = context
        self.maxchild = maxchild
        # What the descriptor limit lets this worker hold logged in, each session sending
        # a message at once (server/fdlimit.py): past it a connection is refused as past
        # maxchild, so no session's descriptor is the one missing. Found probing: with
        # maxchild above it, the worker ran out of descriptors, and asyncio's accept loop logged
        # "out of system resource" with a traceback thousands of times a second (a
        # CPython 3.11 bug), a core spinning and the disk filling, until sessions ended.
        lock_in_maildir = context.config.string("maildrop_lock") != "table"
        self.capacity = fdlimit.current(lock_in_maildir).logged_in
        self.status_fd = status_fd
        self._proxied_waiting = 0  # -H: accepted, their PROXY header not read yet
        # Refusals are logged once a REFUSALS_LOGGED_EVERY at most, with a count: a flood
        # of connections must not become a flood of log lines.
        self._refusals_unlogged = 0
        self._refusal_logged_at = -REFUSALS_LOGGED_EVERY
        # By the task that runs each (its done-callback is then a bound method, where a
        # closure over the connection cost an idle session 230 octets).
        self.connections: dict[asyncio.Task[None], Connection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop_accepting = asyncio.Event()  # SIGTERM or retirement
        self._terminating = asyncio.Event()  # SIGTERM only
        self._idle_timer: asyncio.TimerHandle | None = None
        self._storm = heap.StormWatch()
        self._trim_timer: asyncio.TimerHandle | None = None
        self.served = 0
        # Accepted by asyncio, their Channel made, not yet handed to _accepted (a loop
        # iteration or two later): a retiring worker waits for them (see serve()).
        self._accepts_in_flight = 0

    def _new_channel(self) -> Channel:
        self._accepts_in_flight += 1
        return Channel(self._accepted)

    def _accepted(self, channel: Channel) -> None:
        # A retiring worker still serves what asyncio accepted before its listener closed
        # (asyncio accepts a backlog's worth at a time); only a shutdown turns them away.
        # On pop3s the refusal is the close alone: the client speaks TLS first, and an
        # answer in clear reached it as a handshake failure (found probing).
        self._accepts_in_flight -= 1
        clear = not self.context.options.implicit_tls
        full = self._full(len(self.connections))
        if full or self._terminating.is_set():
            channel.refuse(TOO_MANY if clear else b"")
            if not self._terminating.is_set():
                self.context.metrics.limit_hit("maxchild")
            self._refused(channel.peer, "shutting down" if self._terminating.is_set() else full)
            return
        shutdown = self.context.shutdown_message()
        if shutdown is not None:  # Cyrus's <configdirectory>/msg/shutdown
            channel.refuse(shutdown if clear else b"")
            log.info("connection from %s refused: shutdown file present", channel.peer)
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        connection = Connection(channel, self.context)
        self.served += 1
        task = asyncio.get_running_loop().create_task(connection.run())
        self.connections[task] = connection
        self._storm.opened(len(self.connections))
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        uses = self.context.options.max_uses
        if uses is not None and self.served >= max(1, uses):  # Cyrus: -U 0 serves one
            self.retire(f"served {self.served} connections (-U {uses})")

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Out of descriptors all the same (another process's share of fs.file-max, files
        the I/O threads hold), asyncio's accept loop reports it once per connection it
        tries, a traceback each (CPython 3.11 does not stop after the first): counted into
        the refusal line instead. Anything else as asyncio would."""
        exception = context.get("exception")
        if context.get("message") == "socket.accept() out of system resource" and isinstance(
            exception, OSError
        ):
            self._refused("a client", f"cannot accept: {exception.strerror}")
            return
        loop.default_exception_handler(context)

    def _full(self, held: int) -> str:
        """Why a worker holding ``held`` connections takes no more ("" if it does)."""
        if 0 <= self.maxchild <= held:
            return f"{held} sessions, this worker's share of maxchild"
        if held >= self.capacity:
            return f"{held} sessions, all this worker's file-descriptor limit permits"
        return ""

    def _refused(self, peer: str, why: str) -> None:
        self._refusals_unlogged += 1
        now = asyncio.get_running_loop().time()
        if now - self._refusal_logged_at < REFUSALS_LOGGED_EVERY:
            return
        more = self._refusals_unlogged - 1
        self._refusals_unlogged = 0
        self._refusal_logged_at = now
        log.warning(
            "connection from %s refused: %s%s",
            peer,
            why,
            f" ({more} more refused since the last such line)" if more else "",
        )

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.connections.pop(task, None)
        if self._trim_timer is None and self._storm.due(len(self.connections)):
            self._trim_timer = asyncio.get_running_loop().call_later(heap.DELAY, self._trim)
        timeout = self.context.options.reuse_timeout
        if timeout > 0 and not self.connections and not self._stop_accepting.is_set():
            delay = timeout + random.uniform(0, timeout)  # Cyrus: T + rand() % T
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(
                delay, self.retire, f"no session for {delay:.0f} s (-T {timeout})"
            )

    def _trim(self) -> None:
        """The end of a storm of connections: its freed memory back to the system
        (server/heap.py)."""
        self._trim_timer = None
        live, peak = len(self.connections), self._storm.peak
        if not self._storm.due(live):
            return  # the sessions came back meanwhile
        self._storm.trimmed(live)
        returned = heap.trim()
        if returned is not None:
            log.info(
                "worker: %d sessions, %d at the most before; %.1f MiB of freed memory "
                "returned to the system",
                live,
                peak,
                returned / (1 << 20),
            )

    def stop(self) -> None:
        self._terminating.set()
        self._stop_accepting.set()

    def retire(self, reason: str) -> None:
        if self._stop_accepting.is_set():
            return
        log.info("worker retiring: %s; %d sessions to finish", reason, len(self.connections))
        if self.status_fd is not None:
            try:
                os.write(self.status_fd, RETIRING)
            except OSError as exc:  # the master is gone: nobody to replace us, retire anyway
                log.warning("cannot tell the master this worker retires: %s", exc)
        self._stop_accepting.set()

    async def serve(self, sockets: list[socket.socket], signals: bool = True) -> None:
        """Serve until stopped or retired; ``signals``: install the SIGTERM/SIGINT/SIGHUP
        handlers (False when the caller runs several workers in one loop)."""
        loop = asyncio.get_running_loop()
        log.debug("collector: %d start-up objects frozen", tune_collector())
        collected_at_start = collected_objects()
        if signals:
            for signum in STOP_SIGNALS:
                loop.add_signal_handler(signum, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self.context.reload_tls)
            loop.add_signal_handler(
                RETIRE_SIGNAL, self.retire, "the master reloaded its configuration"
            )
            ignore_strays(loop)
            release_hangup()
        if self.status_fd is not None:
            # Our end of the status pipe is its write end: it never reads as ready, but
            # epoll reports an error on it once no process holds the read end, which is
            # the master's. So a master that dies (killed, out of memory) is seen at once.
            loop.add_reader(self.status_fd, self._master_gone)
        if self.context.options.proxy_protocol:
            acceptors = [loop.create_task(self._accept_proxied(sock)) for sock in sockets]
            await self._stop_accepting.wait()
            for acceptor in acceptors:
                acceptor.cancel()
            # Closed as server.close() closes them below: an orphan's open listener kept a
            # new master from the port, and the kernel went on completing connections
            # nobody would accept (found probing). After the cancellations have run, so
            # no reader is left registered on a closed descriptor.
            await asyncio.gather(*acceptors, return_exceptions=True)
            for sock in sockets:
                sock.close()
        else:
            # asyncio accepts up to ``backlog`` connections per wake-up before any of them
            # reaches _accepted(), which refuses past capacity: a batch of 1,024 took a
            # worker near its limit past it. A batch fits in the descriptors kept for the
            # worker itself (fdlimit.RESERVED); the kernel's queue is set long again after.
            servers = [
                await loop.create_server(self._new_channel, sock=sock, backlog=ACCEPT_BATCH)
                for sock in sockets
            ]
            for sock in sockets:
                sock.listen(LISTEN_QUEUE)
            loop.set_exception_handler(self._loop_exception)
            await self._stop_accepting.wait()
            for sock in sockets:
                loop.remove_reader(sock.fileno())  # accept nothing more
            # The connections of the listener's last wake-up are still on their way to
            # _accepted (a task each, a turn of the loop or two). Closing the servers
            # under them dropped them (asyncio attaches no transport to a closed server):
            # reset, greeting unsent (found probing: a reload under load reset a few
            # connections in ten thousand). Closed once they are in.
            await asyncio.sleep(0)
            deadline = loop.time() + IN_FLIGHT_PATIENCE
            while self._accepts_in_flight > 0 and loop.time() < deadline:
                await asyncio.sleep(0.001)
            for server in servers:
                server.close()
        for timer in (self._idle_timer, self._trim_timer):
            if timer is not None:
                timer.cancel()
        await self._sessions_end_or_terminate()
        await self._drain()
        gc.collect()
        # What the sessions left in reference cycles (tests/server/test_collector.py
        # keeps it near zero): every such object waits for a collection, memory held
        # meanwhile, and costs the collector's time (section 11 of bench/RESULTS.md).
        log.info(
            "worker done: %d connections served, %d objects left to the cycle collector",
            self.served,
            collected_objects() - collected_at_start,
        )

    def _master_gone(self) -> None:
        """The master closed our status pipe: it died, or it has already counted us out
        (we retire, or it shuts down and has told us). Without a master nothing replaces
        or stops this worker, and its listening socket would keep a new master from
        binding the port: stop accepting, let the sessions finish, exit."""
        assert self.status_fd is not None
        asyncio.get_running_loop().remove_reader(self.status_fd)  # the error stays raised
        if self._stop_accepting.is_set():
            return  # retiring or stopping already
        log.warning("worker: the master is gone; retiring")
        self.status_fd = None  # nobody to tell
        self.retire("the master is gone")

    async def _sessions_end_or_terminate(self) -> None:
        """Retiring: wait for every session to end by itself, unless a SIGTERM comes."""
        terminating = asyncio.ensure_future(self._terminating.wait())
        try:
            while self._tasks and not self._terminating.is_set():
                await asyncio.wait({*self._tasks, terminating}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            terminating.cancel()

    async def _accept_proxied(self, sock: socket.socket) -> None:
        """-H: accept by hand so the PROXY header can be read to the byte before the
        connection goes to asyncio (behind it may be a TLS ClientHello)."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        while True:
            try:
                client, address = await loop.sock_accept(sock)
            except OSError as exc:
                # Found probing: out of descriptors once, this loop ended with the error
                # and the worker never accepted again, its listener still open. Out of
                # resources: wait a moment, as asyncio's own accept loop does; anything
                # else (a connection reset before it was taken) concerns that one alone.
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._refused("a client", f"cannot accept: {exc.strerror}")
                    await asyncio.sleep(ACCEPT_RETRY_DELAY)
                continue
            # Connections still sending their header count too (each holds a descriptor
            # for up to PROXY_HEADER_TIMEOUT): unrefused, a flood of silent connections
            # ran the worker out of descriptors.
            full = self._full(len(self.connections) + self._proxied_waiting)
            if full or self._terminating.is_set():
                client.close()
                if not self._terminating.is_set():
                    self.context.metrics.limit_hit("maxchild")
                peer = peer_text(str(address[0]), address[1]) if isinstance(address, tuple) else "?"
                self._refused(peer, full or "shutting down")
                continue
            self._proxied_waiting += 1
            task = loop.create_task(self._proxied(client))
            self._tasks.add(task)
            task.add_done_callback(self._proxied_done)

    def _proxied_done(self, task: asyncio.Task[None]) -> None:
        self._proxied_waiting -= 1
        self._tasks.discard(task)

    async def _proxied(self, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            address = client.getpeername()
        except OSError:
            address = None
        peer = (
            peer_text(str(address[0]), address[1]) if isinstance(address, tuple) else "a local peer"
        )
        try:
            async with asyncio.timeout(PROXY_HEADER_TIMEOUT):
                header = await read_proxy_header(loop, client)
        except TimeoutError:
            log.warning(
                "connection from %s closed: no complete PROXY protocol header within %g s",
                peer,
                PROXY_HEADER_TIMEOUT,
            )
            client.close()
            return
        except (proxy.ProxyHeaderError, OSError) as exc:
            log.warning(
                "connection from %s closed: bad PROXY protocol header: %s",
                peer,
                str(exc) or exc.__class__.__name__,
            )
            client.close()
            return
        real_peer = header.peer()
        await loop.connect_accepted_socket(lambda: Channel(self._accepted, real_peer), client)

    async def _drain(self) -> None:
        for connection in list(self.connections.values()):
            if connection.idle:
                connection.end_reason = "server shutting down"
                connection.channel.close()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_GRACE)
            for connection in self.connections.values():
                # cut off by the grace period: its end line said "closed", and the last
                # answers it could not flush were blamed on poptimeout (found probing)
                connection.end_reason = connection.end_reason or "server shutting down"
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)


def tune_collector() -> int:
    """Freeze what the worker's start-up made (modules, configuration, TLS contexts: alive
    as long as the process, yet walked by every full collection) and raise the young
    threshold (see YOUNG_COLLECTION_THRESHOLD). The number of objects frozen. Cycles made
    later are still collected: only the start-up's objects are exempt."""
    gc.collect()  # the start-up's own garbage is not frozen with it
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)
    return gc.get_freeze_count()


def collected_objects() -> int:
    """Unreachable objects the cycle collector has found in this process so far."""
    return sum(generation["collected"] for generation in gc.get_stats())


async def read_proxy_header(
    loop: asyncio.AbstractEventLoop, client: socket.socket
) -> proxy.ProxyHeader:
    """Read exactly the PROXY header, whatever writes it arrives in, and not one byte of
    the TLS or POP3 data behind it (that is not ours to take): peek at what is there, and
    take only what is known to be header.

    Waiting is event-driven, not polled: while the header is incomplete every byte that
    came is header, and taking it leaves the socket unreadable until more arrives, or at
    EOF or an error. A thousand half-sent headers cost no CPU until their timeout. (Raising
    ``SO_RCVLOWAT`` over bytes left unread did that on TCP only: poll on a Linux unix
    stream socket ignores it, so it stayed readable and looked closed.)"""
    header = b""
    while True:
        await _readable(loop, client)
        # Readable with nothing to peek can only be EOF: everything earlier was taken.
        peeked = client.recv(proxy.V2_MAX, socket.MSG_PEEK)
        if not peeked:
            if not header:
                raise proxy.ProxyHeaderError("connection closed before the header")
            raise proxy.ProxyHeaderError(
                f"connection closed after {len(header)} octets of the header"
            )
        length = proxy.header_length(header + peeked)
        if length == proxy.NEED_MORE or len(header) + len(peeked) < length:
            header += client.recv(len(peeked))
            continue
        header += client.recv(length - len(header))
        if len(header) == length:
            return proxy.parse(header)
        # A short read leaves the rest queued, so the socket is still readable: loop.


async def _readable(loop: asyncio.AbstractEventLoop, client: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(client.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(client.fileno())


async def serve_stdio(context: ServiceContext) -> bool:
    """One session on stdin/stdout (``-X``; inetd, xinetd, systemd ``Accept=yes``). If
    stdin is a socket the full TCP channel is used, else the pipes (TLS works on both: it
    is a layer of the channel). False if the session never started: the ``-s`` (TLS) or
    ``-k`` (KPOP) handshake failed, which the caller reports with its exit status. Signals
    as in a worker: SIGTERM/SIGINT end the session as a shutdown ends a worker's, SIGHUP
    re-reads the certificate."""
    loop = asyncio.get_running_loop()
    shutdown = context.shutdown_message()
    if shutdown is not None:  # Cyrus's <configdirectory>/msg/shutdown
        # With -s, as on a pop3s listener, the close alone: the client speaks TLS first.
        if not context.options.implicit_tls:
            os.write(1, shutdown)
        log.info("session refused: shutdown file present")
        return True
    duplicate = os.dup(0)
    try:
        sock = socket.socket(fileno=duplicate)
    except OSError:  # not a socket: a pipe, a file or a terminal
        os.close(duplicate)
        connection = Connection(FdChannel(0, 1), context)
    else:
        done: asyncio.Future[Connection] = loop.create_future()

        def accepted(channel: Channel) -> None:
            done.set_result(Connection(channel, context))

        await loop.connect_accepted_socket(lambda: Channel(accepted), sock)
        connection = await done
    session = loop.create_task(connection.run())

    def stop() -> None:
        """A worker's shutdown for its one session: closed if waiting for a command,
        else given the grace period to finish it (it was killed by the signal, without
        a line saying the session ended: found probing)."""
        if connection.idle:
            connection.end_reason = "server shutting down"
            connection.channel.close()
        else:
            loop.call_later(SHUTDOWN_GRACE, give_up)

    def give_up() -> None:
        connection.end_reason = connection.end_reason or "server shutting down"
        session.cancel()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop)
    loop.add_signal_handler(signal.SIGHUP, context.reload_tls)
    ignore_retire(loop)
    ignore_strays(loop)
    release_hangup()
    await asyncio.wait({session})
    return connection.session is not None
