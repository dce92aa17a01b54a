"""A short, bounded run of every fuzz target (fuzz/run.py --short): seeds from vectors/,
a few thousand executions or a few seconds each, in a throwaway corpus. Fails on any
crash or broken invariant; the input is left in fuzz/artifacts/<target>/.

Every target in fuzz/seed.py's TARGETS, the KPOP handshake and the GSSAPI layer included
(those two take about a second each: the GSSAPI one replays the recorded exchange of
vectors/kerberos/ at start-up, offline). One test, the targets one after the other: a
fuzzer takes a whole core, and the suite runs under xdist beside other work."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("atheris")

from fuzz import run


def test_short_run_of_every_target_finds_nothing(tmp_path: Path) -> None:
    flags = [f"-runs={run.SHORT_RUNS}", f"-max_total_time={run.SHORT_SECONDS}"]
    assert {"kpop_handshake", "gssapi_layer"} <= set(run.TARGETS)
    problems = []
    for target in run.TARGETS:
        outcome = run.run_one(target, flags, corpus_root=tmp_path)
        if outcome.crashed or outcome.executions == 0 or outcome.cov == 0:
            log = (run.ARTIFACTS / target / "last-run.log").read_text(errors="replace")
            problems.append(f"{target}: {outcome}\n{log[-3000:]}")
    assert not problems, "\n\n".join(problems)
