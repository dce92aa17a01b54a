"""The scale figure (``--figures scale``): a crowd of logged-in idle connections on one
worker, half plain and half over STLS, every one of them answering ``NOOP`` while
``--scale-clients`` (100) other clients run full sessions; the sessions' rate with and
without the crowd. See bench/README.md, "8. Scale".

The crowd grows in ``--scale-steps`` steps up to N: as many logged-in sessions as the
file-descriptor limit lets one pop3d worker hold beside the session clients (the hard
limit; pop3d-master raises its soft limit to it), at most ``--scale-max``. The crowd is held
by load-generator processes of its own (bench/crowd.py, one per core, each with its own
descriptor limit); the sessions by bench/client.py as in the sessions figure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pop3d.server import fdlimit
from servers import BENCH, Dovecot, Pop3d, Server

CROWD = BENCH / "crowd.py"
TARGET_P99_MS = 100.0
TARGET_RATE_RATIO = 0.8  # the sessions' rate with the crowd, against without


def crowd_limit(session_clients: int, cap: int) -> int:
    """The largest crowd one pop3d worker can hold beside ``session_clients`` sessions
    (each may be streaming a message) under the hard descriptor limit, at most ``cap``,
    with the lock table the scale run configures (``maildrop_lock: table``)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    per_session = fdlimit.fds_logged_in(lock_in_maildir=False)
    room = hard - fdlimit.reserved(lock_in_maildir=False) - (per_session + 1) * session_clients
    return max(0, min(cap, room // per_session))


def crowd_sizes(total: int, steps: int) -> list[int]:
    """0, then ``steps`` even steps up to ``total``."""
    steps = max(1, steps)
    sizes = sorted({total * k // steps for k in range(1, steps + 1)} - {0})
    return [0, *sizes]


class Crowd:
    """The crowd's load-generator processes and the users they hold (bench<first> on)."""

    def __init__(self, port: int, cafile: str | None, first: int, procs: int) -> None:
        self.next_user = first
        self.processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(CROWD),
                    "--port",
                    str(port),
                    *(["--cafile", cafile] if cafile else []),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(max(1, procs))
        ]
        self.size = 0

    def _tell(self, line: str) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(line + "\n")
            process.stdin.flush()

    def _answers(self, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        answers = []
        for process in self.processes:
            assert process.stdout is not None
            left = max(0.1, deadline - time.monotonic())
            ready, _, _ = select.select([process.stdout], [], [], left)
            line = process.stdout.readline() if ready else ""
            if not line.startswith("{"):
                raise RuntimeError(f"crowd process gave no answer: {self.stderr()}")
            answers.append(json.loads(line))
        return answers

    def stderr(self) -> str:
        text = ""
        for process in self.processes:
            if process.poll() is not None and process.stderr is not None:
                text += process.stderr.read()[-1500:]
        return text or "(still running)"

    def grow(self, size: int, timeout: float = 900.0) -> dict[str, Any]:
        """Open connections until the crowd is ``size`` strong (half plain, half STLS,
        spread over the processes); the merged answer."""
        add = size - self.size
        plain = add // 2
        stls = add - plain
        for index, process in enumerate(self.processes):
            share_plain = _share(plain, len(self.processes), index)
            share_stls = _share(stls, len(self.processes), index)
            first_plain = self.next_user
            first_stls = first_plain + share_plain
            self.next_user = first_stls + share_stls
            assert process.stdin is not None
            process.stdin.write(f"open {first_plain} {share_plain} {first_stls} {share_stls}\n")
            process.stdin.flush()
        self.size = size
        answers = self._answers(timeout)
        errors: dict[str, int] = {}
        for answer in answers:
            for reason, count in answer["errors"].items():
                errors[reason] = errors.get(reason, 0) + count
        return {
            "logged_in": sum(a["logged_in"] for a in answers),
            "alive": sum(a["alive"] for a in answers),
            "errors": errors,
            "open_seconds": max(a["open_seconds"] for a in answers),
        }

    def start_noops(self, delay: float, seconds: float, rounds: int) -> None:
        self._tell(f"noop {delay} {seconds} {rounds}")

    def noop_results(self, timeout: float) -> dict[str, Any]:
        answers = self._answers(timeout)
        plain = sorted(x for a in answers for x in a["plain_ms"])
        stls = sorted(x for a in answers for x in a["stls_ms"])
        errors: dict[str, int] = {}
        for answer in answers:
            for reason, count in answer["errors"].items():
                errors[reason] = errors.get(reason, 0) + count
        every = sorted(plain + stls)
        return {
            "answers": len(every),
            "alive": sum(a["alive"] for a in answers),
            "errors": errors,
            "p50_ms": _percentile(every, 0.5),
            "p99_ms": _percentile(every, 0.99),
            "max_ms": every[-1] if every else None,
            "plain_p99_ms": _percentile(plain, 0.99),
            "stls_p99_ms": _percentile(stls, 0.99),
        }

    def close(self) -> float:
        """Abort every connection; the crowd processes' CPU seconds."""
        cpu = 0.0
        with contextlib.suppress(Exception):
            self._tell("close")
            cpu = sum(a.get("cpu_s", 0.0) for a in self._answers(60))
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return cpu


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def scale_phase(
    servers: list[Server],
    settings: Any,
    out: dict[str, dict[str, Any]],
    measure_sessions: Callable[..., dict[str, Any]],
    wait_quiet: Callable[..., float],
) -> None:
    """For each server: started with TLS (pop3d: one worker per service, so the pop3
    service's one worker holds the crowd and serves the sessions; Dovecot: its process
    limits raised to the crowd), the sessions without a crowd, then at each crowd size
    the sessions again while every crowd connection sends NOOP."""
    clients = settings.scale_clients
    size = crowd_limit(clients, settings.scale_max)
    sizes = crowd_sizes(size, settings.scale_steps)
    procs = len(os.sched_getaffinity(0))
    for server in servers:
        points: list[dict[str, Any]] = []
        server_sizes = sizes
        if isinstance(server, Dovecot):
            # A process per session (and a login proxy per TLS one): 10,000 would be
            # 15,000 processes and about 13 GiB; the peer stops at --scale-peer-max.
            cap = settings.scale_peer_max
            server_sizes = sorted({min(n, cap) for n in sizes})
        out[server.name]["scale"] = {
            "crowd_max": max(server_sizes),
            "clients": clients,
            "points": points,
        }
        saved = _configure(server, max(server_sizes) + clients)
        crowd: Crowd | None = None
        try:
            server.start(settings.tls)
            crowd = Crowd(server.port, str(settings.tls.ca), clients, procs)
            # One untimed pass first: the session clients' first logins (an Argon2id
            # verification each for pop3d, whose cache the restart emptied) must not weigh
            # on the point without a crowd only.
            quiet = dataclasses.replace(settings, quiet_timeout=0.0)
            out[server.name]["scale"]["prime"] = measure_sessions(
                server, clients, quiet, spans=(0.0, max(1.0, settings.warmup))
            )
            for crowd_size in server_sizes:
                point: dict[str, Any] = {"crowd": crowd_size}
                points.append(point)
                if crowd_size:
                    print(f"  {server.name}: crowd of {crowd_size} ...", flush=True)
                    point["open"] = crowd.grow(crowd_size)
                point["load_before_cores"] = wait_quiet(timeout=settings.quiet_timeout)
                if crowd_size:
                    # the load generator starts its clients about a second after it starts
                    crowd.start_noops(
                        1.3 + settings.warmup, settings.duration, settings.scale_noops
                    )
                quiet = dataclasses.replace(settings, quiet_timeout=0.0)  # waited already
                point["sessions"] = measure_sessions(server, clients, quiet)
                if crowd_size:
                    point["noop"] = crowd.noop_results(settings.duration + 120)
                point["memory"] = vars(server.memory())
                _line(server, point, clients)
                if server.process is None or server.process.poll() is not None:
                    point["failed"] = f"{server.name} exited: {server.log_tail(20)}"
                    break
            else:
                # The rate without the crowd again, once it is gone: the machine's own
                # speed drifts over the minutes a repetition takes (by a third in
                # bench/RESULTS.md, section 14.3), so the crowd's points are compared with
                # a rate taken on both sides of them.
                out[server.name]["scale"]["crowd_cpu_s"] = crowd.close()
                crowd = None
                point = {"crowd": 0, "after_crowd": True}
                points.append(point)
                point["load_before_cores"] = wait_quiet(timeout=settings.quiet_timeout)
                quiet = dataclasses.replace(settings, quiet_timeout=0.0)
                point["sessions"] = measure_sessions(server, clients, quiet)
                # not "memory": what the crowd left allocated is no crowd-less figure
                point["memory_after_crowd"] = vars(server.memory())
                _line(server, point, clients)
        except Exception as exc:  # a bench bug or a server failure: report it, keep going
            out[server.name]["scale"]["failed"] = f"{exc.__class__.__name__}: {exc}"[:2000]
            print(f"    FAILED {exc}", flush=True)
        finally:
            if crowd is not None:
                out[server.name]["scale"]["crowd_cpu_s"] = crowd.close()
            server.stop()
            _restore(server, saved)


def _configure(server: Server, connections: int) -> tuple[Any, ...]:
    if isinstance(server, Pop3d):
        saved: tuple[Any, ...] = (server.prefork, server.maxchild, server.maildrop_lock)
        server.prefork, server.maxchild = 1, connections + 100
        server.maildrop_lock = "table"
        return saved
    if isinstance(server, Dovecot):
        saved = (server.process_limit,)
        # a pop3 process per session and, over TLS, its pop3-login process as a proxy
        server.process_limit = max(server.process_limit, connections + 200)
        return saved
    return ()


def _restore(server: Server, saved: tuple[Any, ...]) -> None:
    if isinstance(server, Pop3d):
        server.prefork, server.maxchild, server.maildrop_lock = saved
    elif isinstance(server, Dovecot):
        (server.process_limit,) = saved


def _line(server: Server, point: dict[str, Any], clients: int) -> None:
    sessions = point["sessions"]
    noop = point.get("noop", {})
    opened = point.get("open", {})
    after = " (again, the crowd closed)" if point.get("after_crowd") else ""
    print(
        f"  {server.name}: crowd {point['crowd']}{after} "
        f"(logged in {opened.get('logged_in', 0)}, alive {noop.get('alive', '-')}): "
        f"{clients} clients {sessions.get('sessions_per_s', 0):.1f} sessions/s, "
        f"NOOP p50 {_ms(noop.get('p50_ms'))} p99 {_ms(noop.get('p99_ms'))}, errors "
        f"{sessions.get('errors') or sessions.get('failed') or 0} "
        f"{opened.get('errors') or ''} {noop.get('errors') or ''}",
        flush=True,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


# --- report -----------------------------------------------------------------------------


def points_by_size(runs: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Each crowd size's points over the repetitions."""
    out: dict[int, list[dict[str, Any]]] = {}
    for run in runs:
        for point in run.get("scale", {}).get("points", []):
            out.setdefault(point["crowd"], []).append(point)
    return out


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def summarize_scale(mode: str, results: dict[str, list[dict[str, Any]]], s: Any) -> list[str]:
    rows = [
        f"### Scale: an idle crowd on one worker (auth_cache_ttl {mode})",
        "",
        f"{s.scale_clients} clients run the sessions figure's session in clear text while "
        "the crowd (half plain, half STLS, each logged in with USER/PASS and idle) sends "
        f"NOOP {s.scale_noops} time(s) per connection, spread over the measured window; "
        "latency from NOOP sent to +OK read, over every connection. pop3d: one worker holds "
        "the crowd and serves the sessions; Dovecot: a pop3 process per session (and its "
        "pop3-login process as TLS proxy for STLS ones). The rate without a crowd is "
        "measured before the crowd opens and again after it has closed, and its row is the "
        "median of both (the machine's speed drifts over a repetition). Server memory: the "
        "process tree "
        "(RSS counts shared pages once per process; PSS divides them). Medians over the "
        "repetitions.",
        "",
        "| Server | Crowd | Logged in / alive | Sessions/s | vs no crowd | NOOP p50 ms "
        "| NOOP p99 ms | p99 plain / STLS ms | Server RSS / PSS MiB | Errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    notes = []
    for name, runs in results.items():
        by_size = points_by_size(runs)
        base = _median([p["sessions"].get("sessions_per_s") for p in by_size.get(0, [])])
        for size, points in sorted(by_size.items()):
            rate = _median([p["sessions"].get("sessions_per_s") for p in points])
            noop = [p.get("noop", {}) for p in points]
            logged = _median([p.get("open", {}).get("logged_in") for p in points])
            alive = _median([n.get("alive") for n in noop])
            rss = _median([p.get("memory", {}).get("rss_kib") for p in points])
            pss = _median([p.get("memory", {}).get("pss_kib") for p in points])
            errors: dict[str, int] = {}
            for p in points:
                for part in (p["sessions"], p.get("open", {}), p.get("noop", {})):
                    for reason, count in (part.get("errors") or {}).items():
                        errors[reason] = errors.get(reason, 0) + count
                    if "failed" in part:
                        errors[part["failed"][:200]] = errors.get(part["failed"][:200], 0) + 1
            ratio = rate / base if rate is not None and base else None
            rows.append(
                f"| {name} | {size:,} | "
                + ("-" if not size else f"{_fmt(logged, 0)} / {_fmt(alive, 0)}")
                + f" | {_fmt(rate)} | "
                + ("-" if not size or ratio is None else f"{ratio:.2f}x")
                + f" | {_fmt(_median([n.get('p50_ms') for n in noop]), 2)}"
                f" | {_fmt(_median([n.get('p99_ms') for n in noop]), 2)}"
                f" | {_fmt(_median([n.get('plain_p99_ms') for n in noop]), 2)} / "
                f"{_fmt(_median([n.get('stls_p99_ms') for n in noop]), 2)}"
                f" | {_fmt(None if rss is None else rss / 1024, 0)} / "
                f"{_fmt(None if pss is None else pss / 1024, 0)}"
                f" | {sum(errors.values())} |"
            )
            if errors:
                listed = "; ".join(f"{c} x `{r[:160]}`" for r, c in list(errors.items())[:5])
                notes.append(f"- {name}, crowd {size:,}: {listed}")
        for run in runs:
            prime = run.get("scale", {}).get("prime", {})
            if prime.get("errors") or prime.get("failed"):
                notes.append(
                    f"- {name}, untimed pass: {prime.get('errors') or prime.get('failed')}"
                )
            failed = run.get("scale", {}).get("failed")
            if failed:
                notes.append(f"- {name}: the scale figure failed: `{failed[:300]}`")
    rows += [
        "",
        f"Targets (issue 13): NOOP p99 <= {TARGET_P99_MS:.0f} ms with the whole crowd, and the "
        f"sessions' rate >= {TARGET_RATE_RATIO:.0%} of the rate without it.",
        "",
        *(notes or ["- no errors in the scale figure"]),
        "",
    ]
    return rows


def chart_after_run(json_path: Path) -> Path | None:
    """The scale chart beside the run's results (bench/chart.py), if matplotlib is
    installed (the ``bench`` extra)."""
    try:
        import chart
    except ImportError:  # matplotlib missing: the run's numbers still stand
        print("bench: matplotlib not installed; no chart (pip install -e .[bench])")
        return None
    return chart.draw(json_path, json_path.with_suffix(".png"))
