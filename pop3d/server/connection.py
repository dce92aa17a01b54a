"""Runs one POP3 session over one channel: the driver half of the sans-I/O design.

Each event the session emits has one handler here, found by type in ``_HANDLERS``; the
handlers are the only place where a session's requests meet threads (Argon2, fsync),
timers (pauses, the idle timeout), files (the maildrop) and the socket.

Idle timeout (``poptimeout``): the time allowed to send one complete command, measured from
our last answer. A client trickling bytes without ever ending a line is cut off like an idle
one, and per RFC 1939 §3 the session ends without UPDATE and without a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from pop3d.auth.identity import IdentityRules, canonical_user
from pop3d.kerberos import mit
from pop3d.kerberos.alarm import Alarm
from pop3d.kerberos.mit import Acceptor
from pop3d.kerberos.names import local_user
from pop3d.kpop.handshake import Authenticated, Handshake, Refused
from pop3d.message import MessageEncoder, canonical_size
from pop3d.protocol.events import (
    NEED_DATA,
    Close,
    CommitUpdate,
    FailureKind,
    InstallLayer,
    LoginFailed,
    LoginSucceeded,
    Pause,
    RetrieveMessage,
    Send,
    StartTLS,
    StorageFailure,
)
from pop3d.protocol.session import Session
from pop3d.protocol.states import State
from pop3d.requests import Offload, Request
from pop3d.security.value import TLSInfo
from pop3d.server.audit import Login, Result, SessionEnd, value
from pop3d.server.carry_out import TABLE, Entry, Started, Where, Work
from pop3d.server.channel import ByteChannel, ChannelClosed
from pop3d.server.context import ServiceContext
from pop3d.server.loglines import line
from pop3d.server.telemetry import Telemetry
from pop3d.storage.base import MessageGone, StorageError
from pop3d.transport import tls
from pop3d.transport.layer import LayerError
from pop3d.transport.tls_layer import TLSHandshakeError

log = logging.getLogger("pop3d")
_KPOP_KEYTAB_ALARM = Alarm(log)
audit = logging.getLogger("pop3d.audit")
# The identity rules without their folding: a KPOP principal's user must be one they keep
# as it is (KPOP compares it with USER's canonical name exactly).
_NAME_AS_IS = IdentityRules(username_tolower=False)

_STREAM_CHUNK = 256 * 1024
# What _serve_inline leaves in _handoff when it stops to let the other sessions in: the
# task goes on with the session's next event.
_YIELDED = object()
INTERNAL_ERROR = b"-ERR [SYS/TEMP] Internal server error, closing the connection\r\n"


def cached_read(fd: int, size: int, offset: int) -> bytes | None:
    """Up to ``size`` octets at ``offset`` if the page cache holds them all, without
    waiting for a disk (``RWF_NOWAIT``); None when that would wait (or the file system
    cannot say), for the caller to read in a thread. Cheaper than the thread hop for the
    common case: a message that was just delivered or listed."""
    buffer = bytearray(size)
    try:
        got = os.preadv(fd, [buffer], offset, os.RWF_NOWAIT)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return None
        raise
    if got < size and got != 0:
        return None  # part of it cached: the thread reads it whole, as it would have
    return bytes(buffer) if got == size else b""


class _Stop(Exception):
    """End the connection loop (client gone, timeout, session closed)."""


class _Unread(Exception):
    """A message's first read failed: nothing of it (not even the +OK) has gone out."""


class _WrongSize(Exception):
    """RETR found, before anything went out, that the size the client was given is wrong
    (logged): the answer is -ERR."""


class _Changed(Exception):
    """RETR found, before anything went out, that the message is not what was listed (cut
    short or grown on disk; logged): the answer is -ERR and the session goes on."""


def _canonical_size_of(fd: int) -> int:
    """The canonical size of the open file ``fd``, read from its start (its offset is
    left alone: RETR reads with pread)."""
    return canonical_size(iter(functools.partial(_read_from, fd, [0]), b""))


def _read_from(fd: int, offset: list[int]) -> bytes:
    chunk = os.pread(fd, _STREAM_CHUNK, offset[0])
    offset[0] += len(chunk)
    return chunk


class Connection:
    __slots__ = (
        "_deadline",
        "_handoff",
        "_idle_timer",
        "_linger",
        "_loop",
        "_mechanism",
        "_metrics",
        "_retrieved",
        "_stalled",
        "_started",
        "_task",
        "_telemetry",
        "_timed_out",
        "_top",
        "_user",
        "channel",
        "context",
        "end_reason",
        "idle",
        "session",
        "work",
    )

    def __init__(self, channel: ByteChannel, context: ServiceContext) -> None:
        self.channel = channel
        self.context = context
        self.session: Session | None = None
        self.work = Work(
            context.authenticator,
            context.store,
            context.token_validator,
            login_gate=context.login_gate,
        )
        self.idle = False  # waiting for a command: safe to close on shutdown
        self._loop = asyncio.get_running_loop()
        self._deadline = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._timed_out = False
        # What a command served inline (_serve_inline) left for the task: the next event,
        # or the exception that stopped it.
        self._handoff: object = None
        self._task: asyncio.Task[None]  # run()'s, for the idle timeout
        self.end_reason = ""
        # We end the session on our own while the client may still be sending: the
        # channel closes lingering (ByteChannel.close), so our last answer is not lost to
        # a reset. Not after QUIT, a failed handshake or a refused layer frame.
        self._linger = False
        self._stalled = False  # ended for not reading: nothing more will be sent
        self._telemetry: Telemetry | None = None  # server/telemetry.py; None: not recorded
        # For the session's audit record (server/audit.py) and the metrics.
        self._started = time.time()
        self._user = ""
        self._mechanism = ""
        self._retrieved = 0
        self._top = 0
        self._metrics = context.metrics
        self._metrics.session_started()

    async def run(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        try:
            tls_started = None
            if self.context.options.implicit_tls:
                tls_started = await self._handshake(implicit=True)
                if tls_started is None:
                    return
            kpop = None
            if self.context.kpop is not None:
                kpop = await self._kpop_handshake(self.context.kpop)
                if kpop is None:
                    return
            principal, user, trailing = kpop or (None, None, b"")
            info = self.context.connection_info(
                tls_started, principal, user, self.channel.peer, self.channel.local_address
            )
            self.session = Session(self.context.settings, info)
            self.session.receive_data(trailing)
            telemetry = self.context.telemetry
            if telemetry is not None and telemetry.prelogin:
                self._telemetry = Telemetry(telemetry, info.session_id)
                self.session.record()
            self.work.session_id = self.session.connection.session_id
            self._touch()
            # The session's loop, here rather than in a coroutine of its own: a suspended
            # coroutine frame is 240 octets in every idle session.
            session, handlers = self.session, _HANDLERS
            while True:
                event = self._handoff
                if event is None:
                    event = session.next_event()
                else:
                    self._handoff = None
                if self._telemetry is not None:
                    self._record()
                await handlers[type(event)](self, event)
        except _Stop:
            pass
        except asyncio.CancelledError:
            if not self._stalled:
                raise
            self._task.uncancel()  # ours: the client stopped reading
            self.end_reason = "the client stopped reading"
        except ChannelClosed:
            self.end_reason = self.end_reason or "connection lost"
        except LayerError as exc:
            # A frame that failed its layer's checks: nothing in it was run.
            log.warning("session %s: %s", self._session_id, exc)
            self.end_reason = f"security layer: {exc}"
        except Exception:
            log.exception("session %s: internal error", self._session_id)
            self.end_reason = "internal error"
            self._linger = True
            # Tell the client, as Cyrus does with [SYS/PERM] Fatal error; nothing is lost:
            # without QUIT there is no UPDATE.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self.channel.write(INTERNAL_ERROR)
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()  # else it holds this connection until it fires
                self._idle_timer = None
            if self._telemetry is not None:
                self._record()
                self._telemetry.close()
            self._release()
            if self.session is not None:
                self.session.abandon()
            if self._stalled:
                self.channel.abort()  # close() would wait for it to read what is unsent
            else:
                self.channel.close(linger=self._linger)
            self._log_end()
            # Counted against maxchild until the socket is closed (Worker._finished).
            dropped = await self.channel.finished(self.context.idle_timeout)
            if dropped:
                # A shutdown's grace period cuts the wait short too: the line named
                # poptimeout for a RETR cut off by SIGTERM (found probing)
                shutting_down = self.end_reason == "server shutting down"
                log.info(
                    "session %s peer=%s: connection dropped, %d octets of its last "
                    "answers not taken %s",
                    self._session_id,
                    self.channel.peer,
                    dropped,
                    "before the server shut down" if shutting_down else "within poptimeout",
                )

    @property
    def _session_id(self) -> str:
        return self.session.connection.session_id if self.session else "-"

    def _touch(self) -> None:
        self._deadline = self._loop.time() + self.context.idle_timeout

    def _idle_check(self) -> None:
        """The idle timer: one per connection, moved lazily. An answer only moves the
        deadline; the timer, when it fires, re-arms for the deadline as it is then, and
        ends a read still waiting past it (what asyncio.timeout_at did for every read,
        with a timer made and cancelled each time)."""
        self._idle_timer = None
        deadline = self._deadline
        if not self.idle:
            progress = self.channel.write_progress()
            if progress is None:
                # A command at work (an UPDATE, a hash): ours to finish, however long;
                # looked at again in a while, in case its answer then waits on the client.
                later = self._loop.time() + self.context.idle_timeout
                self._idle_timer = self._loop.call_at(later, self._idle_check)
                return
            # An answer waiting for the client to read it: a client that takes nothing
            # for poptimeout is as idle as one that sends nothing, and would otherwise
            # hold its maildrop's lock and a connection for as long as it likes. Each
            # time it takes some counts as a command would.
            deadline = max(deadline, progress + self.context.idle_timeout)
        if self._loop.time() < deadline:
            self._idle_timer = self._loop.call_at(deadline, self._idle_check)
            return
        self._timed_out = True
        self._stalled = not self.idle
        self._task.cancel()

    def _record(self) -> None:
        """Telemetry: what the session consumed and sent since the last event."""
        assert self._telemetry is not None and self.session is not None
        transcript = self.session.transcript
        if transcript is not None:
            self._telemetry.pieces(transcript.take())

    def _telemetry_login(self, user: str) -> None:
        """Recording starts at login (Cyrus) or, with telemetry_prelogin, has started and
        is now written; only where <configdirectory>/log/<user>/ exists."""
        settings = self.context.telemetry
        assert self.session is not None
        if settings is None:
            return
        telemetry = self._telemetry or Telemetry(settings, self._session_id)
        if telemetry.login(user):
            self._telemetry = telemetry
            self.session.record()  # the login's own +OK is not sent yet: it is included
        else:
            self._telemetry = None
            self.session.stop_recording()

    # --- plain events -------------------------------------------------------------------

    async def _send(self, event: Send) -> None:
        assert self.session is not None
        if self.session.state is State.CLOSED:
            # The last answer (QUIT's): on a socket it goes out with the close, in one send
            # with TLS's close_notify.
            await self.channel.write_last(event.data)
        else:
            await self.channel.write(event.data)
        self._touch()
        if self.session.input_waiting:
            # Pipelined commands wait (a Send answers at most 32): the other sessions'
            # turn first. A client pipelining CAPA and reading as fast as the answers
            # came kept the loop for a whole read (256 KiB: 43,000 commands, 1.7 s; LIST
            # of 200 messages, 5.7 s), every other session of the worker waiting (found
            # probing). A client sending one command at a time never waits here.
            await asyncio.sleep(0)

    async def _need_data(self, _event: Any) -> None:
        assert self.session is not None
        # Cyrus checks its shutdown file before reading each command: a session already
        # open is told at its next command, and ends without UPDATE (nothing deleted).
        shutdown = self.context.shutdown_message()
        if shutdown is not None:
            await self.channel.write_last(shutdown)
            self.end_reason = "shutdown file present"
            self._linger = True
            raise _Stop
        if self._telemetry is not None:
            self._telemetry.flush()
        self.idle = True
        if self._idle_timer is None:
            self._idle_timer = self._loop.call_at(self._deadline, self._idle_check)
        try:
            waiter = self.channel.readable()
            if waiter is not None:
                if self._telemetry is None:  # the transcript is taken in run()'s loop
                    self.channel.read_inline(self._serve_inline)
                try:
                    await waiter
                finally:
                    self.channel.read_inline(None)
                if self._handoff is not None:
                    if isinstance(self._handoff, Exception):
                        failure, self._handoff = self._handoff, None
                        raise failure
                    if self._handoff is _YIELDED:
                        self._handoff = None  # run() asks the session for its next event
                    return  # the session has its input; run() takes the event it left
            data = await self.channel.read()
        except asyncio.CancelledError:
            if not self._timed_out:
                raise
            self._task.uncancel()  # ours: the idle timeout, not a cancellation from outside
            self.end_reason = "idle timeout"
            self._linger = True
            raise _Stop from None
        finally:
            self.idle = False
        if not data:
            self.end_reason = self.end_reason or "client closed the connection"
            raise _Stop
        self.session.receive_data(data)

    def _serve_inline(self, data: bytes) -> bool:
        """The channel's inline reader (ByteChannel.read_inline) while this session waits
        for a command: feed the session, send its answers while they need no waiting, and
        stay asleep if it wants more input (True). Anything else (a request, a login, an
        answer that has to wait for the client to read, the last answer, the shutdown
        file) is left in ``_handoff`` for the task, which the channel then wakes (False).
        So NOOP, and the answers the session gives from what it holds (STAT and LIST once
        measured, UIDL, CAPA), cost no task wake-up."""
        session = self.session
        assert session is not None
        try:
            session.receive_data(data)
            while True:
                event = session.next_event()
                if event is NEED_DATA:
                    if self.context.shutdown_message() is None:
                        return True
                elif (
                    type(event) is Send
                    and session.state is not State.CLOSED
                    and self.channel.write_now(event.data)
                ):
                    self._touch()
                    if not session.input_waiting:
                        continue
                    # more pipelined commands: the other sessions' turn first (_send)
                    self._handoff = _YIELDED
                    return False
                self._handoff = event  # the task goes on from here, in the loop's next turn
                return False
        except Exception as exc:  # a bug: the task reports it as run() does its own
            self._handoff = exc
            return False

    async def _close(self, event: Close) -> None:
        self.end_reason = event.reason
        self._linger = not event.client_asked
        raise _Stop

    def _audit_login(
        self, method: str, user: str, result: Result, reason: str = "", authid: str = ""
    ) -> None:
        mechanism = method.removeprefix("AUTH ")
        self.context.audit.record(
            Login(
                time=time.time(),
                service=self.context.audit.service,
                session=self._session_id,
                peer=self.channel.peer,
                security=self.session.security if self.session else None,
                mechanism=mechanism,
                user=user,
                result=result,
                reason=reason,
                authid=authid,
            )
        )
        self._metrics.login(mechanism, result)

    async def _login_succeeded(self, event: LoginSucceeded) -> None:
        self._telemetry_login(event.user)
        self._user = event.user
        self._mechanism = event.method.removeprefix("AUTH ")
        # Cyrus's loginlog adds pop.subfolder; the user stays the one who logged in
        folder = f"folder {event.folder}" if event.folder is not None else ""
        self._audit_login(event.method, event.user, Result.OK, folder, event.authenticated_as)

    async def _login_failed(self, event: LoginFailed) -> None:
        if event.unavailable:
            result = Result.UNAVAILABLE
        elif event.abandoned:
            result = Result.ABANDONED
        else:
            result = Result.REFUSED if event.authenticated else Result.FAIL
        self._audit_login(event.method, event.user, result, event.reason, event.authenticated_as)

    # --- requests -----------------------------------------------------------------------

    def _resolve(self, result: object) -> None:
        assert self.session is not None
        self.session.resolve(result)

    async def _carry_out(self, request: Request) -> None:
        """Every request in the shared table (server/carry_out.py), where it says."""
        entry = TABLE[type(request)]
        result = None if entry.fast is None else entry.fast(self.work, request)
        if result is None and entry.where is Where.LOOP:
            result = entry.run(self.work, request)
        elif result is None and entry.where is Where.HASH:
            result = await self._check(entry, request)
        elif result is None:
            executor = self.context.executor
            result = await self._loop.run_in_executor(executor, entry.run, self.work, request)
        if isinstance(request, CommitUpdate):
            # UPDATE is done: if the client is gone before it reads the answer, the log
            # must still say QUIT was processed (its deletions are), not "connection lost".
            self.end_reason = "QUIT (the client did not wait for the answer)"
        self._resolve(result)

    async def _check(self, entry: Entry, request: Request) -> object:
        """A password check on the worker's hash thread (Argon2, or the threads asking a
        password checker). Found probing: a client sending PASS and resetting, over and
        over, queued an Argon2 hash per connection (costing the client nothing) and held
        a session, counted against maxchild, until its hash had run: seconds of CPU
        later, with every new connection refused meanwhile. Now a check whose client is
        gone before it starts is dropped, and past ``password_checks_waiting`` checks the
        answer is "no verdict" at once (-ERR [SYS/TEMP], logged result=<unavailable>)."""
        context = self.context
        if context.hashes_waiting >= context.hashes_waiting_max:
            assert entry.busy is not None
            return entry.busy(request)
        job: Callable[[], object] = functools.partial(entry.run, self.work, request)
        if entry.start is not None:
            started = entry.start(self.work, request)
            if not isinstance(started, Started):
                return started  # known at once (kerberos5: max_pending checks wait)
            job = started.wait
        context.hashes_waiting += 1
        try:
            check = self._loop.run_in_executor(context.hash_executor, job)
            lost = self.channel.lost()
            if lost is None:
                return await check
            await asyncio.wait((check, lost), return_when=asyncio.FIRST_COMPLETED)
            if not check.done():
                check.cancel()  # still queued: never run (running: its answer is dropped)
                raise ChannelClosed("connection lost while its password waited to be checked")
            return check.result()
        finally:
            context.hashes_waiting -= 1

    async def _retrieve(self, event: RetrieveMessage) -> None:
        assert self.work.maildrop is not None
        try:
            handle = self.work.maildrop.open_message(event.index)
        except MessageGone as exc:
            self._resolve(StorageFailure(FailureKind.PERMANENT, str(exc)))
            return
        except (StorageError, OSError) as exc:
            log.error("session %s: cannot open message: %s", self._session_id, exc)
            self._resolve(StorageFailure(FailureKind.TEMPORARY, str(exc)))
            return
        with handle:
            # RETR sends the whole message, so what goes out can be checked against the
            # size the client was given; TOP sends a prefix and cannot be.
            expected = event.expected_octets if event.body_lines is None else None
            try:
                on_disk = handle.seek(0, 2)  # SEEK_END: the file's size now
                handle.seek(0)
            except OSError as exc:
                log.error("session %s: cannot read message: %s", self._session_id, exc)
                self._resolve(StorageFailure(FailureKind.TEMPORARY, str(exc)))
                return
            resized: int | None = None  # the session lists the message with this size now
            if expected is not None and not self._could_be(expected, on_disk):
                try:
                    real = await self._loop.run_in_executor(
                        self.context.executor, _canonical_size_of, handle.fileno()
                    )
                except OSError:
                    real = None  # the stream's first read reports it
                if real is not None and await self._corrected(event.index, handle, real):
                    if event.announced:
                        self._resolve(StorageFailure(FailureKind.TEMPORARY, "wrong size hint"))
                        return
                    expected = resized = real  # not told yet: it goes out whole
                else:
                    # Emptied or cut down before anything went out: say so while we can.
                    log.error(
                        "session %s: message %s is %d octets on disk, which cannot make "
                        "the %d announced; answering -ERR",
                        self._session_id,
                        self._uid(event.index),
                        on_disk,
                        expected,
                    )
                    failure = StorageFailure(FailureKind.TEMPORARY, "message changed on disk")
                    self._resolve(failure)
                    return
            try:
                streamed = await self._stream(event, handle, expected, on_disk)
                resized = streamed if streamed is not None else resized
            except _WrongSize:
                self._resolve(StorageFailure(FailureKind.TEMPORARY, "wrong size hint"))
                return
            except _Changed:
                self._resolve(StorageFailure(FailureKind.TEMPORARY, "message changed on disk"))
                return
            except _Unread as exc:
                # Still time for an -ERR: the session goes on, so a client can skip an
                # unreadable message (and QUIT its deletions) instead of being cut off.
                log.error("session %s: cannot read message: %s", self._session_id, exc)
                self._resolve(StorageFailure(FailureKind.TEMPORARY, str(exc)))
                return
            except ChannelClosed:
                # The client hung up (or reset) mid-message: its choice, not a fault here.
                log.info(
                    "session %s: the client went away while message %s was being sent",
                    self._session_id,
                    self._uid(event.index),
                )
                self.end_reason = "client closed the connection mid-message"
                raise _Stop from None
        if event.body_lines is None:
            self._retrieved += 1
        else:
            self._top += 1
        self._touch()
        self._resolve(resized)

    async def _corrected(self, index: int, handle: Any, real: int) -> bool:
        """Whether the message's size was wrong because its name's size hint is (the file
        is ``real`` octets in canonical form): the store then corrects the name, so every
        later session lists and serves it right, and this is logged as the store's fault,
        once (the name no longer says it). A name the store cannot correct is logged each
        session and stays wrong (a read-only Maildir); one gone meanwhile is not judged."""
        assert self.work.maildrop is not None
        maildrop = self.work.maildrop
        try:
            inode = os.fstat(handle.fileno()).st_ino
            renamed = await self._loop.run_in_executor(
                self.context.executor, maildrop.correct_size_hint, index, inode, real
            )
        except MessageGone:
            return False
        except (StorageError, OSError) as exc:
            log.error(
                "session %s: message %s is %d octets, not what its name says, and the name "
                "cannot be corrected: %s",
                self._session_id,
                self._uid(index),
                real,
                exc,
            )
            return True
        if renamed is None:
            return False  # no size in its name: the file changed since it was measured
        if renamed[0] == renamed[1]:
            # The name says the size already: corrected since this session listed it (by
            # an earlier RETR of this session, logged then, or by another session), so
            # the size this session knows is the old name's.
            return True
        log.error(
            "session %s: message %s: its file name gave a wrong size; it is %d octets: "
            "renamed %s to %s",
            self._session_id,
            self._uid(index),
            real,
            *renamed,
        )
        return True

    async def _stream(
        self, event: RetrieveMessage, handle: Any, expected: int | None, on_disk: int
    ) -> int | None:
        """Write the preamble and the encoded message; for RETR (``expected`` or not), if
        the octets do not add up, raise :class:`_Changed` while nothing has gone out, else
        end the connection without the terminating dot, so the client knows the message
        it got is incomplete. -> the message's real size when it
        went out whole although its size hint was wrong, else None.

        A message read whole as it is on disk whose size is still not ``expected`` has a
        wrong size hint in its name (:meth:`_corrected`): if the client was not told that
        size it gets the message whole; if it was, :class:`_WrongSize` while nothing has
        gone out, else the connection ends without the dot, as for a changed message."""
        encoder = MessageEncoder(event.body_lines)
        telemetry = self._telemetry
        pending = event.preamble
        wrote = False
        read = 0
        fd = handle.fileno()
        while not encoder.done:
            # What the file should still hold, else a 1-octet probe for the end (or for
            # growth, which the check below reports).
            want = min(on_disk - read, _STREAM_CHUNK) if on_disk > read else 1
            try:
                chunk = cached_read(fd, want, read)
                if chunk is None:
                    # Not all in the page cache: in an I/O thread, as a cold or slow disk
                    # must not stall the worker (bench/RESULTS.md, "RETR and the event
                    # loop": one 200 MB RETR held a NOOP beside it 0.7-1.4 s).
                    chunk = await self._loop.run_in_executor(
                        self.context.executor, os.pread, fd, want, read
                    )
            except OSError as exc:
                if read == 0:  # nothing was written yet: the +OK is still in ``pending``
                    raise _Unread(exc) from exc
                # The +OK is out and the client is counting octets: all we can do is stop.
                log.error("session %s: read error mid-message: %s", self._session_id, exc)
                self.end_reason = "read error while sending a message"
                self._linger = True
                raise _Stop from None
            if not chunk:
                break
            read += len(chunk)
            pending += encoder.feed(chunk)
            if len(pending) >= _STREAM_CHUNK:
                await self.channel.write(pending)
                if telemetry is not None:
                    telemetry.server(pending)
                pending = b""
                wrote = True
                await asyncio.sleep(0)  # every other session gets a turn between chunks
        before = encoder.octets
        tail = encoder.finish()
        resized: int | None = None
        if event.body_lines is None:
            sent = encoder.octets
            # A size hint written by Dovecot (,W=) does not count the line end we add to
            # a message without a final one (DESIGN.md, Storage): that is not a change.
            appended = sent - before >= 2
            matches = expected is None or sent == expected or (appended and sent == expected + 2)
            # Read whole as the file is, and still not the size expected: the name's is wrong
            wrong_hint = read == on_disk and not matches
            wrong_hint = wrong_hint and await self._corrected(event.index, handle, sent)
            if wrong_hint and not event.announced:
                matches = True
                resized = sent
            elif wrong_hint and not wrote:
                raise _WrongSize
            elif wrong_hint:
                log.error(
                    "session %s: message %s was announced as %d octets and is %d; closing "
                    "without the terminating dot",
                    self._session_id,
                    self._uid(event.index),
                    expected,
                    sent,
                )
                await self._end_without_dot(pending, tail, "a message's size was announced wrong")
            if read != on_disk or not matches:
                log.error(
                    "session %s: message %s changed while it was sent (%d octets read of "
                    "%d on disk, %d sent of %s announced); %s",
                    self._session_id,
                    self._uid(event.index),
                    read,
                    on_disk,
                    sent,
                    "none" if expected is None else expected,
                    "closing without the terminating dot" if wrote else "answering -ERR",
                )
                if not wrote:
                    # Nothing has gone out, not even the +OK: an -ERR the client can skip
                    # (RFC 1939 lets RETR fail), and the session, with its deletions,
                    # goes on. A file cut short stays so, and would otherwise end every
                    # session at this message, its DELEs never committed (found probing).
                    raise _Changed
                await self._end_without_dot(pending, tail, "message changed while it was sent")
        last = pending + tail
        await self.channel.write(last)
        if telemetry is not None:
            telemetry.server(last)
        return resized

    async def _end_without_dot(self, pending: bytes, tail: bytes, reason: str) -> NoReturn:
        """Send what is left of the message but its terminating dot, and end the session:
        a client that got an incomplete message can tell (RFC 1939 gives no other way)."""
        cut = pending + tail[: -len(MessageEncoder.TERMINATOR)]
        await self.channel.write(cut)
        if self._telemetry is not None:
            self._telemetry.server(cut)
        self.end_reason = reason
        self._linger = True
        raise _Stop

    def _uid(self, index: int) -> str:
        maildrop = self.work.maildrop
        uids = maildrop.uids if maildrop is not None else ()
        return uids[index] if 0 <= index < len(uids) else f"#{index + 1}"

    @staticmethod
    def _could_be(canonical: int, on_disk: int) -> bool:
        """Whether a file of ``on_disk`` octets can have a canonical size of ``canonical``
        (LF becomes CRLF, a missing final line end is added: at most 2n + 2; an empty file
        is empty), allowing a size hint 2 short (Dovecot's ,W= without the added line end)."""
        if on_disk == 0:
            return canonical == 0
        return on_disk - 2 <= canonical <= 2 * on_disk + 2

    async def _pause(self, event: Pause) -> None:
        await asyncio.sleep(event.seconds)
        self._touch()
        self._resolve(None)

    async def _start_tls(self, _event: StartTLS) -> None:
        started = await self._handshake()
        if started is None:
            raise _Stop
        self._touch()
        self._resolve(started)

    async def _install_layer(self, event: InstallLayer) -> None:
        self.channel.push_layer(event.layer, event.trailing)
        log.info(
            "session %s: %s security layer, ssf=%d",
            self._session_id,
            event.layer.name,
            event.layer.ssf,
        )
        self._resolve(None)

    async def _handshake(self, *, implicit: bool = False) -> TLSInfo | None:
        server_tls = self.context.tls
        if server_tls is None:
            self.end_reason = "TLS requested but not configured"
            return None
        try:
            connection = await self.channel.start_tls(
                server_tls.context, self.context.tls_handshake_timeout, implicit=implicit
            )
        except (TLSHandshakeError, ConnectionError, TimeoutError, OSError) as exc:
            self.end_reason = f"TLS handshake failed: {exc.__class__.__name__}: {exc}"
            self._metrics.tls_handshake(ok=False)
            return None
        self._metrics.tls_handshake(ok=True)
        info = tls.facts(connection, server_tls)
        # The certificate's name escaped as the audit records' fields are: a name spelling
        # a badlogin record for another address had fail2ban find that host here.
        client = value(info.client_identity) if info.client_identity else "-"
        # tls_client_certs: optional goes on with a certificate that did not verify: say
        # why, or "EXTERNAL is not offered" would have no reason anywhere.
        unverified = tls.verify_problem(connection)
        line(
            log,
            logging.INFO,
            f"peer={self.channel.peer} TLS {info.version} {info.cipher} ssf={info.ssf} "
            f"client={client}"
            + (f" (client certificate not verified: {unverified})" if unverified else ""),
        )
        return info

    async def _kpop_handshake(self, acceptor: Acceptor) -> tuple[str, str, bytes] | None:
        """``-k``: the Kerberos handshake before the greeting (pop3d/kpop/handshake.py),
        within ``kpop_handshake_timeout`` from connect. (principal, local user, the bytes
        after the AP-REQ), or None when the connection is to be closed (the handshake has
        then sent what the client should see: an answer byte or a KRB-ERROR)."""
        handshake = Handshake(acceptor.verify)
        try:
            async with asyncio.timeout(self.context.kpop_timeout):
                while True:
                    event = handshake.next_event()
                    if isinstance(event, Send):
                        await self.channel.write(event.data)
                    elif isinstance(event, Offload):
                        # Nothing is read while the ticket is checked (the thread pool).
                        result = await self._loop.run_in_executor(
                            self.context.executor, TABLE[Offload].run, self.work, event
                        )
                        handshake.resolve(result)
                    elif isinstance(event, Authenticated):
                        break
                    elif isinstance(event, Refused):
                        self.end_reason = f"KPOP: {event.reason}"
                        if event.unavailable:
                            # The keytab's fault, the operator's to mend: the record alone
                            # (a WARNING) says only that this login got no verdict. A line a
                            # minute at most: a client can name a key that never was.
                            _KPOP_KEYTAB_ALARM(
                                "session %s: KPOP: cannot check tickets: %s",
                                self._session_id,
                                event.reason,
                            )
                            self._audit_login("KPOP", "", Result.UNAVAILABLE, event.reason)
                        elif event.presented:
                            self._audit_login("KPOP", "", Result.FAIL, event.reason)
                        # Else no ticket was offered (a health check's connect and close,
                        # a port scan, an HTTP request): like a failed TLS handshake, only
                        # the session's end is logged. A badlogin had fail2ban ban the
                        # prober for a login never tried (found probing).
                        return None
                    else:  # NEED_DATA
                        handshake.receive_data(await self.channel.read())
        except TimeoutError:
            self.end_reason = f"KPOP: no handshake within {self.context.kpop_timeout:g} s"
            if handshake.checking:
                # A ticket came and got no verdict in time (the thread pool busy): the
                # server's failing, not the client's, as for a keytab that fails.
                reason = "time limit while the ticket was checked"
                self._audit_login("KPOP", "", Result.UNAVAILABLE, reason)
            return None
        rules = self.context.settings.identity
        user = await self._loop.run_in_executor(  # MIT's auth_to_local reads krb5.conf
            self.context.executor,
            local_user,
            event.principal,
            event.default_realm,
            rules.loginrealms,
            mit.aname_to_localname,
        )
        if user is not None and canonical_user(user, _NAME_AS_IS) != user:
            # A name the identity rules would refuse or change ("a:b", "alice ", brackets
            # spelling a log record) is no user: USER could never name it, and the session
            # would carry it into every line (found probing)
            user = None
        if user is None:
            # Escaped as an audit field (the realm's names are anyone's choice): a principal
            # spelling a badlogin record made fail2ban find another host in this line.
            self.end_reason = f"KPOP: principal {value(event.principal)} is not a local user"
            # The ticket proved the principal: a refusal, not a failed login fail2ban counts
            self._audit_login("KPOP", event.principal, Result.REFUSED, "not a local user")
            await self.channel.write(b"-ERR [AUTH] This Kerberos principal has no mailbox here\r\n")
            return None
        audit.info(
            "kpop.good principal=%s user=%s peer=%s mutual=%s",
            value(event.principal),
            value(user),
            self.channel.peer,
            "yes" if event.mutual else "no",
        )
        return event.principal, user, handshake.trailing_data

    # --- end ------------------------------------------------------------------------------

    def _release(self) -> None:
        self.work.release()

    def _log_end(self) -> None:
        reason = self.end_reason or "closed"
        line(
            log,
            logging.INFO,
            f"session {self._session_id} peer={self.channel.peer} ended: {reason}",
        )
        bytes_in, bytes_out = self.channel.bytes_in, self.channel.bytes_out
        ended = time.time()
        self.context.audit.record(
            SessionEnd(
                time=ended,
                service=self.context.audit.service,
                session=self._session_id,
                peer=self.channel.peer,
                security=self.session.security if self.session else None,
                mechanism=self._mechanism,
                user=self._user,
                reason=self.end_reason or "closed",
                retrieved=self._retrieved,
                top=self._top,
                deleted=self.work.deleted,
                bytes_in=bytes_in,
                bytes_out=bytes_out,
                duration=max(0.0, ended - self._started),
            )
        )
        self._metrics.session_ended(bytes_in, bytes_out)


# Events and the requests bound to this connection's channel or clock; every other
# request is in the shared table (server/carry_out.py).
_HANDLERS: dict[type, Callable[[Connection, Any], Awaitable[None]]] = {
    Send: Connection._send,
    type(NEED_DATA): Connection._need_data,
    Close: Connection._close,
    LoginSucceeded: Connection._login_succeeded,
    LoginFailed: Connection._login_failed,
    RetrieveMessage: Connection._retrieve,
    Pause: Connection._pause,
    StartTLS: Connection._start_tls,
    InstallLayer: Connection._install_layer,
    **dict.fromkeys(TABLE, Connection._carry_out),
}
