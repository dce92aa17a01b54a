"""Runs the fuzz targets one after the other, each in its own process under ``nice -n 19``
(libFuzzer owns the process and exits on the first crash), and prints what each reached.

    python fuzz/run.py --short [target ...]         # CI: a bounded run of each target
    python fuzz/run.py --long N [target ...]        # N executions of each target
    python fuzz/run.py --long N --split [target ...]  # N executions in total, by weight

Seeds come from fuzz/seed.py (rebuilt first, idempotent) and what earlier runs found
stays in fuzz/corpus/<target>/. A crash leaves its input in fuzz/artifacts/<target>/; to
reproduce one: ``python fuzz/<target>.py fuzz/artifacts/<target>/crash-...``.
Exit status: 0 when no target crashed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, not fuzz/

from fuzz import seed
from fuzz.support import CORPUS, ROOT

FUZZ = ROOT / "fuzz"
ARTIFACTS = FUZZ / "artifacts"
TARGETS = tuple(seed.TARGETS)
# Share of a --split budget: the fast parsers take most (tens of thousands of executions a
# second); the session and TLS targets are slow per input (filesystem, handshakes).
WEIGHTS = {
    "proxy_header": 20,
    "wire_commands": 20,
    "message_encoder": 20,
    "imapd_conf": 10,
    "cyrus_conf": 10,
    "sasl_mechanisms": 10,
    "tls_layer": 3,
    "session_core": 7,
    "kpop_handshake": 10,
    "gssapi_layer": 5,
}
# Bounded CI run: a few thousand executions, at most a few seconds of each target.
SHORT_RUNS = 3000
SHORT_SECONDS = 6
MAX_LEN = {"proxy_header": 1024, "imapd_conf": 16384, "session_core": 8192}
_STATUS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")


@dataclass
class Outcome:
    target: str
    executions: int
    cov: int
    ft: int
    corpus: int
    seconds: float
    crashed: bool
    returncode: int
    artifact: str | None


def command(target: str, flags: list[str], corpus: Path) -> list[str]:
    argv = ["nice", "-n", "19", sys.executable, str(FUZZ / f"{target}.py")]
    dictionary = FUZZ / "dicts" / f"{target}.dict"
    if dictionary.exists():
        argv.append(f"-dict={dictionary}")
    # A global memory bound (the harnesses peak near 64 MB) and a hang bound per input.
    argv += [f"-max_len={MAX_LEN.get(target, 4096)}", "-rss_limit_mb=512", "-timeout=60"]
    argv += ["-print_final_stats=1", *flags]
    return [*argv, str(corpus)]


def run_one(target: str, flags: list[str], corpus_root: Path = CORPUS) -> Outcome:
    seed.write(target, corpus_root)
    artifacts = ARTIFACTS / target
    artifacts.mkdir(parents=True, exist_ok=True)
    before = set(artifacts.iterdir())
    flags = [f"-artifact_prefix={artifacts}/", *flags]
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.monotonic()
    log_path = artifacts / "last-run.log"  # written as it runs: tail -f to follow
    with log_path.open("w") as log_file:
        finished = subprocess.run(
            command(target, flags, corpus_root / target),
            cwd=ROOT,
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            check=False,
        )
    seconds = time.monotonic() - started
    log = log_path.read_text(errors="replace")
    statuses = _STATUS.findall(log)
    executions, cov, ft, corpus = (int(x) for x in statuses[-1]) if statuses else (0, 0, 0, 0)
    done = re.search(r"stat::number_of_executed_units: (\d+)", log)
    if done:
        executions = int(done.group(1))
    # crash-, timeout-, oom-, leak- files; a slow-unit- file only says one input was slow
    # (or that the process was stopped for a while), which is no failure.
    new = sorted(
        path
        for path in set(artifacts.iterdir()) - before
        if path.name != "last-run.log" and not path.name.startswith("slow-unit-")
    )
    crashed = finished.returncode != 0 or bool(new)
    return Outcome(
        target,
        executions,
        cov,
        ft,
        corpus,
        round(seconds, 1),
        crashed,
        finished.returncode,
        str(new[0]) if new else None,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--short", action="store_true", help="a bounded run of each target")
    mode.add_argument("--long", type=int, metavar="N", help="N executions of each target")
    parser.add_argument("--split", action="store_true", help="--long N is the total, weighted")
    parser.add_argument("--seconds", type=int, help="also stop each target after this long")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="corpus root")
    parser.add_argument("--json", type=Path, help="append the outcomes here, one per line")
    parser.add_argument("targets", nargs="*", help=f"default: {' '.join(TARGETS)}")
    arguments = parser.parse_args()
    targets = arguments.targets or list(TARGETS)
    for target in targets:
        if target not in TARGETS:
            parser.error(f"unknown target {target!r}")
    total_weight = sum(WEIGHTS[t] for t in targets)
    failed = False
    for target in targets:
        if arguments.short:
            flags = [f"-runs={SHORT_RUNS}", f"-max_total_time={arguments.seconds or SHORT_SECONDS}"]
        else:
            runs = arguments.long
            if arguments.split:
                runs = runs * WEIGHTS[target] // total_weight
            flags = [f"-runs={runs}"]
            if arguments.seconds:
                flags.append(f"-max_total_time={arguments.seconds}")
        outcome = run_one(target, flags, arguments.corpus)
        failed |= outcome.crashed
        verdict = "ok"
        if outcome.crashed:
            verdict = f"CRASH {outcome.artifact or ''} (exit {outcome.returncode})"
        print(
            f"{target:16} {outcome.executions:>10} execs  cov {outcome.cov:>5}  ft {outcome.ft:>6}"
            f"  corpus {outcome.corpus:>5}  {outcome.seconds:>7.1f} s  {verdict}",
            flush=True,
        )
        if arguments.json:
            with arguments.json.open("a") as handle:
                handle.write(json.dumps(asdict(outcome)) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
