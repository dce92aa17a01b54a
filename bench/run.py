"""pop3d against Debian's Dovecot on loopback: sessions per second, RETR throughput and
memory per idle authenticated connection, the same over TLS (pop3s and STLS), and SASL
logins per second (AUTH PLAIN, AUTH SCRAM-SHA-256). See bench/README.md; run with
``bash bench/run.sh``.

Each repetition starts both servers fresh, one after the other (the order alternates), and
measures every figure on each; the report gives the median over the repetitions, the
Dovecot figure of the same run beside it, and pop3d/Dovecot. The whole set is repeated for
each pop3d ``auth_cache_ttl`` setting asked for (default: the built-in 300 s, then 0).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import select
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import scale
from servers import (
    BENCH,
    BIG_PASSWORD,
    BIG_USER,
    LAB,
    ROOT,
    Cyrus,
    Dovecot,
    Kerberos,
    Message,
    Pop3d,
    Server,
    TLSFiles,
    cyrus_version,
    dovecot_version,
    machine_busy,
    make_tls,
    messages,
)

CLIENT = BENCH / "client.py"
TARGET_SESSIONS_RATIO = 1.0
TARGET_RETR_RATIO = 0.5
TARGET_IDLE_KIB = 64.0
TARGET_TLS_SESSIONS_RATIO = 1.0
TARGET_TLS_RETR_RATIO = 0.7
TARGET_SASL_RATIO = 1.0
FIGURES = ("idle", "sessions", "retr", "tls", "sasl", "gssapi", "workers", "scale")
GSSAPI_LAYERS = ("integrity", "confidentiality")
TLS_TRANSPORTS = {
    "pop3s": "implicit TLS (pop3s)",
    "stls": "STLS",
    # each client offers its previous connection's session (client.py --resume)
    "pop3s-resume": "pop3s, resuming",
}
SASL_MECHANISMS = {"plain": "AUTH PLAIN", "scram-sha-256": "AUTH SCRAM-SHA-256"}
QUIET_CORES = 0.25
CONTENDED_CORES = 0.5
QUIET_TIMEOUT = 30.0
RETRY = {"contended": True}  # --no-retry: a contended measurement is not taken again
BASELINE = "baseline"  # --pop3d-baseline: another pop3d checkout, measured beside
CYRUS = "cyrus"  # --cyrus: Debian's Cyrus 3.6 pop3d, in the gssapi figures only


@dataclass
class Settings:
    repeat: int
    clients: list[int]
    duration: float
    warmup: float
    idle: int
    retr_count: int
    procs: int
    figures: set[str]
    quiet_timeout: float
    tls_clients: list[int]
    sasl_clients: list[int]
    sasl_mechanisms: list[str]
    tls_idle: int = 0
    retry: bool = True
    tls: TLSFiles | None = None
    kerberos: Kerberos | None = None
    workers: list[int] = field(default_factory=lambda: [1, 2])  # the workers figure
    workers_clients: int = 100
    scale_max: int = 10_000  # the scale figure: its crowd at most, if the fd limit allows
    scale_peer_max: int = 4_000  # ... and Dovecot's (a process per session)
    scale_noops: int = 1  # NOOPs per crowd connection per measured window
    scale_steps: int = 4
    scale_clients: int = 100


def _run_client(args: list[str], timeout: float, cpus: list[int] | None = None) -> dict[str, Any]:
    """Run the load generator; ``cpus``: pinned to those cores (taskset)."""
    pinned = ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []
    command = [*pinned, sys.executable, str(CLIENT), *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"failed": f"load generator timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"failed": f"load generator exit {done.returncode}: {done.stderr[-2000:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _log_offset(server: Server) -> int:
    log = server.log
    return log.stat().st_size if log.exists() else 0


def _log_problems(server: Server, offset: int) -> list[str]:
    log = server.log
    if not log.exists():
        return []
    with log.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    if isinstance(server, Pop3d):
        keys: tuple[str, ...] = ("ERROR", "WARNING", "Traceback", "CRITICAL")
    elif isinstance(server, Cyrus):  # its master's stderr (Cyrus logs to syslog)
        keys = ("fatal", "error", "Error", "bind:")
    else:
        keys = ("Error:", "Fatal:", "Panic:", "Warning:")
    return [
        line
        for line in text.splitlines()
        if any(k in line for k in keys) and not any(k in line for k in EXPECTED)
    ][:50]


# What the bench's own set-up makes servers say: pop3d runs as root with allow_root (a
# worker still starting when a figure begins logs it inside that figure's window).
EXPECTED = ("serving as root (allow_root: yes)",)


class Window:
    """CPU seconds used during one measurement: the server's process tree, the machine as a
    whole, and (from the client's report) the load generator; the rest is other load."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.server_cpu = server.cpu()
        self.busy = machine_busy()
        self.wall = time.monotonic()

    def close(self, client_cpu: float) -> dict[str, float]:
        server = self.server.cpu() - self.server_cpu
        busy = machine_busy() - self.busy
        wall = time.monotonic() - self.wall
        other = max(0.0, busy - server - client_cpu)
        return {
            "wall_s": wall,
            "server_cpu_s": server,
            "client_cpu_s": client_cpu,
            "other_cpu_s": other,
            "server_cores": server / wall,
            "client_cores": client_cpu / wall,
            "other_cores": other / wall,
        }


def wait_quiet(limit: float = QUIET_CORES, timeout: float = QUIET_TIMEOUT) -> float:
    """Other sessions may share this machine: wait (bounded) until less than ``limit``
    cores are busy for a whole second, so a measurement does not start inside a burst.
    Returns the load seen last (cores); ``timeout`` 0: no wait, nothing seen (the suite's
    smoke run)."""
    if timeout <= 0:
        return 0.0
    deadline = time.monotonic() + timeout
    load = 0.0
    while True:
        before = machine_busy()
        time.sleep(1.0)
        load = machine_busy() - before
        if load < limit or time.monotonic() > deadline:
            return load


def measure_sessions(
    server: Server,
    clients: int,
    settings: Settings,
    *,
    port: int | None = None,
    options: tuple[str, ...] = (),
    spans: tuple[float, float] | None = None,
    cpus: list[int] | None = None,
) -> dict[str, Any]:
    """Sessions (or, with ``options``, TLS sessions or SASL logins) per second; ``options``
    are client.py's --transport/--cafile/--auth/--no-mail; ``spans`` (warm-up, measured
    seconds) replaces the settings' ones; ``cpus``: the load generator runs on those cores
    only, one process per core."""
    warmup, duration = spans or (settings.warmup, settings.duration)
    quiet = wait_quiet(timeout=settings.quiet_timeout)
    offset = _log_offset(server)
    window = Window(server)
    result = _run_client(
        [
            "sessions",
            "--port",
            str(server.port if port is None else port),
            "--clients",
            str(clients),
            "--procs",
            str(len(cpus) if cpus else settings.procs),
            "--warmup",
            str(warmup),
            "--duration",
            str(duration),
            *options,
        ],
        timeout=warmup + duration + 180,
        cpus=cpus,
    )
    result["cpu"] = window.close(result.get("client_cpu_s", 0.0))
    result["load_before_cores"] = quiet
    total = result.get("ok", 0) + result.get("warmup_ok", 0)
    if total:
        # per session (or login) completed, warm-up included: the server's CPU is read
        # over the whole run of the load generator, not only the counted window
        result["server_cpu_ms_per_session"] = result["cpu"]["server_cpu_s"] / total * 1000
    window_cpu = result.get("client_window_cpu_s")
    if result.get("ok") and window_cpu is not None:
        # the load generator's own CPU during the counted window, per counted session
        # (its start-up would weigh more on the slower server otherwise)
        result["client_cpu_ms_per_session"] = window_cpu / result["ok"] * 1000
    result["server_log_problems"] = _log_problems(server, offset)
    return result


def measure_tls_sessions(
    server: Server,
    clients: int,
    transport: str,
    settings: Settings,
    spans: tuple[float, float] | None = None,
) -> dict[str, Any]:
    assert settings.tls is not None
    base = transport.removesuffix("-resume")
    port = server.tls_port if base == "pop3s" else server.port
    options = ("--transport", base, "--cafile", str(settings.tls.ca))
    if base != transport:
        options += ("--resume",)
    result = measure_sessions(server, clients, settings, port=port, options=options, spans=spans)
    if result.get("ok"):
        every = sum((result.get("tls") or {}).values())
        result["tls_resumed_share"] = result.get("tls_resumed", 0) / every if every else None
    return result


def measure_logins(
    server: Server, clients: int, mechanism: str, settings: Settings
) -> dict[str, Any]:
    options = ("--auth", mechanism, "--no-mail")
    return measure_sessions(server, clients, settings, options=options)


def measure_gssapi_logins(server: Server, clients: int, settings: Settings) -> dict[str, Any]:
    """AUTH GSSAPI logins with no security layer (connect, AUTH to +OK, QUIT)."""
    assert settings.kerberos is not None
    options = ("--auth", "gssapi", "--no-mail", "--ccache-dir", str(settings.kerberos.ccache_dir))
    return measure_sessions(server, clients, settings, options=options)


def measure_retr(
    server: Server,
    big: Message,
    settings: Settings,
    *,
    tls: bool = False,
    gssapi: str | None = None,
) -> dict[str, Any]:
    """RETR of the 50 MB message; ``tls``: over implicit TLS (the pop3s port); ``gssapi``:
    logged in with AUTH GSSAPI, through that layer (integrity or confidentiality)."""
    quiet = wait_quiet(timeout=settings.quiet_timeout)
    offset = _log_offset(server)
    window = Window(server)
    options: list[str] = []
    if tls:
        assert settings.tls is not None
        options = ["--tls", "--cafile", str(settings.tls.ca)]
    if gssapi:
        assert settings.kerberos is not None
        options = ["--gssapi", gssapi, "--ccache-dir", str(settings.kerberos.ccache_dir)]
    result = _run_client(
        [
            "retr",
            *options,
            "--port",
            str(server.tls_port if tls else server.port),
            "--user",
            BIG_USER,
            "--password",
            BIG_PASSWORD,
            "--octets",
            # Cyrus stores the message with the two header lines its lmtpd adds
            str(getattr(server, "big_octets", 0) or big.crlf_size),
            "--count",
            str(settings.retr_count + 1),
            "--discard",
            "1",
        ],
        timeout=600,
    )
    result["cpu"] = window.close(result.get("client_cpu_s", 0.0))
    result["load_before_cores"] = quiet
    result["server_log_problems"] = _log_problems(server, offset)
    return result


def _ready_line(process: subprocess.Popen[str], timeout: float) -> dict[str, Any] | None:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    return json.loads(line) if line.startswith("{") else None


def measure_idle(server: Server, settings: Settings, *, tls: bool = False) -> dict[str, Any]:
    """On a freshly started server: the memory with no connection, with half of the idle
    connections logged in, and with all of them. The figure the brief asks for is
    (all - none) / count; the marginal cost (all - half) / (count - half) leaves out what a
    server allocates once (pop3d: Argon2 working memory kept by the allocator). ``tls``:
    ``settings.tls_idle`` connections over implicit TLS (the pop3s port)."""
    offset = _log_offset(server)
    count = settings.tls_idle if tls else settings.idle
    half = count // 2
    batches = [half, count - half]
    time.sleep(1.0)
    quiet = wait_quiet(timeout=settings.quiet_timeout)
    none = vars(server.memory())
    window = Window(server)
    command = [
        sys.executable,
        str(CLIENT),
        "idle",
        "--port",
        str(server.tls_port if tls else server.port),
        *(["--tls", "--cafile", str(settings.tls.ca)] if tls and settings.tls else []),
        "--batches",
        ",".join(map(str, batches)),
        "--open-max",
        "900",
        "--hold-max",
        "300",
    ]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdin is not None
    steps: list[dict[str, Any]] = []
    result: dict[str, Any] = {"requested": count, "load_before_cores": quiet}
    try:
        for _ in batches:
            opened = _ready_line(process, 960)
            if opened is None:
                process.kill()
                _, err = process.communicate(timeout=30)
                result["failed"] = f"idle load generator: no ready line; stderr: {err[-2000:]}"
                break
            time.sleep(2.0)  # let lazily started helpers settle
            opened["memory"] = vars(server.memory())
            steps.append(opened)
            process.stdin.write("next\n")
            process.stdin.flush()
        out, _ = process.communicate(timeout=330)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    lines = [x for x in (out or "").splitlines() if x.startswith("{")]
    closing = json.loads(lines[-1]) if lines else {}
    result |= {
        "steps": steps,
        "none": none,
        "cpu": window.close(closing.get("client_cpu_s", 0.0)),
        "server_log_problems": _log_problems(server, offset),
    }
    if len(steps) == len(batches):
        result["logged_in"] = steps[-1]["logged_in"]
        result["alive_at_measurement"] = steps[-1]["alive"]
        result["errors"] = steps[-1]["errors"]
        result["open_seconds"] = sum(step["open_seconds"] for step in steps)
        full, part = steps[-1], steps[0]
        count = full["logged_in"]
        extra = full["logged_in"] - part["logged_in"]
        for key in ("rss_kib", "pss_kib"):
            low, mid, high = none[key], part["memory"][key], full["memory"][key]
            if None in (low, mid, high):
                continue
            if count:
                result[f"{key}_per_conn"] = (high - low) / count
            if extra:
                result[f"{key}_marginal_per_conn"] = (high - mid) / extra
    return result


def _guarded(server: Server, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A figure that fails is recorded as failed, with the reason, and the run goes on."""
    try:
        result = measure()
    except Exception as exc:  # a bench bug or a server failure: report it, keep going
        result = {"failed": f"{exc.__class__.__name__}: {exc}"[:2000]}
    process = server.process
    if process is not None and process.poll() is not None:
        result["failed"] = (
            f"{server.name} exited with {process.returncode} during this figure; log tail: "
            + server.log_tail(20)
        )
    return result


def _calm(server: Server, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Measure; if other processes took more than CONTENDED_CORES meanwhile, measure once
    more and keep the less disturbed result (both attempts' other load are recorded).
    With --no-retry: once, whatever the load."""
    result = _guarded(server, measure)
    other = result.get("cpu", {}).get("other_cores", 0.0)
    if other <= CONTENDED_CORES or "failed" in result or not RETRY["contended"]:
        result["attempts_other_cores"] = [other]
        return result
    again = _guarded(server, measure)
    other_again = again.get("cpu", {}).get("other_cores", 0.0)
    kept = again if "failed" not in again and other_again < other else result
    kept["attempts_other_cores"] = [other, other_again]
    return kept


def _alive(server: Server) -> bool:
    return server.process is not None and server.process.poll() is None


def _contended(result: dict[str, Any]) -> str:
    other = result.get("cpu", {}).get("other_cores", 0.0)
    return f" [other load {other:.2f} cores]" if other > CONTENDED_CORES else ""


def _sessions_line(server: Server, what: str, result: dict[str, Any], unit: str) -> None:
    print(
        f"  {server.name}: {what}: {result.get('sessions_per_s', 0):8.1f} {unit}/s, "
        f"errors {result.get('errors') or result.get('failed') or 0}" + _contended(result),
        flush=True,
    )


def run_repetition(
    servers: list[Server], big: Message, settings: Settings
) -> dict[str, dict[str, Any]]:
    """Both servers run for the whole of a phase (an idle server costs nothing) and every
    figure is measured on one and then the other, so the two see the same background load.
    Phase 1, servers in clear text only: idle connections first (while both are fresh),
    sessions, RETR, SASL logins. Phase 2, both restarted with TLS (pop3s listener, STLS):
    the TLS figures. So the clear-text figures are measured on the same configuration as
    before TLS was added to the bench."""
    out: dict[str, dict[str, Any]] = {server.name: {} for server in servers}
    if settings.figures & {"idle", "sessions", "retr", "sasl", "gssapi"}:
        _clear_text_phase(servers, big, settings, out)
    if "tls" in settings.figures:
        _tls_phase([s for s in servers if not isinstance(s, Cyrus)], big, settings, out)
    if "workers" in settings.figures:
        _workers_phase([s for s in servers if isinstance(s, Pop3d)], settings, out)
    if "scale" in settings.figures:
        scale.scale_phase(
            [s for s in servers if isinstance(s, Pop3d | Dovecot)],
            settings,
            out,
            measure_sessions,
            wait_quiet,
        )
    return out


def worker_placement(workers: int, cores: list[int]) -> tuple[list[int] | None, list[int] | None]:
    """Where the server (master and workers) and the load generator run: apart when
    the workers leave cores free (the server on the first ``workers`` cores, the load
    generator on the rest), else both unpinned (pinning them apart would take cores from
    the workers)."""
    if workers < len(cores):
        return cores[:workers], cores[workers:]
    return None, None


def _workers_phase(
    servers: list[Server], settings: Settings, out: dict[str, dict[str, Any]]
) -> None:
    """Every core used: pop3d in clear text with 1, 2, ... workers (``--workers``), the
    same sessions as the sessions figure with ``--workers-clients`` clients, the server
    restarted for each count. Dovecot has no like figure (a process per session)."""
    cores = sorted(os.sched_getaffinity(0))
    for server in servers:
        assert isinstance(server, Pop3d)
        saved = server.prefork, server.cpus
        try:
            for workers in settings.workers:
                server_cpus, client_cpus = worker_placement(workers, cores)
                server.prefork, server.cpus = workers, server_cpus
                server.start()
                try:
                    result = _calm(
                        server,
                        lambda s=server, c=client_cpus: measure_sessions(
                            s, settings.workers_clients, settings, cpus=c
                        ),
                    )
                finally:
                    server.stop()
                result["server_cpus"] = server_cpus
                result["client_cpus"] = client_cpus
                out[server.name][f"workers_{workers}"] = result
                where = (
                    f" (server on cores {server_cpus}, load generator on {client_cpus})"
                    if server_cpus
                    else " (unpinned)"
                )
                _sessions_line(
                    server,
                    f"{workers} workers, {settings.workers_clients} clients{where}",
                    result,
                    "sessions",
                )
        finally:
            server.prefork, server.cpus = saved


def summarize_workers(
    mode: str, results: dict[str, list[dict[str, Any]]], s: Settings
) -> list[str]:
    """The workers figure: pop3d's sessions/s and server CPU per session by worker count,
    and the speed-up over the first count."""
    runs = results.get("pop3d", [])
    rows = [
        f"### Every core used: sessions/s by worker count (auth_cache_ttl {mode})",
        "",
        f"{s.workers_clients} clients, the sessions figure's session (USER, PASS, STAT, "
        "RETR 4 KB, QUIT), clear text; the server pinned to as many cores as it has workers "
        "and the load generator to the others where cores are left, else both unpinned.",
        "",
        "| Workers | Sessions/s (median) | vs first | Server CPU ms/session | Server cores "
        "| Runs |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    first: float | None = None
    for workers in s.workers:
        path = (f"workers_{workers}", "sessions_per_s")
        rate = _median([v for r in runs if (v := _value(r, path)) is not None])
        cpu = _median(
            [
                v
                for r in runs
                if (v := _value(r, (f"workers_{workers}", "server_cpu_ms_per_session"))) is not None
            ]
        )
        cores = _median(
            [
                v
                for r in runs
                if (v := _value(r, (f"workers_{workers}", "cpu", "server_cores"))) is not None
            ]
        )
        if first is None:
            first = rate
        speedup = rate / first if rate is not None and first else None
        rows.append(
            f"| {workers} | {_fmt(rate)} | {'-' if speedup is None else _fmt(speedup, 2) + 'x'} "
            f"| {_fmt(cpu, 2)} | {_fmt(cores, 2)} "
            f"| {', '.join(_run_cell(r, path, 1, 1.0) for r in runs)} |"
        )
    return [*rows, ""]


def _clear_text_phase(
    servers: list[Server], big: Message, settings: Settings, out: dict[str, dict[str, Any]]
) -> None:
    started: list[Server] = []
    everyone, servers = servers, [s for s in servers if not isinstance(s, Cyrus)]
    try:
        for server in everyone:  # Cyrus (--cyrus) only for the gssapi figures
            server.start()
            started.append(server)
        if "idle" in settings.figures:
            for server in servers:
                print(f"  {server.name}: {settings.idle} idle connections", flush=True)
                result = _guarded(server, lambda s=server: measure_idle(s, settings))
                out[server.name]["idle"] = result
                _brief_idle(result)
        if "sessions" in settings.figures:
            for clients in settings.clients:
                for server in servers:
                    if not _alive(server):
                        continue
                    result = _calm(
                        server, lambda s=server, c=clients: measure_sessions(s, c, settings)
                    )
                    out[server.name][f"sessions_{clients}"] = result
                    _sessions_line(server, f"{clients:>3} clients", result, "sessions")
        if "retr" in settings.figures:
            for server in servers:
                if not _alive(server):
                    continue
                result = _calm(server, lambda s=server: measure_retr(s, big, settings))
                out[server.name]["retr"] = result
                print(
                    f"  {server.name}: RETR 50 MB: {result.get('median_mb_per_s') or 0:.1f} "
                    f"MB/s {result.get('errors') or result.get('failed') or ''}"
                    + _contended(result),
                    flush=True,
                )
        if "sasl" in settings.figures:
            for mechanism in settings.sasl_mechanisms:
                label = SASL_MECHANISMS[mechanism]
                for clients in settings.sasl_clients:
                    for server in servers:
                        if not _alive(server):
                            continue
                        result = _calm(
                            server,
                            lambda s=server, c=clients, m=mechanism: measure_logins(
                                s, c, m, settings
                            ),
                        )
                        out[server.name][f"sasl_{mechanism}_{clients}"] = result
                        _sessions_line(server, f"{label}, {clients:>3} clients", result, "logins")
        if "gssapi" in settings.figures:
            _gssapi_figures(everyone, big, settings, out)
    finally:
        for server in started:
            server.stop()


def _gssapi_figures(
    servers: list[Server], big: Message, settings: Settings, out: dict[str, dict[str, Any]]
) -> None:
    """pop3d (the installation with the bench realm; Dovecot has no GSSAPI layers) and,
    with --cyrus, Cyrus: AUTH GSSAPI logins with no layer, then RETR of the 50 MB message
    through an integrity and a confidentiality layer."""
    for server in servers:
        realm = isinstance(server, Cyrus) or (
            isinstance(server, Pop3d) and server.kerberos is not None
        )
        if not realm or not _alive(server):
            continue
        for clients in settings.sasl_clients:
            result = _calm(
                server, lambda s=server, c=clients: measure_gssapi_logins(s, c, settings)
            )
            out[server.name][f"gssapi_login_{clients}"] = result
            _sessions_line(server, f"AUTH GSSAPI, {clients:>3} clients", result, "logins")
        for layer in GSSAPI_LAYERS:
            result = _calm(
                server, lambda s=server, g=layer: measure_retr(s, big, settings, gssapi=g)
            )
            out[server.name][f"gssapi_retr_{layer}"] = result
            print(
                f"  {server.name}: RETR 50 MB through a GSSAPI {layer} layer: "
                f"{result.get('median_mb_per_s') or 0:.1f} MB/s "
                f"{result.get('errors') or result.get('failed') or ''}" + _contended(result),
                flush=True,
            )


def _tls_phase(
    servers: list[Server], big: Message, settings: Settings, out: dict[str, dict[str, Any]]
) -> None:
    started: list[Server] = []
    try:
        for server in servers:
            server.start(settings.tls)
            started.append(server)
        if settings.tls_idle:
            for server in servers:
                print(f"  {server.name}: {settings.tls_idle} idle pop3s connections", flush=True)
                result = _guarded(server, lambda s=server: measure_idle(s, settings, tls=True))
                out[server.name]["tls_idle"] = result
                _brief_idle(result)
        # The servers were just restarted: pop3d's verification cache (per worker process,
        # two workers per service) is empty, while in the clear-text phase the idle and
        # earlier figures have filled it. One untimed pass per transport, with the most
        # clients and as long as a warm-up, lets the TLS figures see the same state.
        # Dovecot has no such cache; it gets the same pass.
        prime = max(settings.tls_clients)
        for transport, label in TLS_TRANSPORTS.items():
            for server in servers:
                if not _alive(server) or settings.warmup <= 0:
                    continue
                result = _guarded(
                    server,
                    lambda s=server, t=transport: measure_tls_sessions(
                        s, prime, t, settings, spans=(0.0, settings.warmup)
                    ),
                )
                out[server.name][f"tls_prime_{transport}"] = result
                _sessions_line(
                    server, f"{label}, {prime:>3} clients, untimed pass", result, "sessions"
                )
        for transport, label in TLS_TRANSPORTS.items():
            for clients in settings.tls_clients:
                for server in servers:
                    if not _alive(server):
                        continue
                    result = _calm(
                        server,
                        lambda s=server, c=clients, t=transport: measure_tls_sessions(
                            s, c, t, settings
                        ),
                    )
                    out[server.name][f"tls_{transport}_{clients}"] = result
                    _sessions_line(server, f"{label}, {clients:>3} clients", result, "sessions")
        for server in servers:
            if not _alive(server):
                continue
            result = _calm(server, lambda s=server: measure_retr(s, big, settings, tls=True))
            out[server.name]["tls_retr"] = result
            print(
                f"  {server.name}: RETR 50 MB over pop3s: "
                f"{result.get('median_mb_per_s') or 0:.1f} MB/s "
                f"{result.get('errors') or result.get('failed') or ''}" + _contended(result),
                flush=True,
            )
    finally:
        for server in started:
            server.stop()


def _brief_idle(r: dict[str, Any]) -> None:
    if "failed" in r:
        print(f"    FAILED {r['failed']}", flush=True)
        return
    print(
        f"    {r['logged_in']}/{r['requested']} logged in in {r['open_seconds']:.1f} s, "
        f"RSS {r.get('rss_kib_per_conn', 0):.1f} KiB/conn "
        f"(marginal {r.get('rss_kib_marginal_per_conn', 0):.1f}), "
        f"PSS {r.get('pss_kib_per_conn', 0):.1f} KiB/conn "
        f"(marginal {r.get('pss_kib_marginal_per_conn', 0):.1f}), errors {r['errors'] or 0}",
        flush=True,
    )


# --- report -----------------------------------------------------------------------------


def _value(run: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = run
    for key in path:
        if isinstance(value, list):
            value = value[int(key)] if value else None
        else:
            value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _run_cell(run: dict[str, Any], path: tuple[str, ...], digits: int, scale: float) -> str:
    """One repetition's value; * marks a measurement during which other processes used
    more than CONTENDED_CORES."""
    value = _value(run, path)
    if value is None:
        return "n/a"
    other = _value(run, (path[0], "cpu", "other_cores")) or 0.0
    return _fmt(value * scale, digits) + ("*" if other > CONTENDED_CORES else "")


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _errors(runs: list[dict[str, Any]], figure: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for run in runs:
        result = run.get(figure, {})
        for part in [result]:
            for reason, count in part.get("errors", {}).items():
                total[reason] = total.get(reason, 0) + count
            if "failed" in part:
                total[part["failed"][:300]] = total.get(part["failed"][:300], 0) + 1
    return total


def summarize(mode: str, results: dict[str, list[dict[str, Any]]], s: Settings) -> list[str]:
    """One table: pop3d and Dovecot (and, with --pop3d-baseline, the baseline checkout and
    pop3d/baseline; with --cyrus, Cyrus and pop3d/Cyrus) per figure."""
    pop3d, dovecot = results["pop3d"], results["dovecot"]
    extras = [
        (name, results[key])
        for key, name in ((BASELINE, "baseline"), (CYRUS, "Cyrus"))
        if key in results
    ]
    rows = [
        "| Figure | pop3d (median) | Dovecot (median) | pop3d/Dovecot | Target | Met | "
        + "".join(f"{name} (median) | pop3d/{name} | " for name, _ in extras)
        + "pop3d runs | Dovecot runs |"
        + "".join(f" {name} runs |" for name, _ in extras),
        "|---|---:|---:|---:|---|---|"
        + "---:|---:|" * len(extras)
        + "---|---|"
        + "---|" * len(extras),
    ]
    notes: list[str] = []

    def row(
        label: str,
        path: tuple[str, ...],
        digits: int,
        target: str = "-",
        *,
        check: Callable[[float, float | None], bool] | None = None,
        scale: float = 1.0,
        ratio: bool = True,
    ) -> None:
        p = [v * scale for r in pop3d if (v := _value(r, path)) is not None]
        d = [v * scale for r in dovecot if (v := _value(r, path)) is not None]
        mp, md = _median(p), _median(d)
        quotient = mp / md if ratio and mp is not None and md else None
        met = "-"
        if check is not None:
            met = "n/a" if mp is None else ("yes" if check(mp, quotient) else "**no**")
        base_cells = base_runs = ""
        for _, runs in extras:
            b = [v * scale for r in runs if (v := _value(r, path)) is not None]
            mb = _median(b)
            versus = mp / mb if ratio and mp is not None and mb else None
            base_cells += (
                f"{_fmt(mb, digits)} | {'-' if versus is None else _fmt(versus, 2) + 'x'} | "
            )
            base_runs += f" {', '.join(_run_cell(r, path, digits, scale) for r in runs)} |"
        rows.append(
            f"| {label} | {_fmt(mp, digits)} | {_fmt(md, digits)} | "
            f"{'-' if quotient is None else _fmt(quotient, 2) + 'x'} | {target} | {met} | "
            + base_cells
            + f"{', '.join(_run_cell(r, path, digits, scale) for r in pop3d)} | "
            f"{', '.join(_run_cell(r, path, digits, scale) for r in dovecot)} |" + base_runs
        )

    if "sessions" in s.figures:
        for clients in s.clients:
            key = f"sessions_{clients}"
            target = "-" if clients == 1 else f">= {TARGET_SESSIONS_RATIO:.1f}x Dovecot"
            row(
                f"sessions/s, {clients} client{'s' if clients > 1 else ''}",
                (key, "sessions_per_s"),
                1,
                target,
                check=(lambda _m, r: r is not None and r >= TARGET_SESSIONS_RATIO)
                if clients > 1
                else None,
            )
        for clients in s.clients:
            key = f"sessions_{clients}"
            row(
                f"server CPU ms/session, {clients} client{'s' if clients > 1 else ''}",
                (key, "server_cpu_ms_per_session"),
                2,
            )
        for clients in s.clients:
            key = f"sessions_{clients}"
            row(
                f"load generator CPU, {clients} client{'s' if clients > 1 else ''} (cores)",
                (key, "cpu", "client_cores"),
                2,
                ratio=False,
            )
            row(
                f"other processes' CPU, {clients} client{'s' if clients > 1 else ''} (cores)",
                (key, "cpu", "other_cores"),
                2,
                ratio=False,
            )
    if "retr" in s.figures:
        row(
            "RETR 50 MB, MB/s (10^6 B/s)",
            ("retr", "median_mb_per_s"),
            1,
            f">= {TARGET_RETR_RATIO:.1f}x Dovecot",
            check=lambda _m, r: r is not None and r >= TARGET_RETR_RATIO,
        )
    if "tls" in s.figures:
        _tls_rows(row, s)
    if "sasl" in s.figures:
        _sasl_rows(row, s)
    if "gssapi" in s.figures:
        _gssapi_rows(row, s)
    if "tls" in s.figures and s.tls_idle:
        for key, unit in (("rss_kib", "RSS"), ("pss_kib", "PSS")):
            row(
                f"{unit} KiB per idle pop3s conn ({s.tls_idle})",
                ("tls_idle", f"{key}_per_conn"),
                1,
                f"<= {TARGET_IDLE_KIB:.0f} KiB" if key == "rss_kib" else "-",
                check=(lambda m, _r: m <= TARGET_IDLE_KIB) if key == "rss_kib" else None,
            )
        for key, unit in (("rss_kib", "RSS"), ("pss_kib", "PSS")):
            row(
                f"{unit} KiB per idle pop3s conn, marginal ({s.tls_idle // 2} to {s.tls_idle})",
                ("tls_idle", f"{key}_marginal_per_conn"),
                1,
            )
        row(
            "RSS MiB with 0 conns (TLS phase, fresh start)",
            ("tls_idle", "none", "rss_kib"),
            1,
            scale=1 / 1024,
        )
    if "idle" in s.figures:
        row(
            f"RSS KiB per idle conn ({s.idle})",
            ("idle", "rss_kib_per_conn"),
            1,
            f"<= {TARGET_IDLE_KIB:.0f} KiB",
            check=lambda m, _r: m <= TARGET_IDLE_KIB,
        )
        row(
            f"PSS KiB per idle conn ({s.idle})",
            ("idle", "pss_kib_per_conn"),
            1,
        )
        row(
            f"RSS KiB per idle conn, marginal ({s.idle // 2} to {s.idle})",
            ("idle", "rss_kib_marginal_per_conn"),
            1,
        )
        row(
            f"PSS KiB per idle conn, marginal ({s.idle // 2} to {s.idle})",
            ("idle", "pss_kib_marginal_per_conn"),
            1,
        )
        row(
            "RSS MiB with 0 conns (fresh start)",
            ("idle", "none", "rss_kib"),
            1,
            scale=1 / 1024,
        )
        row(
            f"RSS MiB with {s.idle} conns",
            ("idle", "steps", "-1", "memory", "rss_kib"),
            1,
            scale=1 / 1024,
        )
    named = [("pop3d", pop3d), ("Dovecot", dovecot), *extras]
    for name, runs in named:
        figures = [f"sessions_{c}" for c in s.clients] + ["retr", "idle", "tls_idle"]
        figures += [f"gssapi_login_{c}" for c in s.sasl_clients]
        figures += [f"gssapi_retr_{layer}" for layer in GSSAPI_LAYERS]
        figures += [f"tls_{t}_{c}" for t in TLS_TRANSPORTS for c in s.tls_clients]
        figures += ["tls_retr", *(f"tls_prime_{t}" for t in TLS_TRANSPORTS)]
        figures += [f"sasl_{m}_{c}" for m in s.sasl_mechanisms for c in s.sasl_clients]
        for figure in figures:
            errors = _errors(runs, figure)
            if errors:
                listed = "; ".join(f"{count} x `{reason}`" for reason, count in errors.items())
                notes.append(f"- {name} {figure}: errors: {listed}")
            problems = sorted(
                {p for r in runs for p in r.get(figure, {}).get("server_log_problems", [])}
            )
            if problems:
                notes.append(
                    f"- {name} {figure}: {len(problems)} distinct log lines of concern, e.g. "
                    f"`{problems[0][:300]}`"
                )
    header = [f"### pop3d auth_cache_ttl: {mode}", ""]
    legend = [
        "",
        f"`*`: other processes used more than {CONTENDED_CORES} cores during that "
        "measurement (after one retry; the less disturbed attempt is kept).",
        "",
    ]
    notes = notes or ["- no errors in any run"]
    if "tls" in s.figures:
        notes += _tls_negotiated(results)
    return header + rows + legend + notes + [""]


def _plural(clients: int) -> str:
    return f"{clients} client{'s' if clients > 1 else ''}"


def _tls_rows(row: Callable[..., None], s: Settings) -> None:
    """Sessions over TLS (both transports), their CPU, and RETR over pop3s."""

    def at_least(target: float) -> Callable[[float, float | None], bool]:
        return lambda _m, r: r is not None and r >= target

    for transport, label in TLS_TRANSPORTS.items():
        for clients in s.tls_clients:
            row(
                f"TLS sessions/s, {label}, {_plural(clients)}",
                (f"tls_{transport}_{clients}", "sessions_per_s"),
                1,
                f">= {TARGET_TLS_SESSIONS_RATIO:.1f}x Dovecot",
                check=at_least(TARGET_TLS_SESSIONS_RATIO),
            )
    for transport, label in TLS_TRANSPORTS.items():
        for clients in s.tls_clients:
            _cpu_rows(row, f"tls_{transport}_{clients}", "session", f"{label}, {_plural(clients)}")
    for clients in s.tls_clients:
        row(
            f"TLS connections resumed, pop3s, resuming, {_plural(clients)} (%)",
            (f"tls_pop3s-resume_{clients}", "tls_resumed_share"),
            1,
            scale=100.0,
            ratio=False,
        )
    row(
        "RETR 50 MB over implicit TLS (pop3s), MB/s (10^6 B/s)",
        ("tls_retr", "median_mb_per_s"),
        1,
        f">= {TARGET_TLS_RETR_RATIO:.1f}x Dovecot",
        check=at_least(TARGET_TLS_RETR_RATIO),
    )
    row(
        "load generator CPU, RETR over pop3s (cores)",
        ("tls_retr", "cpu", "client_cores"),
        2,
        ratio=False,
    )
    row(
        "server CPU, RETR over pop3s (cores)",
        ("tls_retr", "cpu", "server_cores"),
        2,
        ratio=False,
    )


def _gssapi_rows(row: Callable[..., None], s: Settings) -> None:
    """pop3d alone (Dovecot has no GSSAPI layers): logins with no layer, RETR through each
    layer."""
    for clients in s.sasl_clients:
        row(
            f"logins/s, AUTH GSSAPI (no layer), {_plural(clients)}",
            (f"gssapi_login_{clients}", "sessions_per_s"),
            1,
        )
        _cpu_rows(row, f"gssapi_login_{clients}", "login", f"AUTH GSSAPI, {_plural(clients)}")
    for layer in GSSAPI_LAYERS:
        row(
            f"RETR 50 MB through a GSSAPI {layer} layer, MB/s (10^6 B/s)",
            (f"gssapi_retr_{layer}", "median_mb_per_s"),
            1,
        )
        row(
            f"load generator CPU, RETR through GSSAPI {layer} (cores)",
            (f"gssapi_retr_{layer}", "cpu", "client_cores"),
            2,
            ratio=False,
        )
        row(
            f"server CPU, RETR through GSSAPI {layer} (cores)",
            (f"gssapi_retr_{layer}", "cpu", "server_cores"),
            2,
            ratio=False,
        )


def _sasl_rows(row: Callable[..., None], s: Settings) -> None:
    """Logins per second (connect, AUTH to +OK, QUIT) per mechanism, and their CPU."""
    for mechanism in s.sasl_mechanisms:
        label = SASL_MECHANISMS[mechanism]
        for clients in s.sasl_clients:
            row(
                f"logins/s, {label}, {_plural(clients)}",
                (f"sasl_{mechanism}_{clients}", "sessions_per_s"),
                1,
                f">= {TARGET_SASL_RATIO:.1f}x Dovecot",
                check=lambda _m, r: r is not None and r >= TARGET_SASL_RATIO,
            )
    for mechanism in s.sasl_mechanisms:
        label = SASL_MECHANISMS[mechanism]
        for clients in s.sasl_clients:
            _cpu_rows(row, f"sasl_{mechanism}_{clients}", "login", f"{label}, {_plural(clients)}")


def _cpu_rows(row: Callable[..., None], key: str, per: str, label: str) -> None:
    """Where the CPU of one load point went: the server's per session (or login), compared
    between the servers; the load generator's and everyone else's, which only say how
    much the two cores were shared."""
    row(f"server CPU ms/{per}, {label}", (key, "server_cpu_ms_per_session"), 2)
    row(
        f"load generator CPU ms/{per}, {label}",
        (key, "client_cpu_ms_per_session"),
        2,
        ratio=False,
    )
    row(f"load generator CPU, {label} (cores)", (key, "cpu", "client_cores"), 2, ratio=False)
    row(f"other processes' CPU, {label} (cores)", (key, "cpu", "other_cores"), 2, ratio=False)


def _tls_negotiated(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """What the load generator's side of every TLS connection negotiated, per server."""
    parts = []
    for name, runs in results.items():
        seen: dict[str, int] = {}
        for run in runs:
            for figure, result in run.items():
                if not figure.startswith("tls_"):
                    continue
                counts = dict(result.get("tls") or {})
                for retr in result.get("runs") or []:
                    if retr.get("tls"):
                        counts[retr["tls"]] = counts.get(retr["tls"], 0) + 1
                for what, count in counts.items():
                    seen[what] = seen.get(what, 0) + count
        listed = ", ".join(f"{what} ({count:,} connections)" for what, count in seen.items())
        parts.append(f"{'Dovecot' if name == 'dovecot' else name}: {listed or 'none seen'}")
    return ["- TLS negotiated (load generator's view): " + "; ".join(parts)]


def git_describe() -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def environment() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        from importlib.metadata import version

        pop3d_version = version("pop3d")
    except Exception:  # only for the report
        pop3d_version = "?"
    commit = git_describe()
    debian = Path("/etc/debian_version").read_text().strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} cores (shared by server and load generator)",
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB",
        "os": f"Debian {debian}, Linux {platform.release()}",
        "pop3d": f"{pop3d_version} (git {commit or '?'})",
        "dovecot": dovecot_version(),
        "python": platform.python_version(),
        "open_files_limit": str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
        "loadavg_start": Path("/proc/loadavg").read_text().strip(),
    }


def report(env: dict[str, str], settings: Settings, sections: list[str], command: str) -> str:
    lines = [
        "## Run",
        "",
        f"- Date: {env['date']}",
        f"- Machine: {env['cpu']}; {env['memory']} RAM; {env['os']}",
        f"- pop3d {env['pop3d']}, Python {env['python']}; Dovecot {env['dovecot']}"
        + (f"; Cyrus pop3d {env['cyrus']} (Debian, unpacked)" if "cyrus" in env else ""),
        *(
            [f"- Note: the pop3d checkout changed during the run; at the end: git {end}"]
            if (end := env.get("git_end")) and end not in env["pop3d"]
            else []
        ),
        f"- Command: `{command}`",
        f"- Repetitions: {settings.repeat}; sessions: {settings.warmup:g} s warm-up + "
        f"{settings.duration:g} s measured per point, load generator in up to "
        f"{settings.procs} processes; RETR: {settings.retr_count} timed runs per repetition "
        "(after 1 untimed)"
        + (f"; idle: {settings.idle} connections" if "idle" in settings.figures else "")
        + (f"; idle over pop3s: {settings.tls_idle}" if settings.tls_idle else ""),
        *(
            [
                f"- TLS: {', '.join(map(str, settings.tls_clients))} clients per transport "
                "(pop3s, STLS), a full handshake per session; RETR over pop3s; both servers "
                "with the same bench certificate (ECDSA P-256, made for this run) and their "
                "default TLS settings"
            ]
            if "tls" in settings.figures
            else []
        ),
        *(
            [
                f"- SASL: {', '.join(map(str, settings.sasl_clients))} clients per mechanism; "
                "a login is connect, AUTH to +OK, QUIT; SCRAM on the client side by scramp "
                "(PBKDF2 in the load generator)"
            ]
            if "sasl" in settings.figures
            else []
        ),
        f"- Load average at start / end: {env['loadavg_start']} / {env.get('loadavg_end', '?')}",
        "",
        *sections,
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", default="1,10,100", help="concurrency levels")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds not measured")
    parser.add_argument("--idle", type=int, default=1000, help="idle connections")
    parser.add_argument("--retr-count", type=int, default=3)
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--cache-ttl",
        default="default,0",
        help="pop3d auth_cache_ttl settings, comma separated ('default': not set)",
    )
    parser.add_argument(
        "--figures",
        default=",".join(FIGURES),
        help=f"which of {','.join(FIGURES)} to run (default: all)",
    )
    parser.add_argument(
        "--tls-clients", default="10,100", help="concurrency levels of the TLS sessions"
    )
    parser.add_argument(
        "--sasl-clients", default="10", help="concurrency levels of the SASL and GSSAPI logins"
    )
    parser.add_argument(
        "--sasl-mechanisms",
        default=",".join(SASL_MECHANISMS),
        help=f"which of {','.join(SASL_MECHANISMS)} the sasl figures measure",
    )
    parser.add_argument(
        "--tls-idle",
        type=int,
        default=500,
        help="idle pop3s connections measured first in the TLS phase (0: none)",
    )
    parser.add_argument(
        "--workers",
        default="1,2",
        help="worker counts of the workers figure (pop3d restarted with each)",
    )
    parser.add_argument(
        "--workers-clients",
        type=int,
        default=100,
        help="concurrent clients of the workers figure",
    )
    parser.add_argument(
        "--scale-max",
        type=int,
        default=10_000,
        help="the scale figure's idle crowd at most (default: as many as the hard "
        "file-descriptor limit lets one worker hold, up to 10,000)",
    )
    parser.add_argument(
        "--scale-noops",
        type=int,
        default=1,
        help="NOOPs each crowd connection sends during a measured window of the scale "
        "figure, spread over it (default 1: every connection answers once; 10,000 "
        "connections over 10 s are then 1,000 NOOPs/s beside the sessions)",
    )
    parser.add_argument(
        "--scale-peer-max",
        type=int,
        default=4_000,
        help="the scale figure's crowd at most for Dovecot, whose process per session "
        "would take more memory than the machine has at 10,000 (default 4,000)",
    )
    parser.add_argument(
        "--scale-steps", type=int, default=4, help="crowd sizes measured up to the largest"
    )
    parser.add_argument(
        "--scale-clients",
        type=int,
        default=100,
        help="clients running full sessions beside the scale figure's crowd",
    )
    parser.add_argument(
        "--no-retry",
        action="store_true",
        help="take a measurement during which other processes were busy only once",
    )
    parser.add_argument(
        "--pop3d-baseline",
        metavar="PYTHONPATH",
        help="also measure another pop3d checkout (its package's parent folder, e.g. "
        "/work/wt-old or /work/wt-old/src), as a third server beside the two, in turn",
    )
    parser.add_argument(
        "--cyrus",
        action="store_true",
        help="also measure Debian's Cyrus 3.6 pop3d (unpacked into bench/.lab/pkg, not "
        "installed) in the gssapi figures, as another server beside the others, in turn",
    )
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=QUIET_TIMEOUT,
        help="longest wait for other load to calm down before each measurement (s)",
    )
    parser.add_argument(
        "--dovecot-tuned",
        action="store_true",
        help="an experiment: Dovecot in high-performance login mode with reused pop3 "
        "processes instead of the reference config",
    )
    parser.add_argument(
        "--dovecot-argon2id",
        action="store_true",
        help="an experiment: Dovecot verifies the same Argon2id hashes as pop3d instead of "
        "the reference config's {PLAIN} passwords (sessions figures; not SCRAM)",
    )
    parser.add_argument(
        "--pop3d-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for pop3d-master and its workers (an experiment, e.g. "
        "MALLOC_MMAP_THRESHOLD_=1048576; not part of the standard run)",
    )
    args = parser.parse_args()
    settings = Settings(
        repeat=args.repeat,
        clients=[int(x) for x in args.clients.split(",")],
        duration=args.duration,
        warmup=args.warmup,
        idle=args.idle,
        retr_count=args.retr_count,
        procs=args.procs,
        figures=set(args.figures.split(",")),
        quiet_timeout=args.quiet_timeout,
        tls_clients=[int(x) for x in args.tls_clients.split(",")],
        sasl_clients=[int(x) for x in args.sasl_clients.split(",")],
        sasl_mechanisms=args.sasl_mechanisms.split(","),
        tls_idle=args.tls_idle if "tls" in args.figures.split(",") else 0,
        retry=not args.no_retry,
        workers=[int(x) for x in args.workers.split(",")],
        workers_clients=args.workers_clients,
        scale_max=args.scale_max,
        scale_peer_max=args.scale_peer_max,
        scale_noops=args.scale_noops,
        scale_steps=args.scale_steps,
        scale_clients=args.scale_clients,
    )
    RETRY["contended"] = settings.retry
    if set(settings.sasl_mechanisms) - set(SASL_MECHANISMS):
        parser.error(f"--sasl-mechanisms: known: {', '.join(SASL_MECHANISMS)}")
    unknown = settings.figures - set(FIGURES)
    if args.dovecot_argon2id and "sasl" in settings.figures:
        parser.error("--dovecot-argon2id: Dovecot's SCRAM-SHA-256 needs {PLAIN}; leave out sasl")
    if args.cyrus and "gssapi" not in settings.figures:
        parser.error("--cyrus: Cyrus is measured in the gssapi figures only; add gssapi")
    if unknown:
        parser.error(f"--figures: unknown {', '.join(sorted(unknown))} (known: {FIGURES})")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = settings.idle * 2 + 1024
    if "scale" in settings.figures:
        wanted = hard  # Dovecot (a process per session) and the crowd's processes
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
        if min(wanted, hard) < wanted:
            print(f"bench: open files limited to {hard}; raise the hard limit", file=sys.stderr)
    env = environment()
    command = "bash bench/run.sh " + shlex.join(sys.argv[1:])
    print(f"bench: {env['pop3d']} vs Dovecot {env['dovecot']} on {env['cpu']}", flush=True)
    small, big = messages()
    if settings.figures & {"tls", "scale"}:
        settings.tls = make_tls()  # a fresh CA and certificate for each run
    users = max(
        settings.idle,
        settings.tls_idle,
        *settings.clients,
        *settings.tls_clients,
        *settings.sasl_clients,
        settings.workers_clients if "workers" in settings.figures else 0,
        scale.crowd_limit(settings.scale_clients, settings.scale_max) + settings.scale_clients
        if "scale" in settings.figures
        else 0,
    )
    if "gssapi" in settings.figures:
        print("bench: a Kerberos realm (k5test) for the GSSAPI figures ...", flush=True)
        settings.kerberos = Kerberos(max(settings.sasl_clients))
        os.environ.update(settings.kerberos.client_env)  # the load generator's krb5.conf
    modes = args.cache_ttl.split(",")
    all_results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    sections: list[str] = []
    for mode in modes:
        ttl = None if mode == "default" else int(mode)
        label = "default (300 s)" if ttl is None else f"{ttl}"
        if args.pop3d_env:
            label += ", pop3d environment " + " ".join(args.pop3d_env)
        if args.dovecot_tuned:
            label += ", Dovecot tuned (high-performance login, reused pop3 processes)"
        if args.dovecot_argon2id:
            label += ", Dovecot on the same Argon2id hashes"
        extra_env = dict(x.split("=", 1) for x in args.pop3d_env)
        pop3d = Pop3d(users, ttl, extra_env=extra_env, kerberos=settings.kerberos)
        dovecot = Dovecot(users, tuned=args.dovecot_tuned, argon2id=args.dovecot_argon2id)
        servers: list[Server] = [pop3d, dovecot]
        if args.pop3d_baseline:
            baseline = Pop3d(
                users,
                ttl,
                extra_env=dict(extra_env, PYTHONPATH=args.pop3d_baseline),
                name=BASELINE,
            )
            baseline.prepare(small, big)
            servers = [baseline, pop3d, dovecot]
        if args.cyrus:
            assert settings.kerberos is not None
            cyrus = Cyrus(max(settings.sasl_clients), settings.kerberos)
            print("bench: preparing Cyrus (unpacked packages, LMTP delivery) ...", flush=True)
            cyrus.prepare(small, big)
            env["cyrus"] = cyrus_version()
            servers.append(cyrus)
        print(f"bench: preparing {users} users for the servers ...", flush=True)
        pop3d.prepare(small, big)
        dovecot.prepare(small, big)
        results: dict[str, list[dict[str, Any]]] = {server.name: [] for server in servers}
        for rep in range(settings.repeat):
            # the order turns between repetitions (two servers: alternates)
            order = servers[rep % len(servers) :] + servers[: rep % len(servers)]
            print(f"bench: auth_cache_ttl {label}, repetition {rep + 1}/{settings.repeat}")
            for name, result in run_repetition(order, big, settings).items():
                results[name].append(result)
        all_results[label] = results
        sections += summarize(label, results, settings)
        if "workers" in settings.figures:
            sections += summarize_workers(label, results, settings)
        if "scale" in settings.figures:
            sections += scale.summarize_scale(label, results, settings)
    if settings.kerberos is not None:
        settings.kerberos.stop()
    env["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
    env["git_end"] = git_describe()
    out_dir = LAB / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out_dir / f"{stamp}.json").write_text(
        json.dumps(
            {
                "environment": env,
                "settings": vars(settings)
                | {
                    "figures": sorted(settings.figures),
                    "tls": None
                    if settings.tls is None
                    else {k: str(v) for k, v in vars(settings.tls).items()},
                    "kerberos": None if settings.kerberos is None else "k5test realm",
                },
                "results": all_results,
            },
            indent=1,
        )
    )
    if "scale" in settings.figures:
        chart = scale.chart_after_run(out_dir / f"{stamp}.json")
        if chart is not None:
            sections.append(f"Chart: `{chart}`")
    text = report(env, settings, sections, command)
    (out_dir / f"{stamp}.md").write_text(text)
    print()
    print(text)
    print(f"bench: raw results in {out_dir / stamp}.json, report in {out_dir / stamp}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
