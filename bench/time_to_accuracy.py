"""Accuracy against training time for one run folder: a table, a PNG, and the time to a target.

Reads what ``training fit`` wrote (``metrics.json``: one history row per epoch with its wall
seconds; the run's total seconds, whose remainder before the first epoch is data loading and
presizing) and plots validation accuracy against cumulative wall time.

    .venv/bin/python -m bench.time_to_accuracy runs/cifar10 --target 0.90
    # -> a markdown table on stdout, runs/cifar10/report/accuracy_vs_time.png

Goal (issue 13): recipes/cifar10.toml reaches 90% validation accuracy within 30 minutes of a
2-core CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curve(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """(minutes since the run started, accuracy, phase, epoch) per epoch."""
    history = metrics["history"]
    epoch_seconds = sum(r["seconds"] for r in history)
    setup = max(0.0, metrics.get("seconds", epoch_seconds) - epoch_seconds
                - metrics.get("report_seconds", 0.0))
    elapsed, rows = setup, []
    for r in history:
        elapsed += r["seconds"]
        rows.append({"minutes": elapsed / 60, "accuracy": r["accuracy"], "phase": r["phase"],
                     "epoch": r["epoch"], "images_per_s": r.get("images_per_s")})
    return rows


def time_to(rows: list[dict[str, Any]], target: float) -> float | None:
    return next((r["minutes"] for r in rows if r["accuracy"] >= target), None)


def plot(rows: list[dict[str, Any]], target: float, out: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([r["minutes"] for r in rows], [100 * r["accuracy"] for r in rows], "o-", ms=3)
    ax.axhline(100 * target, color="grey", ls="--", lw=1)
    reached = time_to(rows, target)
    if reached is not None:
        ax.axvline(reached, color="tab:green", ls=":", lw=1)
        ax.annotate(f"{100 * target:.0f}% at {reached:.1f} min", (reached, 100 * target),
                    textcoords="offset points", xytext=(6, -14), color="tab:green")
    for i, r in enumerate(rows):
        if i == 0 or r["phase"] != rows[i - 1]["phase"]:
            ax.annotate(r["phase"], (r["minutes"], 100 * r["accuracy"]),
                        textcoords="offset points", xytext=(0, 8), fontsize=8)
    ax.set_xlabel("wall time since the run started (minutes)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder written by `training fit`")
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--png", type=Path, default=None,
                        help="default: RUN/report/accuracy_vs_time.png")
    args = parser.parse_args()
    metrics = json.loads((args.run / "metrics.json").read_text())
    rows = curve(metrics)
    png = plot(rows, args.target, args.png or args.run / "report" / "accuracy_vs_time.png",
               f"{args.run.name}: validation accuracy vs training time")
    print("| epoch | phase | minutes | accuracy | train images/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        ips = f"{r['images_per_s']:.0f}" if r.get("images_per_s") else "-"
        print(f"| {r['epoch']} | {r['phase']} | {r['minutes']:.1f} | {100 * r['accuracy']:.2f}% "
              f"| {ips} |")
    reached = time_to(rows, args.target)
    print(f"\ntime to {100 * args.target:.0f}%: "
          + (f"{reached:.1f} min" if reached is not None else "not reached")
          + f"; final {100 * rows[-1]['accuracy']:.2f}% after {rows[-1]['minutes']:.1f} min")
    print(f"PNG: {png}")


if __name__ == "__main__":
    main()
