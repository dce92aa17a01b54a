"""The scale chart: sessions/s and NOOP p99 latency against the number of clients connected
(the idle crowd plus the session clients), per server, from a bench run's results JSON
(``--figures scale``). Needs matplotlib (the ``bench`` extra: ``pip install -e .[bench]``,
which bench/run.sh installs).

    python bench/chart.py bench/.lab/results/<run>.json [-o chart.png]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

COLOURS = {"pop3d": "tab:blue", "dovecot": "tab:orange", "baseline": "tab:green"}


Series = tuple[list[int], list[float | None], list[float | None], list[float | None]]


def series(runs: list[dict[str, Any]]) -> Series:
    """Clients connected, sessions/s, NOOP p99 and p50 (ms) per crowd size, medians over
    the repetitions."""
    by_size: dict[int, list[dict[str, Any]]] = {}
    clients = 0
    for run in runs:
        scale = run.get("scale", {})
        clients = scale.get("clients", clients)
        for point in scale.get("points", []):
            by_size.setdefault(point["crowd"], []).append(point)
    xs: list[int] = []
    rates: list[float | None] = []
    p99s: list[float | None] = []
    p50s: list[float | None] = []
    for size, points in sorted(by_size.items()):
        xs.append(size + clients)
        rates.append(_median([p.get("sessions", {}).get("sessions_per_s") for p in points]))
        p99s.append(_median([p.get("noop", {}).get("p99_ms") for p in points]))
        p50s.append(_median([p.get("noop", {}).get("p50_ms") for p in points]))
    return xs, rates, p99s, p50s


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def draw(results_json: Path, out: Path) -> Path:
    data = json.loads(results_json.read_text())
    environment = data.get("environment", {})
    figure, (rate_axes, latency_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    drawn = 0
    for mode, results in data.get("results", {}).items():
        for server, runs in results.items():
            xs, rates, p99s, p50s = series(runs)
            if not xs:
                continue
            drawn += 1
            label = server if len(data["results"]) == 1 else f"{server}, auth_cache_ttl {mode}"
            colour = COLOURS.get(server)
            rate_points = [(x, y) for x, y in zip(xs, rates, strict=True) if y is not None]
            latency_points = [(x, y) for x, y in zip(xs, p99s, strict=True) if y is not None]
            if rate_points:
                rate_axes.plot(*zip(*rate_points, strict=True), "o-", label=label, color=colour)
            if latency_points:
                latency_axes.plot(
                    *zip(*latency_points, strict=True), "o-", label=f"{label} p99", color=colour
                )
            median_points = [(x, y) for x, y in zip(xs, p50s, strict=True) if y is not None]
            if median_points:
                latency_axes.plot(
                    *zip(*median_points, strict=True),
                    "x--",
                    label=f"{label} p50",
                    color=colour,
                    alpha=0.6,
                )
    if not drawn:
        raise SystemExit(f"chart: no scale figure in {results_json}")
    rate_axes.set_title("Sessions/s of the session clients")
    rate_axes.set_xlabel("clients connected (idle crowd + session clients)")
    rate_axes.set_ylabel("sessions/s")
    rate_axes.set_ylim(bottom=0)
    latency_axes.set_title("NOOP latency of the idle crowd (p99, p50)")
    latency_axes.set_xlabel("clients connected (idle crowd + session clients)")
    latency_axes.set_ylabel("ms")
    top = max((y for line in latency_axes.get_lines() for y in line.get_ydata()), default=0)
    latency_axes.set_ylim(0, max(110.0, float(top) * 1.1))  # the 100 ms target in view
    latency_axes.axhline(100, color="grey", linestyle=":", linewidth=1, label="100 ms")
    for axes in (rate_axes, latency_axes):
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.suptitle(
        f"pop3d scale run {environment.get('date', '')}: {environment.get('pop3d', '')}; "
        f"{environment.get('cpu', '')}",
        fontsize=8,
    )
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a results JSON of bench/run.py")
    parser.add_argument("-o", "--output", type=Path, help="the PNG (default: beside the JSON)")
    args = parser.parse_args()
    out = draw(args.results, args.output or args.results.with_suffix(".png"))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
