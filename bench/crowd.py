"""The idle crowd of the scale figure: a load-generator process that holds many logged-in,
idle POP3 connections (plain, and over STLS) and, when told, has every one of them send
``NOOP`` and times the answer. It prints one JSON line per command on stdout and reads its
commands from stdin, one per line:

    open <plain-first> <plain-count> <stls-first> <stls-count>
        open and log in that many more connections (users bench<first> ...), at most
        --inflight logins at once; prints {"logged_in", "alive", "errors", "open_seconds"}
    noop <delay> <seconds> <rounds>
        after <delay> seconds, every connection sends NOOP <rounds> times, spread evenly
        over <seconds> (connection j of n sends at (k + j/n) * seconds/rounds for round k),
        each waiting for its +OK; prints the latencies (ms) and what failed
    close
        abort every connection, print the process's CPU time and exit

The process raises its soft file-descriptor limit to the hard limit: each connection is a
socket here. Every wait is bounded (STEP_TIMEOUT per answer, --open-max per batch,
--hold-max for the next command); end of input closes everything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import ssl
import sys
import time
from collections import Counter
from typing import Any

from client import (
    HOST,
    STEP_TIMEOUT,
    TLS_NAME,
    ProtocolError,
    _classify,
    _command,
    _login,
    _ok_line,
    _reason,
)

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def _open(
    port: int, index: int, stls: bool, context: ssl.SSLContext | None, gate: asyncio.Semaphore
) -> tuple[Connection | None, str | None]:
    async with gate:
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, port), STEP_TIMEOUT
            )
            if stls:
                assert context is not None
                await _ok_line(reader, "greeting")
                await _command(reader, writer, "STLS", b"STLS\r\n")
                await asyncio.wait_for(
                    writer.start_tls(
                        context, server_hostname=TLS_NAME, ssl_handshake_timeout=STEP_TIMEOUT
                    ),
                    STEP_TIMEOUT,
                )
                await _command(reader, writer, "USER", f"USER bench{index}\r\n".encode())
                await _command(reader, writer, "PASS", f"PASS bench-pw-{index}\r\n".encode())
            else:
                await _login(reader, writer, index)
            return (reader, writer), None
        except (ProtocolError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            if writer is not None:
                writer.transport.abort()
            return None, _classify(exc)


def _alive(connections: list[tuple[Connection, bool]]) -> int:
    return sum(
        1
        for (reader, writer), _ in connections
        if not reader.at_eof() and not writer.transport.is_closing()
    )


async def _noop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One NOOP and its +OK. No timeout per answer here (asyncio.wait_for makes a task and
    a timer for each): _noop_all bounds the whole round instead. This process shares the
    cores with the server, and every CPU cycle it spends the server does not get."""
    writer.write(b"NOOP\r\n")
    line = await reader.readline()
    if not line.startswith(b"+OK"):
        raise ProtocolError(_reason("NOOP", line))


async def _noop_one(
    connection: Connection, offsets: list[float], start: float
) -> tuple[list[float], list[str]]:
    reader, writer = connection
    latencies: list[float] = []
    errors: list[str] = []
    for offset in offsets:
        await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
        sent = time.monotonic()
        try:
            await _noop(reader, writer)
        except (ProtocolError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            errors.append(_classify(exc))
            return latencies, errors  # the connection is no use any more
        latencies.append((time.monotonic() - sent) * 1000)
    return latencies, errors


async def _noop_all(
    connections: list[tuple[Connection, bool]], delay: float, seconds: float, rounds: int
) -> dict[str, Any]:
    start = time.monotonic() + delay
    count = len(connections)
    period = seconds / max(1, rounds)
    tasks = []
    for j, (connection, _) in enumerate(connections):
        offsets = [(k + j / max(1, count)) * period for k in range(rounds)]
        tasks.append(asyncio.create_task(_noop_one(connection, offsets, start)))
    bound = delay + seconds + STEP_TIMEOUT + 5
    done, pending = await asyncio.wait(tasks, timeout=bound) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    plain: list[float] = []
    stls: list[float] = []
    errors: Counter[str] = Counter()
    for task, (_, is_stls) in zip(tasks, connections, strict=True):
        if task not in done:
            errors["NOOP: no answer within the bound"] += 1
            continue
        latencies, failed = task.result()
        (stls if is_stls else plain).extend(round(x, 3) for x in latencies)
        errors.update(failed)
    return {"plain_ms": plain, "stls_ms": stls, "errors": dict(errors)}


async def _serve(args: argparse.Namespace) -> None:
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    gate = asyncio.Semaphore(args.inflight)
    loop = asyncio.get_running_loop()
    connections: list[tuple[Connection, bool]] = []
    errors: Counter[str] = Counter()
    for _ in range(1000):  # commands; bounded
        line = await loop.run_in_executor(None, _stdin_line, args.hold_max)
        words = line.split()
        if not words or words[0] == "close":
            break
        if words[0] == "open":
            plain_first, plain_count, stls_first, stls_count = map(int, words[1:5])
            if stls_count and context is None:
                raise SystemExit("crowd.py: STLS connections need --cafile")
            started = time.monotonic()
            jobs = [
                _open(args.port, plain_first + i, False, None, gate) for i in range(plain_count)
            ]
            jobs += [
                _open(args.port, stls_first + i, True, context, gate) for i in range(stls_count)
            ]
            kinds = [False] * plain_count + [True] * stls_count
            try:
                results = await asyncio.wait_for(asyncio.gather(*jobs), args.open_max)
            except TimeoutError:
                results = [(None, f"not logged in within {args.open_max:.0f} s")] * len(jobs)
            for (connection, error), kind in zip(results, kinds, strict=True):
                if connection is not None:
                    connections.append((connection, kind))
                else:
                    errors[str(error)] += 1
            _say(
                {
                    "logged_in": len(connections),
                    "alive": _alive(connections),
                    "errors": dict(errors),
                    "open_seconds": time.monotonic() - started,
                }
            )
        elif words[0] == "noop":
            delay, seconds, rounds = float(words[1]), float(words[2]), int(words[3])
            result = await _noop_all(connections, delay, seconds, rounds)
            result["alive"] = _alive(connections)
            _say(result)
    alive = _alive(connections)
    for (_, writer), _ in connections:
        writer.transport.abort()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _say(
        {
            "closed": len(connections),
            "alive_at_close": alive,
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }
    )


def _stdin_line(timeout: float) -> str:
    import select

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
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
