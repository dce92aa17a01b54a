"""Byte channels for one connection: a coroutine interface (read, write, start_tls, close)
over a socket or stdio, with flow control both ways and a stack of security layers.

* Input: received bytes wait in a small queue; past 256 KiB the transport stops reading, so a
  client that pipelines without end fills its own socket buffer, not our memory.
* Output: :meth:`Channel.write` waits while the transport is above its high-water mark, so a
  client that never reads cannot make the server buffer without bound.
* Security layers (``transport/layer.py``): TLS and SASL layers are sans-I/O filters in a
  :class:`LayerStack`. Raw bytes stay raw in the queue until :meth:`read` takes them, so
  bytes that arrived before a layer was pushed are unwrapped by it; only plaintext already
  handed up and not consumed (the session's trailing data) is given to the new layer by
  :meth:`push_layer`.
* STLS: :meth:`start_tls` drops every byte received in clear before the handshake (the
  session drops its own buffer too), then runs the handshake through the stack.

asyncio's own streams would do most of this, but STLS needs the read buffer emptied and
asyncio offers no public way to do that on a StreamReader; and asyncio's TLS keeps 256 KiB
per connection (``transport/tls_layer.py`` says why we run our own).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Callable
from typing import Protocol as TypingProtocol
from typing import cast

from OpenSSL import SSL

from pop3d.transport.layer import LayerError, LayerStack, SecurityLayer
from pop3d.transport.peer import peer_text
from pop3d.transport.tls_layer import TLSHandshakeError, TLSLayer

_READ_HIGH_WATER = 256 * 1024
_READ_CHUNK = 64 * 1024
# A lingering close (Channel.close) reads and drops at most this much, this long.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1024 * 1024


class ChannelClosed(ConnectionError):
    pass


class ByteChannel(TypingProtocol):
    peer: str
    local_address: str | None
    bytes_in: int  # octets on the wire, layers' framing and TLS handshakes included
    bytes_out: int

    async def read(self) -> bytes: ...

    def readable(self) -> asyncio.Future[None] | None: ...

    def read_inline(self, handler: Callable[[bytes], bool] | None) -> None: ...

    def write_now(self, data: bytes) -> bool: ...

    async def write(self, data: bytes) -> None: ...

    async def write_last(self, data: bytes) -> None: ...

    async def start_tls(
        self, context: SSL.Context, timeout: float, *, implicit: bool = False
    ) -> SSL.Connection: ...

    def push_layer(self, layer: SecurityLayer, trailing: bytes) -> None: ...

    def discard_input(self) -> None: ...

    def close(self, *, linger: bool = False) -> None: ...

    async def finished(self, stall: float) -> int: ...

    def lost(self) -> asyncio.Future[None] | None: ...

    def abort(self) -> None: ...

    def write_progress(self) -> float | None: ...

    @property
    def closed(self) -> bool: ...


class _Layered:
    """What both channels share: the layer stack over raw reads and writes."""

    # Slots, here and in both channels: an idle session is mostly such objects (bench/
    # RESULTS.md, section 14).
    __slots__ = (
        "_failure",
        "_held",
        "_plain",
        "_stack",
        "bytes_in",
        "bytes_out",
        "local_address",
    )

    def __init__(self) -> None:
        # The address the client connected to (no port), None where there is none (stdio).
        self.local_address: str | None = None
        self._stack = LayerStack()
        self._plain = b""  # unwrapped, not yet read: goes through a layer pushed now
        self._failure: LayerError | None = None
        # Wire bytes that go out in front of the next write, or at close: the TLS
        # handshake's last flight, a socket's last answer (write_last()).
        self._held = b""
        # Counted here, where every byte passes once, for the audit trail and metrics.
        self.bytes_in = 0
        self.bytes_out = 0

    async def _read_raw(self) -> bytes:
        raise NotImplementedError

    async def _write_raw(self, data: bytes) -> None:
        raise NotImplementedError

    def _discard_raw(self) -> None:
        raise NotImplementedError

    def readable(self) -> asyncio.Future[None] | None:
        """A future done when bytes or the end of input arrive, if nothing has yet; else
        None, and :meth:`read` (which waits by itself where this always says None). A
        session waiting for its next command waits on this future, not inside read(): two
        suspended coroutines fewer, 450 octets in every idle session (bench/RESULTS.md
        section 11)."""
        return None

    def read_inline(self, handler: Callable[[bytes], bool] | None) -> None:
        """While the future of :meth:`readable` is pending, plaintext that arrives may be
        given to ``handler`` at once, from the event loop's callback, instead of to
        :meth:`read`: the handler takes the bytes, and returns True to let the reader
        sleep on or False to wake it. None stops this. Only a socket channel does it (a
        NOOP answered so costs no task wake-up, no new future and no coroutine resumed:
        bench/RESULTS.md section 19); the others always wake the reader."""

    def write_now(self, data: bytes) -> bool:
        """Write ``data`` now, without waiting, if the channel takes it without waiting
        (no flow control holding writes back); False, and nothing written, if not."""
        return False

    def write_progress(self) -> float | None:
        """None unless a write is waiting for the client to take our output; then the
        event loop's time when the client last took some (0.0: not yet)."""
        return None

    def lost(self) -> asyncio.Future[None] | None:
        """A future done once the connection is gone for good (a reset, a close the
        server saw by failing to send), None where a channel cannot tell (stdio). A
        half-close is not that: such a client still reads its answers."""
        return None

    async def read(self) -> bytes:
        """Whatever plaintext has arrived, at least one byte; b"" at end of input. Raises
        :class:`LayerError` for a frame a layer refuses."""
        if self._failure is not None:
            raise self._failure  # a frame refused inline (Channel), while no one was reading
        while not self._plain:
            if self._stack.peer_closed:
                return b""
            raw = await self._read_raw()
            if not raw:
                return b""
            self.bytes_in += len(raw)
            if not self._stack:
                return raw
            self._plain, reply = self._stack.receive(raw)
            if reply:
                await self._send(reply)
        data, self._plain = self._plain, b""
        return data

    async def write(self, data: bytes) -> None:
        await self._send(self._stack.wrap(data) if self._stack else data)

    async def write_last(self, data: bytes) -> None:
        """The last bytes before the close (QUIT's answer): written now here; a socket
        channel sends them with the close instead, one send with TLS's close_notify."""
        await self.write(data)

    async def _send(self, raw: bytes) -> None:
        self.bytes_out += len(raw)
        if self._held:
            raw, self._held = self._held + raw, b""
        await self._write_raw(raw)

    def _take_held(self) -> bytes:
        held, self._held = self._held, b""
        return held

    def push_layer(self, layer: SecurityLayer, trailing: bytes) -> None:
        """From now on every byte goes through ``layer``; ``trailing`` (received after the
        exchange that set it up, not consumed) and buffered plaintext go through it first."""
        self._stack.push(layer)
        self._plain = layer.unwrap(trailing + self._plain)

    def discard_input(self) -> None:
        self._plain = b""
        self._discard_raw()

    async def start_tls(
        self, context: SSL.Context, timeout: float, *, implicit: bool = False
    ) -> SSL.Connection:
        """Drop what arrived in clear (after STLS: RFC 2595's injection), run a server
        handshake, push TLS on the stack. ``implicit`` (pop3s): nothing is dropped, what
        arrived is the ClientHello: dropped, a client that sent it before the session
        began to read waited for the timeout (``pop3d -X -s`` from inetd on a socket,
        every connection; found probing). Raises :class:`TLSHandshakeError`,
        ``TimeoutError`` or :class:`ChannelClosed`."""
        if not implicit:
            self.discard_input()
        layer = TLSLayer(context)
        async with asyncio.timeout(timeout):
            done = False
            while not done:
                data = await self.read()
                if not data:
                    raise ChannelClosed("connection closed during the TLS handshake")
                try:
                    done = layer.handshake(data)
                except TLSHandshakeError:
                    # the fatal alert that says why (protocol_version, ...), best effort
                    with contextlib.suppress(ChannelClosed, OSError):
                        await self.write(layer.outgoing())
                    raise
                reply = layer.outgoing()
                if done and layer.connection.get_protocol_version_name() == "TLSv1.3":
                    # TLS 1.3's last server flight is only the session tickets, sent once
                    # the client's Finished is in: the client waits for nothing in it, so
                    # it goes out with the first answer under TLS (the pop3s greeting),
                    # one send for both. (TLS 1.2's last flight is our Finished, which
                    # the client does wait for.)
                    self._held += reply
                    self.bytes_out += len(reply)
                elif reply:
                    await self.write(reply)
        self.push_layer(layer, b"")
        return layer.connection

    def _closing_bytes(self) -> bytes:
        """What goes out last: held bytes, then the layers' goodbyes (close_notify)."""
        held = self._take_held()
        try:
            goodbye = self._stack.close() if self._stack else b""
        except (LayerError, SSL.Error, ValueError):
            goodbye = b""
        return held + goodbye


class Channel(_Layered, asyncio.Protocol):
    """A socket connection. It is its own asyncio protocol, for its whole life."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_closed_waiter",
        "_drain_waiter",
        "_drained_at",
        "_eof",
        "_inline",
        "_linger_budget",
        "_lingering",
        "_loop",
        "_lost",
        "_lost_waiter",
        "_on_connected",
        "_peer_override",
        "_read_waiter",
        "_reading_paused",
        "_transport",
        "_write_paused",
        "peer",
    )

    def __init__(
        self, on_connected: Callable[[Channel], None] | None = None, peer: str | None = None
    ) -> None:
        super().__init__()
        self._on_connected = on_connected
        self._peer_override = peer
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._reading_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._inline: Callable[[bytes], bool] | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._drained_at = 0.0
        self._lost = False
        self._lost_waiter: asyncio.Future[None] | None = None  # lost()'s
        self._closed_waiter: asyncio.Future[None] | None = None
        self._lingering: asyncio.TimerHandle | None = None
        self._linger_budget = 0
        self.peer = "?"

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; another loop's (uvloop's) need not subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if self._peer_override:
            self.peer = self._peer_override
        elif isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = peer_text(str(peer[0]), peer[1])
        elif peer:
            self.peer = str(peer)
        else:
            self.peer = "[unix socket]"
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple) and local:
            self.local_address = str(local[0])
        if self._on_connected is not None:
            self._on_connected(self)

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            self._drop_lingering(len(data))
            return
        waiter = self._read_waiter
        if (
            self._inline is not None
            and waiter is not None
            and not waiter.done()
            and not self._chunks
            and not self._plain
            and not self._write_paused
        ):
            self._receive_inline(data, self._inline)
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _READ_HIGH_WATER and not self._reading_paused and self._transport:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        # Keep our side open: a client may send its commands and half-close (``nc -N``,
        # a script's shutdown(SHUT_WR)) and still read. The session answers what came
        # before the end of input, then sees it and closes.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        _release_read_callback(self._transport)
        if self._lingering is not None:
            self._lingering.cancel()  # else its timer holds the transport until it fires
        self._lost = True
        self._eof = True
        self._wake_reader()
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)
        if self._lost_waiter is not None and not self._lost_waiter.done():
            self._lost_waiter.set_result(None)
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ChannelClosed("connection lost"))

    def lost(self) -> asyncio.Future[None] | None:
        if self._lost_waiter is None:
            self._lost_waiter = self._loop.create_future()
            if self._lost:
                self._lost_waiter.set_result(None)
        return self._lost_waiter

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._drained_at = self._loop.time()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def readable(self) -> asyncio.Future[None] | None:
        if self._plain or self._chunks or self._eof or self._stack.peer_closed:
            return None
        self._read_waiter = self._loop.create_future()
        return self._read_waiter

    def _receive_inline(self, raw: bytes, handler: Callable[[bytes], bool]) -> None:
        """Bytes for a session waiting for its next command, served from this callback
        (see :meth:`read_inline`). What a layer refuses, or the peer's close under a
        layer, wakes the reader as read() would have found it."""
        self.bytes_in += len(raw)
        plain = raw
        if self._stack:
            try:
                plain, reply = self._stack.receive(raw)
            except LayerError as exc:
                self._failure = exc
                self._wake_reader()
                return
            if reply and not self.closed:
                self._write_now(reply)  # writes are not held back (data_received checked)
            if self._stack.peer_closed:
                self._plain = plain
                self._wake_reader()
                return
            if not plain:
                return  # part of a record, or a record with nothing for the session
        if not handler(plain):
            self._wake_reader()

    def write_now(self, data: bytes) -> bool:
        # Checked before wrapping: a TLS record made and not sent would break the stream.
        if self._write_paused or self.closed:
            return False
        self._write_now(self._stack.wrap(data) if self._stack else data)
        return True

    def _write_now(self, raw: bytes) -> None:
        """Wire bytes (an answer wrapped, or a layer's own reply) out now, held bytes first;
        the caller has checked that the transport is open and not holding writes back."""
        assert self._transport is not None
        self.bytes_out += len(raw)
        if self._held:
            raw, self._held = self._held + raw, b""
        self._transport.write(raw)

    def read_inline(self, handler: Callable[[bytes], bool] | None) -> None:
        self._inline = handler

    def _wake_reader(self) -> None:
        if self._read_waiter is not None and not self._read_waiter.done():
            self._read_waiter.set_result(None)

    # --- coroutine interface ----------------------------------------------------------

    async def _read_raw(self) -> bytes:
        while not self._chunks:
            if self._eof:
                return b""
            self._read_waiter = self._loop.create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        self._read_waiter = None  # readable()'s, done
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._reading_paused and self._transport is not None and not self._lost:
            self._reading_paused = False
            self._transport.resume_reading()
        return data

    async def _write_raw(self, data: bytes) -> None:
        if self.closed or self._transport is None:
            raise ChannelClosed("connection closed")
        self._transport.write(data)
        while self._write_paused:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def _discard_raw(self) -> None:
        self._chunks.clear()
        self._buffered = 0

    def close(self, *, linger: bool = False) -> None:
        """Send what is held and the layers' goodbyes, then close. ``linger``: the server
        ends the connection on its own while the client may still be sending (a shutdown,
        too many bad commands, the idle timeout). Closing a socket with input unread makes
        the kernel answer with a reset, and a reset can destroy our last answer in the
        client's buffer before the client reads it (a pipelining client, or one whose
        command crossed our close). So the channel half-closes instead, then reads and
        drops what still comes until the client closes, for at most ``_LINGER_SECONDS``
        and ``_LINGER_BYTES``: the "lingering close" of RFC 9112 section 9.6. What the
        client has not taken by then is dropped with the connection."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._lingering is not None:
            return
        if not self._lost:
            goodbye = self._closing_bytes()
            if goodbye:
                transport.write(goodbye)
            if linger and not self._eof and transport.can_write_eof():
                transport.write_eof()  # FIN once the answer is out
                # then abort, not close: close() would wait for a client that does not
                # read to take what is unsent, for ever
                self._lingering = self._loop.call_later(_LINGER_SECONDS, transport.abort)
                self._linger_budget = _LINGER_BYTES
                self._chunks.clear()
                self._buffered = 0
                self._inline = None
                if self._reading_paused:
                    self._reading_paused = False
                    transport.resume_reading()
                return
        transport.close()

    async def finished(self, stall: float) -> int:
        """After close(): until the socket is closed, the linger over or what was left
        unsent taken by the client. asyncio's close() waits for a client that reads
        nothing for ever (it keeps the window shut; nothing in TCP gives up), and the
        descriptor and the transport would outlive the session and escape ``maxchild``,
        which counts what this returns to. So a client that takes none of what is unsent
        for ``stall`` seconds (poptimeout: as for one that stops reading mid-session) is
        dropped with it. Returns the octets so dropped."""
        transport = self._transport
        if transport is None or self._lost:
            return 0
        unsent = transport.get_write_buffer_size()
        if not unsent and self._lingering is None:
            return 0  # nothing to wait for: the socket is closed at the loop's next turn
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            transport.abort()  # the session was cancelled (the worker's shutdown): no wait
            return unsent
        self._closed_waiter = waiter = self._loop.create_future()
        try:
            while True:
                await asyncio.wait((waiter,), timeout=stall)
                if self._lost:
                    return 0
                left = transport.get_write_buffer_size()
                if left >= unsent:
                    transport.abort()
                    return left
                unsent = left  # it took some: as a command would, that counts
        except asyncio.CancelledError:
            transport.abort()  # the worker's shutdown: its grace is over
            raise
        finally:
            self._closed_waiter = None

    def write_progress(self) -> float | None:
        return None if self._drain_waiter is None else self._drained_at

    def abort(self) -> None:
        # close() would wait, however long, for the client to take what is unsent.
        if self._transport is not None:
            self._transport.abort()

    def _drop_lingering(self, size: int) -> None:
        self._linger_budget -= size
        if self._linger_budget < 0 and self._transport is not None:
            self._transport.abort()  # it will not stop: the reset it gets is its own doing

    async def write_last(self, data: bytes) -> None:
        # Held, and written with the layers' goodbye by close(): the transport sends what
        # it can at once and keeps the rest until it is sent, before it closes the socket.
        # (Later writes, if any, still follow these bytes.)
        raw = self._stack.wrap(data) if self._stack else data
        self.bytes_out += len(raw)
        self._held += raw

    def refuse(self, reply: bytes) -> None:
        """Answer once (when ``reply`` is not empty) and close (over capacity, shutting
        down)."""
        if self._transport is not None:
            if reply:
                self._transport.write(reply)
            self._transport.close()

    @property
    def closed(self) -> bool:
        return (
            self._lost
            or self._lingering is not None
            or self._transport is None
            or self._transport.is_closing()
        )


def _release_read_callback(transport: asyncio.BaseTransport | None) -> None:
    """Python 3.11's socket transport keeps a bound method of itself (``_read_ready_cb``):
    a reference cycle, so every connection left its transport, socket and their extras (7
    objects) to the cycle collector, which a worker runs rarely (server/worker.py). Python
    3.12 drops the method when the transport closes (CPython gh-100348); this does the same
    once the transport is done with, and nothing where the attribute is absent."""
    if getattr(transport, "_read_ready_cb", None) is not None:
        transport._read_ready_cb = None  # type: ignore[union-attr]


class FdChannel(_Layered):
    """stdin/stdout that are not a socket (``pop3d -X`` under a test harness or a pipe from
    an inetd-style wrapper). Pipes and terminals are polled by the event loop in
    non-blocking mode (restored on close), so an idle timeout can end the session: a read
    blocked in a thread could not be interrupted. Regular files never block and are read
    directly."""

    __slots__ = (
        "_closed",
        "_loop",
        "_read_fd",
        "_restore",
        "_waiter",
        "_write_fd",
        "_write_waiting",
        "_written_at",
        "peer",
    )

    def __init__(self, read_fd: int, write_fd: int) -> None:
        super().__init__()
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._write_waiting = False
        self._written_at = 0.0
        self._restore: list[tuple[int, bool]] = []
        self._waiter: asyncio.Future[None] | None = None
        for fd in {read_fd, write_fd}:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                self._restore.append((fd, os.get_blocking(fd)))
                os.set_blocking(fd, False)
        self.peer = "[stdio]"

    async def _ready(self, fd: int, writing: bool) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()
        add, remove = (
            (self._loop.add_writer, self._loop.remove_writer)
            if writing
            else (self._loop.add_reader, self._loop.remove_reader)
        )

        def wake() -> None:
            if not waiter.done():
                waiter.set_result(None)

        add(fd, wake)
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None
            remove(fd)

    async def _read_raw(self) -> bytes:
        while not self._closed:
            try:
                return os.read(self._read_fd, _READ_CHUNK)
            except BlockingIOError:
                await self._ready(self._read_fd, writing=False)
            except OSError:
                return b""
        return b""

    async def _write_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._closed:
                raise ChannelClosed("closed")
            try:
                written = os.write(self._write_fd, view)
            except BlockingIOError:
                # The pipe is full: whoever is behind it (a wrapper, and its client) has
                # stopped taking our output for now; the idle timer watches this wait.
                self._write_waiting = True
                try:
                    await self._ready(self._write_fd, writing=True)
                finally:
                    self._write_waiting = False
                continue
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None
            self._written_at = self._loop.time()
            view = view[written:]

    def write_progress(self) -> float | None:
        return self._written_at if self._write_waiting else None

    def _discard_raw(self) -> None:
        pass  # nothing is read ahead

    def abort(self) -> None:
        self.close()  # stdio: nothing is held back to drop

    async def finished(self, stall: float) -> int:
        return 0  # close() has written what the pipe took: nothing is held to wait for

    def close(self, *, linger: bool = False) -> None:
        # A pipe has no reset to avoid: nothing to linger for.
        if self._closed:
            return
        goodbye = self._closing_bytes()
        if goodbye:  # best effort: a close_notify for a TLS peer on a pipe
            with contextlib.suppress(OSError):
                os.write(self._write_fd, goodbye)
        self._closed = True
        # A read or write waiting for the pipe ends now, as a socket's does when closed:
        # SIGTERM under -X closes an idle session this way (it waited for its client).
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        for fd, blocking in self._restore:
            with contextlib.suppress(OSError):
                os.set_blocking(fd, blocking)

    @property
    def closed(self) -> bool:
        return self._closed
