"""The load generator: a separate process (and, for many clients, several) that drives a
POP3 server on loopback and prints one JSON object on stdout.

    client.py sessions --port P --clients N [--procs K] --warmup S --duration S
                       [--transport plain|pop3s|stls --cafile CA]
                       [--auth pass|plain|scram-sha-256|gssapi [--ccache-dir D]]
                       [--no-mail] [--resume]
    client.py retr     --port P --user U --password W --count N [--tls --cafile CA]
                       [--gssapi integrity|confidentiality --ccache-dir D]
    client.py idle     --port P --batches N,M,... [--tls --cafile CA]

``sessions``: N clients, each with its own user (bench<i>, password bench-pw-<i>), each
repeating connect / USER / PASS / STAT / RETR 1 / QUIT. Only sessions that got "+OK" for
every step *and* finished inside the measurement window count; failures are counted by
reason. The N clients are spread over K processes, each an asyncio loop.
``--transport pop3s``: TLS right after connecting (implicit TLS); ``stls``: greeting, STLS,
then TLS; either way a full handshake every session (no resumption), verifying the
server's certificate against ``--cafile`` for the name "localhost". ``--auth plain``:
``AUTH PLAIN`` with an initial response instead of USER/PASS; ``--auth scram-sha-256``:
``AUTH SCRAM-SHA-256`` driven by scramp (whose PBKDF2 runs here, in the load generator),
which also verifies the server's signature; ``--auth gssapi``: ``AUTH GSSAPI`` (RFC 4752)
with no security layer, by python-gssapi (MIT) from the user's ticket cache
``<ccache-dir>/<user>.cc``, mutual authentication checked. ``--no-mail``: no STAT/RETR,
QUIT right after the login (a "login" rather than a session). ``--resume`` (TLS): each
client offers the session of its previous connection, as a polling mail client does
(Python's ``session=``), so the server may skip the full handshake; the result counts the
connections that were resumed.

``retr``: one client, one session per repetition; times RETR 1 from the moment the
command is sent to the moment the final ".\\r\\n" is read, and checks the octet count;
``--tls``: over implicit TLS (pop3s); ``--gssapi integrity|confidentiality``: logged in
with AUTH GSSAPI, RETR through the negotiated layer (every octet in 4-octet-length-prefixed
GSS wrap tokens), each token unwrapped here.

``idle``: opens connections in batches (user bench<i> each; ``--tls``: over pop3s) and logs
them all in; after
each batch prints a JSON line and waits for a line on stdin (or --hold-max seconds); then
closes them all and prints a last JSON line.

Every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import contextvars
import json
import multiprocessing
import os
import resource
import select
import socket
import ssl
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
STEP_TIMEOUT = 60.0  # one command/response round trip
MAX_SESSIONS_PER_CLIENT = 1_000_000
STREAM_LIMIT = 1 << 20
TLS_NAME = "localhost"  # the name on the bench certificate (servers.make_tls)


def user_name(index: int) -> str:
    return f"bench{index}"


def user_password(index: int) -> str:
    return f"bench-pw-{index}"


class ProtocolError(Exception):
    """A server answer that was not +OK; the message is the reason we count."""


def _reason(step: str, line: bytes) -> str:
    text = line.decode("utf-8", "replace").strip()
    return f"{step}: {text[:120] or '(connection closed)'}"


async def _ok_line(reader: asyncio.StreamReader, step: str) -> bytes:
    line = await asyncio.wait_for(reader.readline(), STEP_TIMEOUT)
    if not line.startswith(b"+OK"):
        raise ProtocolError(_reason(step, line))
    return line


async def _command(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, step: str, command: bytes
) -> bytes:
    writer.write(command)
    return await _ok_line(reader, step)


async def _login(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
    await _ok_line(reader, "greeting")
    await _command(reader, writer, "USER", f"USER {user_name(index)}\r\n".encode())
    await _command(reader, writer, "PASS", f"PASS {user_password(index)}\r\n".encode())


@dataclass(frozen=True)
class Plan:
    """What one session does: transport, login method, and whether it reads mail."""

    transport: str = "plain"  # plain | pop3s | stls
    auth: str = "pass"  # pass (USER/PASS) | plain (AUTH PLAIN) | scram-sha-256 | ...
    mail: bool = True  # STAT and RETR 1 between the login and QUIT
    cafile: str | None = None
    ccache_dir: str | None = None  # --auth gssapi: <ccache_dir>/<user>.cc
    resume: bool = False  # TLS: offer the previous connection's session

    def tls_context(self) -> ssl.SSLContext | None:
        """A client context as a mail client makes one (Python's defaults: TLS 1.2 and
        1.3, OpenSSL's default TLS 1.3 suites, certificate and name verified)."""
        if self.transport == "plain":
            return None
        if self.resume:
            return resuming_context(self.cafile)
        return ssl.create_default_context(cafile=self.cafile)


# --resume: the session each client (by index) got last, and the one the connection being
# made offers. asyncio gives no way to pass ``session=`` to its TLS; it calls
# ``wrap_bio`` in the task that connects, so a context variable carries it there.
_SESSIONS: dict[int, ssl.SSLSession] = {}
_OFFER: contextvars.ContextVar[ssl.SSLSession | None] = contextvars.ContextVar(
    "offer", default=None
)


class _ResumingContext(ssl.SSLContext):
    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        if kwargs.get("session") is None:
            kwargs["session"] = _OFFER.get()
        return super().wrap_bio(*args, **kwargs)


def resuming_context(cafile: str | None) -> ssl.SSLContext:
    """Python's default client context (as ``ssl.create_default_context``) that offers
    the session in ``_OFFER``."""
    context = _ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=cafile)
    return context


def _tls_description(writer: asyncio.StreamWriter) -> str:
    tls = writer.get_extra_info("ssl_object")
    if tls is None:
        return "no TLS"
    cipher = tls.cipher()
    resumed = " (resumed)" if tls.session_reused else ""
    return f"{tls.version()} {cipher[0] if cipher else '?'}{resumed}"


async def _continuation(reader: asyncio.StreamReader, step: str) -> bytes:
    """A SASL challenge line ("+ base64"); its decoded payload."""
    line = await asyncio.wait_for(reader.readline(), STEP_TIMEOUT)
    if not line.startswith(b"+ ") and line.rstrip(b"\r\n") != b"+":
        raise ProtocolError(_reason(step, line))
    try:
        return base64.b64decode(line[2:].strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(_reason(step + " (bad base64)", line)) from None


async def _scram(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int, mechanism: str
) -> None:
    import scramp

    step = f"AUTH {mechanism}"
    client = scramp.ScramClient([mechanism], user_name(index), user_password(index))
    first = base64.b64encode(client.get_client_first().encode())
    writer.write(f"{step} ".encode() + first + b"\r\n")
    try:
        server_first = await _continuation(reader, f"{step} (server-first)")
        client.set_server_first(server_first.decode())
        # PBKDF2 (scram_iterations, 4096) runs here, on this event loop, in this process
        writer.write(base64.b64encode(client.get_client_final().encode()) + b"\r\n")
        server_final = await _continuation(reader, f"{step} (server-final)")
        client.set_server_final(server_final.decode())  # checks the server's signature
    except (scramp.ScramException, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{step}: {exc.__class__.__name__}: {exc}"[:160]) from None
    await _command(reader, writer, f"{step} (outcome)", b"\r\n")


GSSAPI_SERVICE = "pop@localhost"  # the bench keytab's pop/localhost (servers.Kerberos)
GSSAPI_LAYERS = {"none": 1, "integrity": 2, "confidentiality": 4}  # RFC 4752 bits
GSSAPI_MAX_BUFFER = 65536  # what the client takes per wrapped frame (Cyrus SASL's default)


class GssapiLogin:
    """RFC 4752's client side over python-gssapi (MIT's initiator): a context from the
    user's ticket cache, then the layer choice. After the first login the service ticket
    is in the cache, so a login costs the client no KDC round trip."""

    def __init__(self, user: str, ccache_dir: str, layer: str) -> None:
        import gssapi
        import gssapi.raw as gr

        credentials = gssapi.Credentials(
            usage="initiate", store={"ccache": f"FILE:{ccache_dir}/{user}.cc"}
        )
        flags = (
            gr.RequirementFlag.mutual_authentication
            | gr.RequirementFlag.integrity
            | gr.RequirementFlag.confidentiality
            | gr.RequirementFlag.replay_detection
            | gr.RequirementFlag.out_of_sequence_detection
        )
        self.ctx = gssapi.SecurityContext(
            name=gssapi.Name(GSSAPI_SERVICE, gssapi.NameType.hostbased_service),
            usage="initiate",
            mech=gssapi.MechType.kerberos,
            creds=credentials,
            flags=flags,
        )
        self.layer = GSSAPI_LAYERS[layer]
        self.chosen = False

    def initial(self) -> bytes:
        return bytes(self.ctx.step() or b"")

    def respond(self, challenge: bytes) -> bytes:
        if not self.ctx.complete:
            return bytes(self.ctx.step(challenge) or b"")
        if not challenge:
            return b""
        offer = self.ctx.unwrap(challenge).message
        if len(offer) != 4 or not offer[0] & self.layer:
            raise ProtocolError(f"AUTH GSSAPI: layer {self.layer} not offered ({offer!r})")
        self.chosen = True
        choice = bytes([self.layer]) + GSSAPI_MAX_BUFFER.to_bytes(3, "big")
        return bytes(self.ctx.wrap(choice, False).message)


async def _gssapi(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int, ccache_dir: str
) -> None:
    import gssapi

    step = "AUTH GSSAPI"
    try:
        login = GssapiLogin(user_name(index), ccache_dir, "none")
        writer.write(b"AUTH GSSAPI " + base64.b64encode(login.initial()) + b"\r\n")
        for _ in range(10):
            line = await asyncio.wait_for(reader.readline(), STEP_TIMEOUT)
            if line.startswith(b"+OK"):
                if not login.chosen:
                    raise ProtocolError(f"{step}: +OK before the layer choice")
                return
            if not line.startswith(b"+ ") and line.rstrip(b"\r\n") != b"+":
                raise ProtocolError(_reason(step, line))
            challenge = base64.b64decode(line[2:].strip(), validate=True)
            writer.write(base64.b64encode(login.respond(challenge)) + b"\r\n")
    except (gssapi.exceptions.GSSError, binascii.Error, ValueError) as exc:
        raise ProtocolError(f"{step}: {exc.__class__.__name__}: {exc}"[:160]) from None
    raise ProtocolError(f"{step}: too many round trips")


async def _authenticate(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    index: int,
    method: str,
    ccache_dir: str | None = None,
) -> None:
    if method == "pass":
        await _command(reader, writer, "USER", f"USER {user_name(index)}\r\n".encode())
        await _command(reader, writer, "PASS", f"PASS {user_password(index)}\r\n".encode())
    elif method == "plain":
        token = base64.b64encode(f"\0{user_name(index)}\0{user_password(index)}".encode())
        await _command(reader, writer, "AUTH PLAIN", b"AUTH PLAIN " + token + b"\r\n")
    elif method.startswith("scram-"):
        await _scram(reader, writer, index, method.upper())
    elif method == "gssapi":
        assert ccache_dir is not None
        await _gssapi(reader, writer, index, ccache_dir)
    else:
        raise ValueError(f"unknown login method {method!r}")


async def one_session(
    port: int, index: int, plan: Plan = Plan(), context: ssl.SSLContext | None = None
) -> str | None:
    """One session as ``plan`` says; returns the negotiated TLS version and cipher."""
    implicit = context if plan.transport == "pop3s" else None
    if plan.resume:
        _OFFER.set(_SESSIONS.get(index))  # this task's own context
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            HOST,
            port,
            limit=STREAM_LIMIT,
            ssl=implicit,
            server_hostname=TLS_NAME if implicit is not None else None,
            ssl_handshake_timeout=STEP_TIMEOUT if implicit is not None else None,
        ),
        STEP_TIMEOUT,
    )
    try:
        await _ok_line(reader, "greeting")
        if plan.transport == "stls":
            assert context is not None
            await _command(reader, writer, "STLS", b"STLS\r\n")
            await asyncio.wait_for(
                writer.start_tls(
                    context, server_hostname=TLS_NAME, ssl_handshake_timeout=STEP_TIMEOUT
                ),
                STEP_TIMEOUT,
            )
        negotiated = _tls_description(writer) if context is not None else None
        await _authenticate(reader, writer, index, plan.auth, plan.ccache_dir)
        if plan.mail:
            await _command(reader, writer, "STAT", b"STAT\r\n")
            writer.write(b"RETR 1\r\n")
            response = await asyncio.wait_for(reader.readuntil(b"\r\n.\r\n"), STEP_TIMEOUT)
            if not response.startswith(b"+OK"):
                raise ProtocolError(_reason("RETR", response.split(b"\r\n", 1)[0]))
        await _command(reader, writer, "QUIT", b"QUIT\r\n")
        tls = writer.get_extra_info("ssl_object")
        if plan.resume and tls is not None and tls.session is not None:
            _SESSIONS[index] = tls.session  # with the tickets that came after the handshake
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await asyncio.wait_for(writer.wait_closed(), STEP_TIMEOUT)
    return negotiated


def _classify(exc: BaseException) -> str:
    if isinstance(exc, ProtocolError):
        return str(exc)
    if isinstance(exc, asyncio.IncompleteReadError):
        return f"connection closed mid-response after {len(exc.partial)} bytes"
    if isinstance(exc, TimeoutError):
        return f"timeout (> {STEP_TIMEOUT:.0f} s for one step)"
    return f"{exc.__class__.__name__}: {exc}"


@dataclass
class Tally:
    ok: int = 0
    warmup_ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    tls: Counter[str] = field(default_factory=Counter)  # negotiated version and cipher


async def _client_loop(
    port: int,
    index: int,
    measure_from: float,
    measure_to: float,
    tally: Tally,
    *,
    plan: Plan,
    context: ssl.SSLContext | None,
) -> None:
    for _ in range(MAX_SESSIONS_PER_CLIENT):
        start = time.monotonic()
        if start >= measure_to:
            return
        try:
            negotiated = await one_session(port, index, plan, context)
        except (ProtocolError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            end = time.monotonic()
            if measure_from <= end <= measure_to:
                tally.errors[_classify(exc)] += 1
            await asyncio.sleep(0.01)  # a failing server must not turn this into a busy loop
            continue
        end = time.monotonic()
        if negotiated is not None:
            tally.tls[negotiated] += 1
        if end < measure_from:
            tally.warmup_ok += 1
        elif end <= measure_to:
            tally.ok += 1
            tally.latencies.append(end - start)


async def _sessions_process(
    port: int, indexes: list[int], start_at: float, warmup: float, duration: float, *, plan: Plan
) -> dict[str, Any]:
    context = plan.tls_context()
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    measure_from = start_at + warmup
    measure_to = measure_from + duration
    tally = Tally()
    # This process's CPU time at the start and end of the counted window (the loop's clock
    # is time.monotonic), so CPU per counted session leaves out start-up and warm-up.
    marks: dict[str, float] = {}

    def mark(name: str) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        marks[name] = usage.ru_utime + usage.ru_stime

    loop = asyncio.get_running_loop()
    loop.call_at(measure_from, mark, "from")
    loop.call_at(measure_to, mark, "to")
    tasks = [
        asyncio.create_task(
            _client_loop(port, i, measure_from, measure_to, tally, plan=plan, context=context)
        )
        for i in indexes
    ]
    # In-flight sessions at the end are not counted; give them one step timeout to finish.
    done, pending = await asyncio.wait(tasks, timeout=warmup + duration + STEP_TIMEOUT + 5)
    for task in pending:
        task.cancel()
    for task in done:
        if task.exception() is not None:
            tally.errors[_classify(task.exception())] += 1  # type: ignore[arg-type]
    return {
        "ok": tally.ok,
        "warmup_ok": tally.warmup_ok,
        "errors": dict(tally.errors),
        "latencies": tally.latencies,
        "unfinished_clients": len(pending),
        "tls": dict(tally.tls),
        "window_cpu": marks["to"] - marks["from"] if len(marks) == 2 else None,
    }


def _sessions_worker(
    job: tuple[int, list[int], float, float, float],
    plan: Plan,
    queue: multiprocessing.Queue[dict[str, Any]],
) -> None:
    result = asyncio.run(_sessions_process(*job, plan=plan))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu"] = usage.ru_utime + usage.ru_stime
    queue.put(result)


def run_sessions(args: argparse.Namespace) -> dict[str, Any]:
    clients = args.clients
    procs = max(1, min(args.procs, clients))
    groups = [list(range(args.first + p, args.first + clients, procs)) for p in range(procs)]
    plan = Plan(
        args.transport, args.auth, not args.no_mail, args.cafile, args.ccache_dir, args.resume
    )
    if plan.transport != "plain" and not plan.cafile:
        raise SystemExit("client.py: --transport pop3s/stls needs --cafile")
    if plan.auth.startswith("scram-"):
        import scramp  # noqa: F401  (imported before the fork, not inside the window)
    if plan.auth == "gssapi":
        if not plan.ccache_dir:
            raise SystemExit("client.py: --auth gssapi needs --ccache-dir")
        import gssapi  # noqa: F401  (imported before the fork, not inside the window)
    start_at = time.monotonic() + 1.0  # every process starts its clients at the same moment
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[dict[str, Any]] = context.Queue()
    workers = [
        context.Process(
            target=_sessions_worker,
            args=((args.port, group, start_at, args.warmup, args.duration), plan, queue),
        )
        for group in groups
    ]
    for worker in workers:
        worker.start()
    deadline = start_at + args.warmup + args.duration + STEP_TIMEOUT + 30
    results = []
    for _ in workers:
        with contextlib.suppress(Exception):
            results.append(queue.get(timeout=max(1.0, deadline - time.monotonic())))
    for worker in workers:
        worker.join(timeout=5)
        if worker.is_alive():
            worker.kill()
            worker.join()
    errors: Counter[str] = Counter()
    negotiated: Counter[str] = Counter()
    latencies: list[float] = []
    for result in results:
        errors.update(result["errors"])
        negotiated.update(result["tls"])
        latencies += result["latencies"]
    if len(results) < len(workers):
        errors["load generator process lost"] += len(workers) - len(results)
    ok = sum(r["ok"] for r in results)
    latencies.sort()

    def percentile(q: float) -> float | None:
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "clients": clients,
        "procs": procs,
        "transport": plan.transport,
        "auth": plan.auth,
        "mail": plan.mail,
        "duration": args.duration,
        "warmup": args.warmup,
        "ok": ok,
        "warmup_ok": sum(r["warmup_ok"] for r in results),
        "sessions_per_s": ok / args.duration,
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "latency_ms": {"p50": percentile(0.5), "p90": percentile(0.9), "p99": percentile(0.99)},
        "unfinished_clients": sum(r["unfinished_clients"] for r in results),
        "client_cpu_s": sum(r["cpu"] for r in results),
        "client_window_cpu_s": None
        if any(r["window_cpu"] is None for r in results)
        else sum(r["window_cpu"] for r in results),
        "tls": dict(negotiated),
        "tls_resumed": sum(n for what, n in negotiated.items() if what.endswith("(resumed)")),
    }


# --- RETR throughput (blocking sockets: one client, nothing to multiplex) -------------


class LineSocket:
    def __init__(self, port: int, timeout: float, context: ssl.SSLContext | None = None) -> None:
        raw = socket.create_connection((HOST, port), timeout)
        self.sock: socket.socket = raw
        if context is not None:
            try:
                self.sock = context.wrap_socket(raw, server_hostname=TLS_NAME)
            except BaseException:
                raw.close()
                raise
        self.sock.settimeout(timeout)
        self.buffer = b""

    def negotiated(self) -> str | None:
        if not isinstance(self.sock, ssl.SSLSocket):
            return None
        cipher = self.sock.cipher()
        return f"{self.sock.version()} {cipher[0] if cipher else '?'}"

    def line(self, step: str) -> bytes:
        for _ in range(10_000):
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line, self.buffer = self.buffer[: end + 2], self.buffer[end + 2 :]
                if not line.startswith(b"+OK"):
                    raise ProtocolError(_reason(step, line))
                return line
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ProtocolError(_reason(step, self.buffer))
            self.buffer += chunk
        raise ProtocolError(f"{step}: line too long")

    def command(self, step: str, data: bytes) -> bytes:
        self.sock.sendall(data)
        return self.line(step)

    def close(self) -> None:
        self.sock.close()


def timed_retr(
    port: int,
    user: str,
    password: str,
    expect_octets: int,
    context: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    """Over TLS, recv_into returns at most one TLS record (16 KiB) per call."""
    conn = LineSocket(port, STEP_TIMEOUT, context)
    try:
        conn.line("greeting")
        conn.command("USER", f"USER {user}\r\n".encode())
        conn.command("PASS", f"PASS {password}\r\n".encode())
        buffer = bytearray(4 << 20)
        view = memoryview(buffer)
        received = 0
        tail = b""
        limit = expect_octets * 2 + (1 << 20)
        sock = conn.sock
        started = time.perf_counter()
        sock.sendall(b"RETR 1\r\n")
        first = conn.buffer
        conn.buffer = b""
        received = len(first)
        tail = first[-5:]
        while not (tail.endswith(b"\r\n.\r\n") and received > 5):
            if received > limit:
                raise ProtocolError(f"RETR: more than {limit} bytes without the final dot")
            count = sock.recv_into(view)
            if count == 0:
                raise ProtocolError(f"RETR: connection closed after {received} bytes")
            if received == 0 and not bytes(view[:3]) == b"+OK":
                raise ProtocolError(_reason("RETR", bytes(view[: min(count, 120)])))
            received += count
            tail = (tail + bytes(view[max(0, count - 5) : count]))[-5:]
        elapsed = time.perf_counter() - started
        conn.command("QUIT", b"QUIT\r\n")
        negotiated = conn.negotiated()
    finally:
        conn.close()
    return {"seconds": elapsed, "wire_bytes": received, "tls": negotiated}


class Frames:
    """Wrapped frames of a GSSAPI layer off a blocking socket: 4-octet length + token, each
    unwrapped as it comes (no growing buffer of the answer is ever copied)."""

    def __init__(self, sock: socket.socket, ctx: Any, confidential: bool, rest: bytes) -> None:
        self.sock, self.ctx, self.confidential = sock, ctx, confidential
        self.raw = bytearray(rest)
        self.chunk = bytearray(1 << 20)
        self.view = memoryview(self.chunk)

    def send(self, data: bytes) -> None:
        token = self.ctx.wrap(data, self.confidential).message
        self.sock.sendall(len(token).to_bytes(4, "big") + token)

    def frame(self) -> bytes:
        """The next frame's plaintext."""
        raw = self.raw
        while True:
            if len(raw) >= 4:
                size = int.from_bytes(raw[:4], "big")
                if size > GSSAPI_MAX_BUFFER:
                    raise ProtocolError(f"RETR: a {size}-octet frame (max {GSSAPI_MAX_BUFFER})")
                if len(raw) >= 4 + size:
                    token = bytes(raw[4 : 4 + size])
                    del raw[: 4 + size]  # from the front: CPython moves a start offset
                    return bytes(self.ctx.unwrap(token).message)
            count = self.sock.recv_into(self.view)
            if count == 0:
                raise ProtocolError("RETR: connection closed mid-frame")
            raw += self.view[:count]


def gssapi_retr(
    port: int, user: str, expect_octets: int, ccache_dir: str, layer: str
) -> dict[str, Any]:
    """Log in with AUTH GSSAPI choosing ``layer``, then time RETR 1 through it."""
    conn = LineSocket(port, STEP_TIMEOUT)
    try:
        conn.line("greeting")
        login = GssapiLogin(user, ccache_dir, layer)
        conn.sock.sendall(b"AUTH GSSAPI " + base64.b64encode(login.initial()) + b"\r\n")
        for _ in range(10):
            end = conn.buffer.find(b"\r\n")
            while end < 0:
                chunk = conn.sock.recv(65536)
                if not chunk:
                    raise ProtocolError("AUTH GSSAPI: connection closed")
                conn.buffer += chunk
                end = conn.buffer.find(b"\r\n")
            line, conn.buffer = conn.buffer[: end + 2], conn.buffer[end + 2 :]
            if line.startswith(b"+OK"):
                break
            if not line.startswith(b"+"):
                raise ProtocolError(_reason("AUTH GSSAPI", line))
            challenge = base64.b64decode(line[2:].strip())
            conn.sock.sendall(base64.b64encode(login.respond(challenge)) + b"\r\n")
        else:
            raise ProtocolError("AUTH GSSAPI: too many round trips")
        frames = Frames(conn.sock, login.ctx, layer == "confidentiality", conn.buffer)
        conn.buffer = b""
        started = time.perf_counter()
        frames.send(b"RETR 1\r\n")
        received = 0
        first = b""
        tail = b""
        limit = expect_octets * 2 + (1 << 20)
        while not (tail.endswith(b"\r\n.\r\n") and received > 5):
            if received > limit:
                raise ProtocolError(f"RETR: more than {limit} bytes without the final dot")
            piece = frames.frame()
            if not first:
                first = piece[:3]
                if first != b"+OK":
                    raise ProtocolError(_reason("RETR", piece[:120]))
            received += len(piece)
            tail = (tail + piece[-5:])[-5:]
        elapsed = time.perf_counter() - started
        frames.send(b"QUIT\r\n")
        goodbye = frames.frame()
        if not goodbye.startswith(b"+OK"):
            raise ProtocolError(_reason("QUIT", goodbye))
    finally:
        conn.close()
    return {"seconds": elapsed, "wire_bytes": received, "tls": None, "gssapi": layer}


def run_retr(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    errors: Counter[str] = Counter()
    if args.tls and not args.cafile:
        raise SystemExit("client.py: --tls needs --cafile")
    context = ssl.create_default_context(cafile=args.cafile) if args.tls else None
    if args.gssapi and not args.ccache_dir:
        raise SystemExit("client.py: --gssapi needs --ccache-dir")
    for _ in range(args.count):
        try:
            if args.gssapi:
                runs.append(
                    gssapi_retr(args.port, args.user, args.octets, args.ccache_dir, args.gssapi)
                )
            else:
                runs.append(timed_retr(args.port, args.user, args.password, args.octets, context))
        except (ProtocolError, OSError) as exc:
            errors[_classify(exc)] += 1
    # The body on the wire is the CRLF size (the message has no line starting with a dot);
    # the first line (+OK ...) and the final ".\r\n" come on top.
    for run in runs:
        run["body_ok"] = args.octets + 3 <= run["wire_bytes"] <= args.octets + 3 + 200
        run["mb_per_s"] = args.octets / run["seconds"] / 1e6
    measured = runs[args.discard :]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "runs": runs,
        "errors": dict(errors),
        "octets": args.octets,
        "transport": "pop3s" if args.tls else "plain",
        "gssapi": args.gssapi,
        "median_mb_per_s": statistics.median(r["mb_per_s"] for r in measured) if measured else None,
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
    }


# --- idle authenticated connections -------------------------------------------------


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open_logged_in(
    port: int, index: int, gate: asyncio.Semaphore, context: ssl.SSLContext | None = None
) -> tuple[Connection | None, str | None]:
    async with gate:
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    HOST,
                    port,
                    ssl=context,
                    server_hostname=TLS_NAME if context is not None else None,
                ),
                STEP_TIMEOUT,
            )
            await _login(reader, writer, index)
            return (reader, writer), None
        except (ProtocolError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            if writer is not None:
                writer.close()
            return None, _classify(exc)


def _stdin_line(timeout: float) -> str:
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    return sys.stdin.readline() if ready else ""


def _alive(connections: list[Connection]) -> int:
    """Connections the server has neither closed nor written to since the login: a server
    that dropped idle sessions would otherwise look cheap."""
    return sum(
        1
        for reader, writer in connections
        if not reader.at_eof() and not writer.transport.is_closing()
    )


async def _idle(args: argparse.Namespace) -> dict[str, Any]:
    """Open the connections in batches (e.g. 500,500); after each batch print a JSON line
    and wait for a line on stdin before going on. Then close everything."""
    gate = asyncio.Semaphore(args.inflight)
    loop = asyncio.get_running_loop()
    connections: list[Connection] = []
    errors: Counter[str] = Counter()
    first = args.first
    if args.tls and not args.cafile:
        raise SystemExit("client.py: --tls needs --cafile")
    context = ssl.create_default_context(cafile=args.cafile) if args.tls else None
    for size in (int(x) for x in args.batches.split(",")):
        started = time.monotonic()
        results = await asyncio.wait_for(
            asyncio.gather(
                *(_open_logged_in(args.port, first + i, gate, context) for i in range(size))
            ),
            args.open_max,
        )
        first += size
        connections += [c for c, _ in results if c is not None]
        errors.update(e for _, e in results if e is not None)
        report = {
            "ready": True,
            "logged_in": len(connections),
            "alive": _alive(connections),
            "errors": dict(errors),
            "open_seconds": time.monotonic() - started,
        }
        print(json.dumps(report), flush=True)
        await loop.run_in_executor(None, _stdin_line, args.hold_max)
    alive = _alive(connections)
    for _, writer in connections:
        writer.transport.abort()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "closed": len(connections),
        "alive_at_close": alive,
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
    }


def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_idle(args))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    sessions = sub.add_parser("sessions")
    sessions.add_argument("--port", type=int, required=True)
    sessions.add_argument("--clients", type=int, required=True)
    sessions.add_argument("--first", type=int, default=0, help="index of the first user")
    sessions.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    sessions.add_argument("--warmup", type=float, default=3.0)
    sessions.add_argument("--duration", type=float, default=10.0)
    sessions.add_argument("--transport", choices=("plain", "pop3s", "stls"), default="plain")
    sessions.add_argument("--cafile", help="CA to verify the server with (TLS)")
    sessions.add_argument(
        "--auth",
        default="pass",
        help="pass (USER/PASS), plain (AUTH PLAIN), scram-sha-256, gssapi (no layer)",
    )
    sessions.add_argument("--ccache-dir", help="--auth gssapi: ticket caches <user>.cc")
    sessions.add_argument("--no-mail", action="store_true", help="no STAT/RETR: login, QUIT")
    sessions.add_argument(
        "--resume", action="store_true", help="TLS: offer the previous connection's session"
    )
    retr = sub.add_parser("retr")
    retr.add_argument("--port", type=int, required=True)
    retr.add_argument("--user", required=True)
    retr.add_argument("--password", required=True)
    retr.add_argument("--octets", type=int, required=True, help="CRLF size of message 1")
    retr.add_argument("--count", type=int, default=4)
    retr.add_argument("--discard", type=int, default=1, help="leading runs not counted")
    retr.add_argument("--tls", action="store_true", help="implicit TLS (pop3s)")
    retr.add_argument("--cafile", help="CA to verify the server with (--tls)")
    retr.add_argument(
        "--gssapi", choices=("integrity", "confidentiality"), help="AUTH GSSAPI with this layer"
    )
    retr.add_argument("--ccache-dir", help="--gssapi: ticket caches <user>.cc")
    idle = sub.add_parser("idle")
    idle.add_argument("--port", type=int, required=True)
    idle.add_argument("--batches", required=True, help="connections per batch, e.g. 500,500")
    idle.add_argument("--first", type=int, default=0)
    idle.add_argument("--inflight", type=int, default=64, help="logins in progress at once")
    idle.add_argument("--open-max", type=float, default=600.0)
    idle.add_argument("--hold-max", type=float, default=300.0)
    idle.add_argument("--tls", action="store_true", help="implicit TLS (pop3s)")
    idle.add_argument("--cafile", help="CA to verify the server with (--tls)")
    args = parser.parse_args()
    runner = {"sessions": run_sessions, "retr": run_retr, "idle": run_idle}[args.mode]
    print(json.dumps(runner(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
