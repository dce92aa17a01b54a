"""The idle crowd of the scale figure: a load-generator process that holds many logged-in,
idle POP3 connections (plain, and over STLS) and, when told, has every one of them send
``NOOP`` and times the answer. It prints one JSON line per command on stdout and reads its
commands from stdin, one per line:

    open <plain-first> <plain-count> <stls-first> <stls-count>
        open and log in that many more connections (users bench<first> ...), at most
        --inflight logins at once; prints {"logged_in", "alive", "errors", "open_seconds"}
    noop <delay> <seconds> <rounds>
        after <delay> seconds, every connection sends NOOP <rounds> times, spread evenly
        over <seconds> (connection j of n sends at (k + j/n) * seconds/rounds for round k,
        or as soon as its previous answer is in), each waiting for its +OK; prints the
        latencies (ms) and what failed
    close
        abort every connection, print the process's CPU time and exit

This process shares the two cores with the server it measures, so the NOOP rounds cost as
little here as they can: the logins (not measured) run on blocking sockets in a thread pool,
and the rounds in one loop over ``epoll`` with the connections registered once, a ``send``
and a ``recv`` per NOOP and no task, future or timer per answer. Its CPU per NOOP fell from
171-207 µs (asyncio streams, one task per connection) to the figure in bench/RESULTS.md
section 19; every microsecond of it was one the server did not get.

The process raises its soft file-descriptor limit to the hard limit: each connection is a
socket here. Every wait is bounded (STEP_TIMEOUT per login step, --open-max per batch,
the round as a whole, --hold-max for the next command); end of input closes everything.
"""

from __future__ import annotations

import argparse
import heapq
import json
import resource
import select
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from client import HOST, STEP_TIMEOUT, TLS_NAME, ProtocolError, _reason, user_name, user_password

_LINE_MAX = 4096  # a POP3 status line is at most 512 octets (RFC 2449)


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Link:
    """One logged-in connection: its socket (an ``ssl.SSLSocket`` over STLS), non-blocking
    once logged in."""

    __slots__ = ("buffer", "dead", "offsets", "sent", "sock", "stls")

    def __init__(self, sock: socket.socket, stls: bool) -> None:
        self.sock = sock
        self.stls = stls
        self.buffer = b""
        self.sent = 0.0  # when the NOOP in flight went out; 0.0: none in flight
        self.offsets: list[float] = []  # this round's send times still to come, reversed
        self.dead = False


def _ok_line(sock: socket.socket, step: str) -> None:
    """Read one answer line (blocking, with the socket's timeout); ProtocolError unless +OK.
    Reads no further than the line: a POP3 server sends nothing unasked."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(_LINE_MAX)
        if not chunk:
            break
        line += chunk
        if len(line) > _LINE_MAX:
            break
    if not line.startswith(b"+OK"):
        raise ProtocolError(_reason(step, line))


def _command(sock: socket.socket, step: str, command: bytes) -> None:
    sock.sendall(command)
    _ok_line(sock, step)


def _login(port: int, index: int, stls: bool, context: ssl.SSLContext | None) -> socket.socket:
    """A logged-in connection for user ``index``, plain or after STLS (blocking)."""
    sock = socket.create_connection((HOST, port), timeout=STEP_TIMEOUT)
    try:
        _ok_line(sock, "greeting")
        if stls:
            assert context is not None
            _command(sock, "STLS", b"STLS\r\n")
            sock = context.wrap_socket(sock, server_hostname=TLS_NAME)
        _command(sock, "USER", f"USER {user_name(index)}\r\n".encode())
        _command(sock, "PASS", f"PASS {user_password(index)}\r\n".encode())
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _classify(exc: BaseException) -> str:
    if isinstance(exc, ProtocolError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"timeout (> {STEP_TIMEOUT:.0f} s for one step)"
    return f"{exc.__class__.__name__}: {exc}"


class Crowd:
    def __init__(self, port: int, context: ssl.SSLContext | None, inflight: int) -> None:
        self.port = port
        self.context = context
        self.inflight = inflight
        self.links: dict[int, Link] = {}  # by file descriptor
        self.errors: Counter[str] = Counter()
        self.poller = select.epoll()

    # --- open -----------------------------------------------------------------------------

    def open(self, jobs: list[tuple[int, bool]], open_max: float) -> dict[str, Any]:
        started = time.monotonic()
        late = threading.Event()  # set when the batch ran out of time: close what comes in
        pool = ThreadPoolExecutor(max_workers=self.inflight)

        def login(index: int, stls: bool) -> socket.socket:
            sock = _login(self.port, index, stls, self.context)
            if late.is_set():
                sock.close()
                raise TimeoutError("logged in after the batch's time")
            return sock

        futures = {pool.submit(login, index, stls): stls for index, stls in jobs}
        done, pending = wait(futures, timeout=open_max)
        late.set()
        for future in pending:
            future.cancel()
            self.errors[f"not logged in within {open_max:.0f} s"] += 1
        pool.shutdown(wait=False, cancel_futures=True)
        for future in done:
            self._adopt(future, futures[future])
        return {
            "logged_in": len(self.links),
            "alive": self.alive(),
            "errors": dict(self.errors),
            "open_seconds": time.monotonic() - started,
        }

    def _adopt(self, future: Future[socket.socket], stls: bool) -> None:
        exc = future.exception()
        if exc is not None:
            self.errors[_classify(exc)] += 1
            return
        sock = future.result()
        link = Link(sock, stls)
        self.links[sock.fileno()] = link
        self.poller.register(sock.fileno(), select.EPOLLIN)

    # --- reading ----------------------------------------------------------------------------

    def _read(self, link: Link) -> bytes | str:
        """What arrived (b"" for nothing usable yet), or why the connection is dead (it is
        then buried)."""
        try:
            data = link.sock.recv(_LINE_MAX)
        except (ssl.SSLWantReadError, BlockingIOError):
            return b""  # a TLS record not complete yet, or only a session ticket
        except (OSError, ssl.SSLError) as exc:
            return self._bury(link, f"NOOP: {_classify(exc)}")
        return data or self._bury(link, "NOOP: connection closed")

    def _bury(self, link: Link, reason: str) -> str:
        link.dead = True
        self.poller.unregister(link.sock.fileno())
        return reason

    def alive(self) -> int:
        """Connections still open: what the server closed meanwhile is read (EOF) first."""
        for fd, _ in self.poller.poll(0):
            self._read(self.links[fd])  # nothing is expected: EOF or an error buries it
        return sum(1 for link in self.links.values() if not link.dead)

    # --- the NOOP rounds --------------------------------------------------------------------

    def noop(self, delay: float, seconds: float, rounds: int) -> dict[str, Any]:
        start = time.monotonic() + delay
        links = [link for link in self.links.values() if not link.dead]
        count = max(1, len(links))
        period = seconds / max(1, rounds)
        due: list[tuple[float, int, int]] = []  # (time, tie-break, fd)
        for j, link in enumerate(links):
            link.offsets = [start + (k + j / count) * period for k in reversed(range(rounds))]
            link.sent, link.buffer = 0.0, b""
            due.append((link.offsets.pop(), j, link.sock.fileno()))
        heapq.heapify(due)
        plain: list[float] = []
        stls: list[float] = []
        errors: Counter[str] = Counter()
        waiting = 0  # NOOPs in flight
        bound = start + seconds + STEP_TIMEOUT + 5
        clock, poll, by_fd, tie = time.monotonic, self.poller.poll, self.links, len(links)
        while (due or waiting) and clock() < bound:
            now = clock()
            while due and due[0][0] <= now:
                link = by_fd[heapq.heappop(due)[2]]
                try:
                    link.sock.send(b"NOOP\r\n")
                except (OSError, ssl.SSLError) as exc:
                    errors[self._bury(link, f"NOOP: {_classify(exc)}")] += 1
                    continue
                link.sent = clock()
                waiting += 1
            timeout = min(0.05, max(0.0, due[0][0] - clock())) if due else 0.05
            for fd, _ in poll(timeout):
                link = by_fd[fd]
                if link.dead:
                    continue
                data = self._read(link)
                if not link.sent:
                    continue  # nothing asked: a late session ticket, or the server's close
                if isinstance(data, str):
                    errors[data] += 1
                    waiting -= 1
                    continue
                link.buffer += data
                if b"\n" not in link.buffer:
                    continue
                took = (clock() - link.sent) * 1000
                line, link.buffer, link.sent = link.buffer, b"", 0.0
                waiting -= 1
                if not line.startswith(b"+OK"):
                    errors[self._bury(link, _reason("NOOP", line))] += 1
                    continue
                (stls if link.stls else plain).append(round(took, 3))
                if link.offsets:
                    tie += 1
                    heapq.heappush(due, (link.offsets.pop(), tie, fd))
        for link in links:
            if link.sent and not link.dead:
                errors["NOOP: no answer within the bound"] += 1
            link.sent, link.offsets = 0.0, []
        return {"plain_ms": plain, "stls_ms": stls, "errors": dict(errors)}

    def close(self) -> dict[str, Any]:
        alive = self.alive()
        for link in self.links.values():
            link.sock.close()  # no QUIT, no TLS close_notify: as asyncio's abort() did
        self.poller.close()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "closed": len(self.links),
            "alive_at_close": alive,
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }


def _serve(args: argparse.Namespace) -> None:
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    crowd = Crowd(args.port, context, args.inflight)
    for _ in range(1000):  # commands; bounded
        words = _stdin_line(args.hold_max).split()
        if not words or words[0] == "close":
            break
        if words[0] == "open":
            plain_first, plain_count, stls_first, stls_count = map(int, words[1:5])
            if stls_count and context is None:
                raise SystemExit("crowd.py: STLS connections need --cafile")
            jobs = [(plain_first + i, False) for i in range(plain_count)]
            jobs += [(stls_first + i, True) for i in range(stls_count)]
            _say(crowd.open(jobs, args.open_max))
        elif words[0] == "noop":
            delay, seconds, rounds = float(words[1]), float(words[2]), int(words[3])
            result = crowd.noop(delay, seconds, rounds)
            result["alive"] = crowd.alive()
            _say(result)
    _say(crowd.close())


def _stdin_line(timeout: float) -> str:
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    return sys.stdin.readline() if ready else ""


def _say(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cafile", help="CA to verify the server with (STLS connections)")
    parser.add_argument("--inflight", type=int, default=64, help="logins in progress at once")
    parser.add_argument("--open-max", type=float, default=600.0, help="seconds per open")
    parser.add_argument("--hold-max", type=float, default=900.0, help="seconds per command")
    args = parser.parse_args()
    raise_fd_limit()
    _serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
