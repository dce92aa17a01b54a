"""Each bench mode runs end to end on a tiny setting (issue 13: "the suite checks that each
bench mode runs end to end"): bench/run.py against pop3d and Debian's Dovecot with 2
clients, half-second windows and one repetition, in a temporary lab folder. No figure is
asserted: only that every mode measured something and nothing failed. The gssapi figures
(a k5test realm) are left out here; tests/sasl covers GSSAPI itself. The scale figure runs
with a crowd of 20 idle connections, and its chart (bench/chart.py, matplotlib) is drawn
from the run's results."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.lab import ROOT

FIGURES = "idle,sessions,retr,tls,sasl,workers,scale"


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the bench runs Dovecot, which starts as root")
def test_every_bench_mode_runs_end_to_end() -> None:
    # Not pytest's tmp_path: its folders are 0700 root, and Dovecot's mail user must reach
    # the maildrops in the lab.
    lab = Path(tempfile.mkdtemp(prefix="pop3d-bench-smoke-"))
    try:
        lab.chmod(0o755)
        _run(lab)
    finally:
        shutil.rmtree(lab, ignore_errors=True)


def _bench_tool(
    lab: Path, script: str, args: list[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """One of bench/'s tools, its lab in ``lab``, this checkout's pop3d."""
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        env={**os.environ, "POP3D_BENCH_LAB": str(lab), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _run(lab: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    done = _bench_tool(
        lab, "run.py",
        [
            "--repeat", "1", "--cache-ttl", "default", "--figures", FIGURES,
            "--clients", "2", "--tls-clients", "2", "--sasl-clients", "2",
            "--idle", "2", "--tls-idle", "2", "--retr-count", "1",
            "--warmup", "0.2", "--duration", "0.5", "--quiet-timeout", "0", "--no-retry",
            "--workers", f"1,{cores}", "--workers-clients", "4", "--procs", "1",
            "--scale-max", "20", "--scale-steps", "2", "--scale-clients", "2",
            "--scale-peer-max", "10",
        ],
        timeout=360,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (report,) = (lab / "results").glob("*.md")
    text = report.read_text()
    assert "- no errors in any run" in text, text
    assert "failed" not in done.stdout, done.stdout
    for figure in (
        "RSS KiB per idle conn (2)",
        "sessions/s, 2 clients",
        "RETR 50 MB, MB/s (10^6 B/s)",
        "TLS sessions/s, implicit TLS (pop3s), 2 clients",
        "TLS sessions/s, STLS, 2 clients",
        "TLS sessions/s, pop3s, resuming, 2 clients",
        "RSS KiB per idle pop3s conn (2)",
        "logins/s, AUTH PLAIN, 2 clients",
        "logins/s, AUTH SCRAM-SHA-256, 2 clients",
    ):
        row = next((line for line in text.splitlines() if line.startswith(f"| {figure} |")), "")
        cells = [cell.strip() for cell in row.split("|")[2:4]]
        assert len(cells) == 2 and "n/a" not in cells, f"{figure}: {row!r}\n{text}"
    for workers in sorted({1, cores}):
        assert re.search(rf"^\| {workers} \| [\d,]+\.\d \|", text, re.MULTILINE), text
    _check_scale(lab, text)


def _check_scale(lab: Path, text: str) -> None:
    """pop3d held the crowd (10 and 20), Dovecot up to its cap (10), every connection
    answered NOOP, and the chart was drawn, by the run and by bench/chart.py from the
    results JSON."""
    assert "- no errors in the scale figure" in text, text
    assert not re.search(r"^\| dovecot \| 20 \|", text, re.MULTILINE), text
    for server, crowds in (("pop3d", (10, 20)), ("dovecot", (10,))):
        for crowd in crowds:
            row = re.search(
                rf"^\| {server} \| {crowd} \| {crowd} / {crowd} \| [\d,]+\.\d \| [\d.]+x "
                rf"\| [\d.]+ \| [\d.]+ \|",
                text,
                re.MULTILINE,
            )
            assert row, f"{server} crowd {crowd}:\n{text}"
    (results,) = (lab / "results").glob("*.json")
    # the rate without a crowd measured again after it closed, for both servers
    for runs in json.loads(results.read_text())["results"].values():
        for server, (run,) in runs.items():
            after = [p for p in run["scale"]["points"] if p.get("after_crowd")]
            assert len(after) == 1 and after[0]["crowd"] == 0, server
            assert after[0]["sessions"]["ok"] > 0, server
    assert results.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    chart = lab / "again.png"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chart.py"), str(results), "-o", str(chart)],
        check=True,
        timeout=120,
    )
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_the_tls_memory_probe_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "tls_memory.py"), "--count", "30"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    figures = json.loads(done.stdout)
    # Any OpenSSL holds some KiB per connection, and more after a handshake than before.
    for library in ("bundled", "system"):
        assert 1 < figures[f"{library}_new_kib"] < figures[f"{library}_idle_kib"] < 200, figures


@pytest.mark.slow
def test_the_cpu_profile_runs_with_the_floor() -> None:
    """bench/profile.py cpu, this checkout beside bench/floor.py (asyncio answering the
    same sessions with canned lines): both measured, over plain and pop3s, the checkout
    logging to a syslog socket too (--syslog), and run on two interpreters
    (--interpreter; here the same one twice: what matters is that each is a server of its
    own, labelled with its Python)."""
    lab = Path(tempfile.mkdtemp(prefix="pop3d-profile-smoke-"))
    try:
        done = _bench_tool(
            lab, "profile.py",
            [
                "cpu", "--pythonpath", str(ROOT), "--floor", "--transport", "plain,pop3s",
                "--clients", "2", "--rounds", "1", "--seconds", "0.5", "--syslog",
                "--interpreter", sys.executable, "--interpreter", sys.executable,
            ],
            timeout=300,
        )  # fmt: skip
    finally:
        shutil.rmtree(lab, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    logged = re.search(r"^  syslog: (\d+) datagrams$", done.stdout, re.M)
    assert logged and int(logged.group(1)) > 0, done.stdout  # every session's lines
    rows = re.findall(r"^\| (.+?) \| (plain|pop3s) \| (\d+\.\d+) \|", done.stdout, re.M)
    measured = {(name, transport) for name, transport, value in rows if float(value) > 0}
    on_python = f"{ROOT} on {sys.executable} {platform.python_version()}"
    for name in (on_python, "floor (bench/floor.py)"):
        assert {(name, "plain"), (name, "pop3s")} <= measured, done.stdout
    # one row per server: the checkout twice (one per interpreter), the floor once
    assert sum(1 for name, transport, _ in rows if transport == "plain") == 3, done.stdout
