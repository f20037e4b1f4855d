"""Ablation: train a recipe adding one technique at a time; writes a markdown table.

Rows (cumulative, as the fastbook chapter-7 posts compare them): baseline (no normalisation,
one stage at the final size, plain cross-entropy, no MixUp, no TTA), +normalisation,
+progressive resizing, +TTA (same model, evaluated with TTA), +MixUp, +label smoothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time
from pathlib import Path

from training.commands._recipe_args import add_recipe_args, recipe_from_args
from training.config import Recipe, StageConfig


def register(parser: argparse.ArgumentParser) -> None:
    add_recipe_args(parser)
    parser.add_argument("--table", type=Path, default=Path("docs/ablation.md"),
                        help="markdown table to write")
    parser.add_argument("--mixup", type=float, default=0.4, help="MixUp alpha of the +MixUp row")
    parser.add_argument("--label-smoothing", type=float, default=0.1)


def variants(recipe: Recipe, mixup: float, eps: float) -> list[tuple[str, Recipe, bool]]:
    """(row name, recipe, evaluate with TTA) for each cumulative step."""
    final = recipe.stages[-1]
    total_epochs = sum(s.epochs for s in recipe.stages)
    one_stage = [StageConfig(final.size, final.batch_size, total_epochs, final.lr)]

    def with_(r: Recipe, section: str, **changes) -> Recipe:
        return dataclasses.replace(r, **{section: dataclasses.replace(getattr(r, section),
                                                                      **changes)})

    base = dataclasses.replace(recipe, stages=one_stage)
    base = with_(base, "data", normalize="none")
    base = with_(base, "train", mixup=0.0, cutmix=0.0, label_smoothing=0.0)
    norm = with_(base, "data", normalize="dataset")
    prog = dataclasses.replace(norm, stages=list(recipe.stages))
    mix = with_(prog, "train", mixup=mixup)
    smooth = with_(mix, "train", label_smoothing=eps)
    return [("baseline", base, False), ("+ normalisation", norm, False),
            ("+ progressive resizing", prog, False), ("+ TTA", prog, True),
            ("+ MixUp", mix, True), ("+ label smoothing", smooth, True)]


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the DataLoader workers): steadier
    than wall time when other jobs share the cores."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(args: argparse.Namespace) -> int:
    from training.run import fit_and_report

    recipe = recipe_from_args(args)
    root = Path(recipe.train.output) / "ablation"
    rows, cache = [], {}
    for name, variant, tta in variants(recipe, args.mixup, args.label_smoothing):
        key = repr(dataclasses.replace(variant, train=dataclasses.replace(variant.train,
                                                                          output="")))
        if key not in cache:  # "+ TTA" re-uses the previous row's model
            out = root / name.strip("+ ").replace(" ", "_")
            variant = dataclasses.replace(variant, train=dataclasses.replace(variant.train,
                                                                             output=str(out)))
            t0, c0 = time.perf_counter(), cpu_seconds()
            summary = fit_and_report(variant, tta=True, progress=False)
            cache[key] = (summary, time.perf_counter() - t0, cpu_seconds() - c0)
        summary, seconds, cpu = cache[key]
        acc = summary.tta_accuracy if tta else summary.accuracy
        rows.append((name, acc, seconds, cpu))
        print(f"{name:<24} accuracy {acc:.4f}  {seconds:.0f}s wall, {cpu:.0f}s CPU", flush=True)
    lines = ["| recipe | valid accuracy | error | wall time (s) | CPU time (s) |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {a:.4f} | {1 - a:.2%} | {s:.0f} | {c:.0f} |" for n, a, s, c in rows]
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text("\n".join(lines) + "\n")
    print(f"table: {args.table}")
    return 0
