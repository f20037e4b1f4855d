"""Ablation of airbench94's techniques in our recipe engine: each added one at a time.

Starts from the v1 CIFAR-10 recipe's loop (AdamW, a one-cycle per progressive-resizing stage,
random flips) and adds, cumulatively, what recipes/cifar10.toml v2 uses; the last row IS v2's
recipe on the subset. Every row trains the same epochs on the same class-balanced subset of
CIFAR-10's JPEGs (``--per-class`` photos per class, 20% held out, seeded) with each of
``--seeds``; the table gives each seed, the mean, the spread (max - min) and CPU seconds.

    .venv/bin/python -m bench.ablation --per-class 250 --seeds 1 2 --table docs/ablation-airbench.md

One torch thread per run (``--threads``): on a shared CPU that keeps the runs' CPU time honest.
Writes bench/results/ablation-*.json and the markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.cifar_subsets import cifar_subset
from bench.common import ROOT, describe_machine, machine, write_results
from training.config import load_recipe
from training.machine import process_cpu_seconds

RECIPE = ROOT / "recipes" / "cifar10.toml"

# The v1 loop: v2's recipe with every technique off (v1's own optimiser and LRs).
V1_LOOP = [
    'train.optimizer="adamw"', "train.weight_decay=0.1", 'train.schedule="stage"',
    "train.pct_start=0.25", "train.lr_mults={}", "train.lookahead_every=0",
    "model.whiten=false", "model.dirac=false", "model.bn_weight=true", "model.logit_scale=1.0",
    "augment.alternate_flip=false", "stages.0.lr=6e-3", "stages.1.lr=4e-3",
]
# (row name, overrides that undo it): each row switches one more technique on
ROWS: list[tuple[str, list[str]]] = [
    ("v1 loop (AdamW, one-cycle per stage)", []),
    ("+ one schedule over both stages", ['train.schedule="run"']),
    ("+ Nesterov SGD, triangular (airbench units)", [
        'train.optimizer="sgd"', "train.weight_decay=0.0153", 'train.schedule="triangular"',
        "train.pct_start=0.23", "stages.0.lr=11.5", "stages.1.lr=11.5"]),
    ("+ whitened frozen stem", ["model.whiten=true"]),
    ("+ BN bias-only, 64x bias LR", ["model.bn_weight=false", "train.lr_mults={bn_bias=64.0}"]),
    ("+ dirac init", ["model.dirac=true"]),
    ("+ logit scale 1/9", ["model.logit_scale=0.111"]),
    ("+ lookahead", ["train.lookahead_every=5"]),
    ("+ alternating flip (= v2 recipe)", ["augment.alternate_flip=true"]),
]


def row_overrides(upto: int) -> list[str]:
    out = list(V1_LOOP)
    for _, overrides in ROWS[: upto + 1]:
        out += overrides
    return out


def run_row(index: int, seed: int, data: Path, out: Path, args: argparse.Namespace) -> dict:
    from training.run import fit_and_report

    recipe = load_recipe(RECIPE, [
        f"data.path={data}", f"train.output={out}", "data.valid_pct=0.2",
        f"train.seed={seed}", f"train.threads={args.threads}", f"model.arch={args.arch}",
        f"stages.0.epochs={args.epochs[0]}", f"stages.1.epochs={args.epochs[1]}",
        f"stages.0.batch_size={args.batch_size}", f"stages.1.batch_size={args.batch_size}",
        *row_overrides(index)])
    c0 = process_cpu_seconds()
    summary = fit_and_report(recipe, tta=True, progress=False)
    return {"row": ROWS[index][0], "seed": seed, "accuracy": summary.accuracy,
            "tta_accuracy": summary.tta_accuracy, "cpu_seconds": process_cpu_seconds() - c0}


def table(results: list[dict[str, Any]], seeds: list[int],
          names: list[str] | None = None) -> str:
    """Markdown: per seed TTA, mean TTA, spread (max - min), mean plain, mean CPU s; one line
    per row name (default: this ablation's ROWS), in that order."""
    lines = ["| recipe | " + " | ".join(f"seed {s} (TTA)" for s in seeds)
             + " | mean TTA | spread | mean plain | mean CPU s |",
             "|---|" + "---:|" * (len(seeds) + 4)]
    for name in names if names is not None else [n for n, _ in ROWS]:
        mine = [r for r in results if r["row"] == name]
        if not mine:
            continue
        by_seed = {r["seed"]: r for r in mine}
        tta = [r["tta_accuracy"] for r in mine]
        cells = [f"{100 * by_seed[s]['tta_accuracy']:.1f}" if s in by_seed else "-"
                 for s in seeds]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {100 * statistics.mean(tta):.1f} | {100 * (max(tta) - min(tta)):.1f}"
                     f" | {100 * statistics.mean(r['accuracy'] for r in mine):.1f}"
                     f" | {statistics.mean(r['cpu_seconds'] for r in mine):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=250)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, nargs=2, default=[4, 6], help="24 px, then 32 px")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--arch", default="airbench_small")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, nargs="*", help="row indices (default: all)")
    ap.add_argument("--table", type=Path, default=ROOT / "bench" / "results" / "ablation.md")
    args = ap.parse_args(argv)
    info = machine()
    results: list[dict[str, Any]] = []
    rows = args.rows if args.rows else range(len(ROWS))
    with tempfile.TemporaryDirectory() as tmp:
        data = cifar_subset(args.per_class, Path(tmp) / "photos")
        for seed in args.seeds:
            for i in rows:
                r = run_row(i, seed, data, Path(tmp) / f"run-{seed}-{i}", args)
                results.append(r)
                print(f"{r['row']:<48} seed {seed}: {r['accuracy']:.4f} plain, "
                      f"{r['tta_accuracy']:.4f} TTA, {r['cpu_seconds']:.0f} CPU s", flush=True)
                args.table.write_text(table(results, args.seeds))  # progress survives a cut
    print(f"\n{describe_machine(info)}\n\n{table(results, args.seeds)}")
    path = write_results("ablation", {"machine": info, "args": vars(args), "results": results})
    print(f"wrote {path} and {args.table}")


if __name__ == "__main__":
    main()
