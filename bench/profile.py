"""Where a pop3d worker spends its CPU per session, and what a change saves: two tools beside
the benchmark (run.py), for working on pop3d's own cost rather than comparing servers.

    profile.py spy --transport plain|pop3s|stls [--clients 10] [--seconds 15] [--native]
                   [--pythonpath DIR] [--top 30]
    profile.py cpu --pythonpath DIR [--pythonpath DIR ...] [--transport plain,pop3s,stls]
                   [--clients 10] [--seconds 8] [--rounds 3] [--prefork 1] [--events]
                   [--floor] [--interpreter PYTHON ...]

``spy``: one pop3d (one worker), a warm-up pass so every user's password is in the
verification cache, then the load generator's sessions (connect, greeting, USER, PASS,
STAT, RETR 1, QUIT: figure 1 of the bench, or its TLS variant) while ``py-spy record``
samples the worker (``--native``: C frames too, e.g. OpenSSL). Prints the functions with
the most samples, by self time and by inclusive time, and the server CPU per session of
that run (py-spy's sampling included: read it from ``cpu``). Needs py-spy (the ``bench``
extra) and root or ptrace rights.

``cpu``: the server CPU per session (user+sys of the master and its workers, divided by
the sessions the load generator completed) of one or more checkouts, each its own pop3d
(``--pythonpath``: the folder holding its ``pop3d`` package; "." is this checkout), all
running at once and measured in turn, the order rotating each round, so they see the
same background load; a warm-up pass first (no Argon2id in the figures). Prints every
value and the median per checkout and transport. ``--interpreter``: run each checkout's
pop3d on each of these Pythons (a virtualenv's ``bin/python`` holding pop3d's
dependencies), side by side in the same rotation: how the interpreter's own build (PGO,
LTO, a shared libpython) moves the figure. The steady figure on a shared machine:
CPU per session barely moves with other load, sessions/s does. ``--events``: also what
``perf stat`` counts in the server's processes per session (context switches,
``epoll_wait`` calls, sends, receives, accepts): where a session's CPU goes that no
profile of Python shows (bench/RESULTS.md, section 15). ``--floor``: also bench/floor.py,
the same sessions answered with canned lines by asyncio alone: the part of a session's
CPU that is the event loop's, its transports' and the kernel's, not pop3d's.

Everything lives under bench/.lab/profile-* (git-ignored), next to the bench's own lab.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from servers import (
    BENCH,
    LAB,
    Floor,
    Pop3d,
    Server,
    TLSFiles,
    make_tls,
    messages,
    process_tree,
    tree_cpu,
)

CLIENT = BENCH / "client.py"
TRANSPORTS = ("plain", "pop3s", "stls")


def _client(
    server: Server, transport: str, clients: int, spans: tuple[float, float], tls: TLSFiles
) -> subprocess.Popen[str]:
    """The load generator's sessions; ``spans``: (warm-up, counted) seconds."""
    warmup, seconds = spans
    port = server.tls_port if transport == "pop3s" else server.port
    command = [
        sys.executable,
        str(CLIENT),
        "sessions",
        "--port",
        str(port),
        "--clients",
        str(clients),
        "--warmup",
        str(warmup),
        "--duration",
        str(seconds),
        "--transport",
        transport,
        "--cafile",
        str(tls.ca),
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, err = process.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"load generator exit {process.returncode}: {err[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if result.get("errors"):
        print(f"profile: errors: {result['errors']}", file=sys.stderr)
    return result


# What ``cpu --events`` counts in the server's processes (perf stat): how often a worker
# waits and is switched out, beside the sends and receives a session needs.
EVENTS = {
    "context-switches": "context switches",
    "syscalls:sys_enter_epoll_wait": "epoll_wait",
    "syscalls:sys_enter_sendto": "sends",
    "syscalls:sys_enter_recvfrom": "receives",
    "syscalls:sys_enter_accept4": "accept4",
}


def _sessions(
    server: Server,
    transport: str,
    clients: int,
    seconds: float,
    tls: TLSFiles,
    *,
    events: dict[str, float] | None = None,
) -> tuple[int, float]:
    """(sessions completed, server CPU seconds) of one run of the load generator;
    ``events``: filled with the counts of EVENTS over the run."""
    counting = _count_events(server) if events is not None else None
    before = tree_cpu(server.pid)
    result = _result(_client(server, transport, clients, (0.5, seconds), tls), seconds + 120)
    used = tree_cpu(server.pid) - before
    if counting is not None and events is not None:
        events.update(_counted(*counting))
    return int(result["ok"]) + int(result["warmup_ok"]), used


def _count_events(server: Server) -> tuple[subprocess.Popen[bytes], Path]:
    out = LAB / "profile-events.txt"
    pids = ",".join(str(pid) for pid in process_tree(server.pid))
    command = ["perf", "stat", "-x,", "-e", ",".join(EVENTS), "-p", pids, "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.3)  # attached before the first session
    return process, out


def _counted(process: subprocess.Popen[bytes], out: Path) -> dict[str, float]:
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    counts = {}
    for line in out.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] in EVENTS and fields[0].replace(".", "").isdigit():
            counts[fields[2]] = float(fields[0])
    if len(counts) != len(EVENTS):
        raise RuntimeError(f"perf stat counted {sorted(counts)}: {err.decode()[-2000:]}")
    return counts


def _start(
    name: str,
    pythonpath: str | None,
    clients: int,
    tls: TLSFiles,
    prefork: int,
    *,
    extra_config: str = "",
    python: str = sys.executable,
) -> Pop3d:
    env = {"PYTHONPATH": str(Path(pythonpath).resolve())} if pythonpath else {}
    server = Pop3d(clients, None, prefork=prefork, extra_env=env, name=name, python=python)
    server.extra_config = extra_config
    small, big = messages()
    server.prepare(small, big)
    server.start(tls)
    for transport in ("plain", "pop3s"):  # every user's password in each worker's cache
        _sessions(server, transport, clients, 2.0, tls)
    return server


def _start_floor(clients: int, tls: TLSFiles) -> Floor:
    """bench/floor.py serving the bench's small message, warmed up as _start's servers."""
    small, _big = messages()
    floor = Floor(small)
    floor.start(tls)
    for transport in ("plain", "pop3s"):
        _sessions(floor, transport, clients, 2.0, tls)
    return floor


def _version_of(python: str) -> str:
    """``python`` as a label: its path and version (``/usr/bin/python3.11 3.11.2``)."""
    version = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return f"{python} {version}"


def _tls() -> TLSFiles:
    return make_tls(LAB / "profile-tls")  # not the bench's: a run may be using that one


# --- spy ----------------------------------------------------------------------------------


def _frame_key(frame: str) -> str:
    """``function (path:line)`` -> ``function (file)``: samples add up per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    short = "/".join(Path(path).parts[-2:]) if path else "?"
    return f"{name} ({short})"


def summarise(raw: Path, top: int) -> list[str]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_key(f) for f in stack.split(";") if f]
        # py-spy puts the process/thread as the first frame: leave it out
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for key in set(frames):
            inclusive[key] += count
    out = [f"{total} samples"]
    for title, counter in (("self", own), ("inclusive", inclusive)):
        out.append(f"top {top} by {title} time:")
        for key, count in counter.most_common(top):
            out.append(f"  {100 * count / max(total, 1):5.1f}%  {key}")
    return out


def spy(args: argparse.Namespace) -> int:
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        raise SystemExit("profile: py-spy not found (pip install -e '.[bench]')")
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    tls = _tls()
    server = _start("profile-spy", args.pythonpath, args.clients, tls, prefork=1)
    try:
        workers = [pid for pid in process_tree(server.pid) if pid != server.pid]
        if len(workers) != 2:  # pop3 and pop3s, one worker each
            raise RuntimeError(f"expected two workers, found {workers}")
        # the service's worker: pop3s serves pop3s, pop3 the rest
        worker = _worker_of(workers, "-s " if args.transport == "pop3s" else None)
        raw = LAB / f"profile-{args.transport}.txt"
        before = tree_cpu(server.pid)
        client = _client(server, args.transport, args.clients, (1.0, args.seconds + 2), tls)
        time.sleep(1.5)
        if args.perf:
            report = _perf(worker, args.seconds, args.top)
        else:
            report = _pyspy(pyspy, worker, args, raw)
        result = _result(client, args.seconds + 120)
        used = tree_cpu(server.pid) - before
        sessions = int(result["ok"]) + int(result["warmup_ok"])
        print(f"profile: {args.transport}, {args.clients} clients: {sessions} sessions, ", end="")
        print(f"server CPU {1000 * used / max(sessions, 1):.2f} ms/session (profiler running)")
        print("\n".join(report))
    finally:
        server.stop()
    return 0


def _pyspy(pyspy: str, worker: int, args: argparse.Namespace, raw: Path) -> list[str]:
    command = [pyspy, "record", "-p", str(worker), "-d", str(int(args.seconds)), "-r", "200"]
    command += ["-f", "raw", "-o", str(raw)]
    # native stacks need the process stopped at each sample; Python ones do not
    command.append("--native" if args.native else "--nonblocking")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"py-spy: {done.stderr[-2000:]}")
    return [*summarise(raw, args.top), f"profile: raw stacks in {raw}"]


def _perf(worker: int, seconds: float, top: int) -> list[str]:
    """perf's view: CPU samples only (no idle threads), by library and by C symbol
    (the kernel's share included: the syscalls' real cost)."""
    data = LAB / "profile-perf.data"
    command = ["perf", "record", "-q", "-F", "499", "-p", str(worker), "-o", str(data)]
    done = subprocess.run(
        [*command, "--", "sleep", str(seconds)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"perf: {done.stderr[-2000:]}")
    out = []
    for sort in ("dso", "dso,sym"):
        report = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--sort", sort, "-q"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        lines = [line.rstrip() for line in report.splitlines() if line.strip()]
        out.append(f"perf, by {sort}:")
        out += lines[:top]
    return out


def _worker_of(workers: list[int], flag: str | None) -> int:
    for pid in workers:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        implicit = " -s " in f" {command} "
        if implicit == (flag is not None):
            return pid
    raise RuntimeError("no worker for that service")


# --- cpu ----------------------------------------------------------------------------------


class _SyslogSink:
    """``--syslog``: a unix datagram socket read and dropped by a thread, as a syslog
    daemon reads /dev/log; every server logs to it (``syslog_socket``) as a site does."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="bench-syslog-", dir="/tmp"))
        self.path = self.folder / "log"  # short: sun_path is 108 octets
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.received = 0
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                self.sock.recv(65536)
            except OSError:
                return
            self.received += 1

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def cpu(args: argparse.Namespace) -> int:
    tls = _tls()
    transports = args.transport.split(",")
    sink = _SyslogSink() if args.syslog else None
    extra = f"syslog_socket: {sink.path}\n" if sink else ""
    interpreters = args.interpreter or [sys.executable]
    runs = [(path, python) for path in args.pythonpath for python in interpreters]
    servers: list[Server] = [
        _start(
            f"profile-{i}",
            path,
            args.clients,
            tls,
            prefork=args.prefork,
            extra_config=extra,
            python=python,
        )
        for i, (path, python) in enumerate(runs)
    ]
    labels = [
        path if len(interpreters) == 1 else f"{path} on {_version_of(python)}"
        for path, python in runs
    ]
    if args.floor:
        servers.append(_start_floor(args.clients, tls))
        labels.append("floor (bench/floor.py)")
    values: dict[tuple[int, str], list[float]] = {}
    rates: dict[tuple[int, str], list[float]] = {}
    counted: dict[tuple[int, str], list[dict[str, float]]] = {}
    try:
        for round_ in range(args.rounds):
            order = list(range(len(servers)))
            order = order[round_ % len(order) :] + order[: round_ % len(order)]
            for transport in transports:
                for i in order:
                    if transport == "stls" and isinstance(servers[i], Floor):
                        continue  # canned lines: no STLS
                    events: dict[str, float] | None = {} if args.events else None
                    sessions, used = _sessions(
                        servers[i], transport, args.clients, args.seconds, tls, events=events
                    )
                    if sessions == 0:  # CPU over no session is no figure
                        raise RuntimeError(f"{labels[i]} {transport}: no session completed")
                    if events is not None:
                        per_session = {k: v / max(sessions, 1) for k, v in events.items()}
                        counted.setdefault((i, transport), []).append(per_session)
                    per = 1000 * used / max(sessions, 1)
                    values.setdefault((i, transport), []).append(per)
                    rates.setdefault((i, transport), []).append(sessions / (args.seconds + 0.5))
                    print(
                        f"  round {round_ + 1} {labels[i]} {transport}: "
                        f"{per:.3f} ms/session, {sessions / (args.seconds + 0.5):.0f}/s",
                        flush=True,
                    )
    finally:
        for server in servers:
            server.stop()
        if sink is not None:
            print(f"  syslog: {sink.received} datagrams", flush=True)
            sink.close()
    print("| checkout | transport | server CPU ms/session (median) | runs | sessions/s |")
    print("|---|---|---:|---|---:|")
    for (i, transport), runs in sorted(values.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        shown = ", ".join(f"{v:.2f}" for v in runs)
        rate = statistics.median(rates[(i, transport)])
        print(
            f"| {labels[i]} | {transport} | {statistics.median(runs):.2f} | {shown} | {rate:.0f} |"
        )
    if counted:
        print()
        print("| checkout | transport | " + " | ".join(EVENTS.values()) + " |")
        print("|---|---|" + "---:|" * len(EVENTS))
        for (i, transport), per_run in sorted(counted.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            medians = [statistics.median(run[event] for run in per_run) for event in EVENTS]
            shown = " | ".join(f"{value:.2f}" for value in medians)
            print(f"| {labels[i]} | {transport} | {shown} |")
        print("(per session, medians of the rounds)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("spy", help="py-spy profile of a worker under load")
    one.add_argument("--transport", choices=TRANSPORTS, default="plain")
    one.add_argument("--clients", type=int, default=10)
    one.add_argument("--seconds", type=float, default=15.0)
    one.add_argument("--native", action="store_true", help="C frames too (OpenSSL, ...)")
    one.add_argument("--perf", action="store_true", help="perf (C and kernel) instead")
    one.add_argument("--pythonpath", help="another checkout (default: this one)")
    one.add_argument("--top", type=int, default=30)
    many = sub.add_parser("cpu", help="server CPU per session of checkouts, interleaved")
    many.add_argument("--pythonpath", action="append", required=True)
    many.add_argument("--transport", default="plain,pop3s")
    many.add_argument("--clients", type=int, default=10)
    many.add_argument("--seconds", type=float, default=8.0)
    many.add_argument("--rounds", type=int, default=3)
    many.add_argument("--prefork", type=int, default=1)
    many.add_argument(
        "--interpreter",
        action="append",
        help="run each checkout on this Python too (a virtualenv's bin/python); repeatable",
    )
    many.add_argument(
        "--syslog",
        action="store_true",
        help="every server also logs to a syslog socket (syslog_socket), as sites do",
    )
    many.add_argument(
        "--floor",
        action="store_true",
        help="also bench/floor.py: the session answered by asyncio alone (canned lines)",
    )
    many.add_argument(
        "--events", action="store_true", help="count wake-ups and syscalls per session (perf)"
    )
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return spy(args) if args.command == "spy" else cpu(args)


if __name__ == "__main__":
    sys.exit(main())
