"""Issue 28's goals, round by round, from a key-comparison result (``bench.serving
--key-comparison``): each ratio per round, so the spread shows, beside the median.

    .venv/bin/python -m bench.key_ratios bench/results/serving-key-latest.json [--model digits]
    .venv/bin/python -m bench.key_ratios BEFORE.json AFTER.json   # side by side

CPU figures are the server's CPU time per answered request (every process and thread of the
server): the steadier measure on a shared box. A ratio is taken within a round (servers
measured minutes apart share that round's load), never of medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

G, H = "ours gRPC (batching on)", "ours HTTP (batching on)"

# (label, how a round's figure is computed, the goal's rule in words)
GOALS: list[tuple[str, Any, str]] = [
    ("gRPC CPU ms/request c=32", lambda r: r[f"{G} c=32 cpu"], "<= 0.4"),
    ("HTTP /predict CPU ms/request c=32", lambda r: r[f"{H} c=32 cpu"], "<= 1.0"),
    ("OIP gRPC CPU / KServe gRPC CPU c=32",
     lambda r: r["ours OIP gRPC c=32 cpu"] / r["KServe peer c=32 cpu"], "<= 0.75"),
    ("OIP HTTP CPU / KServe REST CPU c=32",
     lambda r: r["ours OIP HTTP c=32 cpu"] / r["KServe peer REST c=32 cpu"], "<= 0.75"),
    ("HTTP /predict / KServe REST images/s c=32",
     lambda r: r[f"{H} c=32"] / r["KServe peer REST c=32"], ">= 1.0"),
    ("HTTP /predict / plain BentoML images/s c=32",
     lambda r: r[f"{H} c=32"] / r["plain BentoML peer c=32"], ">= 2"),
    ("OIP gRPC / KServe gRPC images/s c=32",
     lambda r: r["ours OIP gRPC c=32"] / r["KServe peer c=32"], ">= 1.3"),
    ("OIP HTTP / KServe REST images/s c=32",
     lambda r: r["ours OIP HTTP c=32"] / r["KServe peer REST c=32"], ">= 1.3"),
    ("gRPC / plain grpcio images/s c=32",
     lambda r: r[f"{G} c=32"] / r["plain grpcio peer c=32"], ">= 2"),
    ("gRPC c=1 p50 - (raw ORT batch-1 + decode) ms",
     lambda r: r[f"{G} c=1 p50"] - r["raw_b1_p50_ms"] - r["decode_p50_ms"], "<= 0.5"),
    ("HTTP c=1 p50 - (raw ORT batch-1 + decode) ms",
     lambda r: r[f"{H} c=1 p50"] - r["raw_b1_p50_ms"] - r["decode_p50_ms"], "(no goal)"),
    ("load average (1 min)", lambda r: r["load_avg_1"], ""),
]


def goal_rows(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per goal: the figure of each round (None where a server did not run)."""
    rows = []
    for label, figure, rule in GOALS:
        values = []
        for r in rounds:
            try:
                values.append(float(figure(r)))
            except (KeyError, ZeroDivisionError, TypeError):
                values.append(None)
        known = [v for v in values if v is not None]
        rows.append({"goal": label, "rule": rule, "rounds": values,
                     "median": statistics.median(known) if known else None})
    return rows


def markdown(tables: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """One table: for each goal, each run's rounds and median side by side."""

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    head = ["goal", "rule"]
    for name, rows in tables:
        n = max(len(r["rounds"]) for r in rows)
        head += [f"{name} r{i + 1}" for i in range(n)] + [f"{name} median"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, goal in enumerate(tables[0][1]):
        cells = [goal["goal"], goal["rule"]]
        for _, rows in tables:
            cells += [*map(fmt, rows[i]["rounds"]), fmt(rows[i]["median"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+",
                        help="serving-key-*.json from bench.serving (two: before, after)")
    parser.add_argument("--model", default="digits")
    args = parser.parse_args(argv)
    names = ["before", "after"] if len(args.results) == 2 else [p.stem for p in args.results]
    tables = [(name, goal_rows(json.loads(path.read_text())["models"][args.model]["rounds"]))
              for name, path in zip(names, args.results, strict=True)]
    print(markdown(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
