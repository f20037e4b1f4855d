"""Does a technique slow the training loop? images/s of the recipe's loop on a 10,000-photo
CIFAR-10 subset at 32 px, each technique switched on alone, interleaved A/B repeats.

Issue 23's goal: the loop keeps >= 0.95x its images/s as the techniques are added (lookahead,
whitening and alternating flip must not slow it). On a shared CPU wall-clock images/s moves
with other work, so the bench also reports images per CPU-second of the training process
(its own work; the goal is judged on both) and the load average around each run.

    .venv/bin/python -m bench.step_speed                 # ~8 minutes on 2 quiet cores
    .venv/bin/python -m bench.step_speed --repeats 3 --compile
    .venv/bin/python -m bench.step_speed --threads 1   # steadier on a busy CPU

Prints a markdown table, writes bench/results/step_speed-*.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.cifar_subsets import cifar_subset
from bench.common import ROOT, describe_machine, machine, markdown_table, write_results
from training.config import load_recipe
from training.learner import Callback, Learner

RECIPE = ROOT / "recipes" / "cifar10.toml"

# recipes/cifar10.toml is v2 (every technique on); these overrides take it back to the v1 loop
# (AdamW, one-cycle per stage, random flip, plain stem and BatchNorm), v1's own numbers
V1_LOOP: list[str] = [
    'train.optimizer="adamw"', "train.lr_mults={}", 'train.schedule="stage"',
    "train.lookahead_every=0", "train.weight_decay=0.1", "train.pct_start=0.25",
    "stages.0.lr=6e-3", "model.whiten=false", "model.dirac=false", "model.bn_weight=true",
    "model.logit_scale=1.0", "augment.alternate_flip=false"]

# name -> recipe overrides, each technique alone on top of the v1 loop; the last row is the v2
# recipe as it is (all of them), the loop the goal is about
CONFIGS: dict[str, list[str]] = {
    "baseline (v1 loop)": V1_LOOP,
    "sgd + bn_bias x64": [*V1_LOOP, 'train.optimizer="sgd"', "train.lr_mults={bn_bias=64.0}",
                          "train.weight_decay=0.0153", "stages.0.lr=10.0"],
    "lookahead (every 5)": [*V1_LOOP, "train.lookahead_every=5"],
    "whitened stem + dirac + no BN scale": [*V1_LOOP, "model.whiten=true", "model.dirac=true",
                                            "model.bn_weight=false"],
    "alternating flip": [*V1_LOOP, "augment.alternate_flip=true"],
    "whole-run schedule": [*V1_LOOP, 'train.schedule="run"'],
    "all techniques (v2 recipe)": [],
    "all techniques, batch 1024 (as the v2 run)": ["stages.0.batch_size=1024"],
}
COMPILE = {"torch.compile": ['train.compile="on"']}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class TrainCpu(Callback):
    """CPU seconds of each epoch's training part (validation excluded)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.start = 0.0

    def before_train(self, learn: Learner) -> None:
        self.start = _cpu()

    def after_batch(self, learn: Learner) -> None:
        if learn.state.iteration == learn.state.n_iter - 1:
            self.seconds.append(_cpu() - self.start)


def run_config(name: str, overrides: list[str], data: Path, out: Path,
               epochs: int, threads: int = 0) -> dict[str, Any]:
    from training.phases import fit

    recipe = load_recipe(RECIPE, [
        f"data.path={data}", f"train.output={out}", "data.cache=\"memory\"",
        "stages.0.size=32", "stages.0.batch_size=256", f"stages.0.epochs={epochs}",
        "stages.1.epochs=0", f"train.threads={threads}", *overrides])
    cpu = TrainCpu()
    load_before = os.getloadavg()[0]
    result = fit(recipe, progress=False, callbacks=[cpu])
    last = result.history[-1]
    batch = recipe.stages[0].batch_size
    n_train = len(result.split.train.paths) // batch * batch
    return {"config": name, "images_per_s": last["images_per_s"],
            "images_per_cpu_s": n_train / cpu.seconds[-1], "epochs": epochs,
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = [r for r in rows if r["config"] == "baseline (v1 loop)"]
    base_ips = statistics.median(r["images_per_s"] for r in base)
    base_cpu = statistics.median(r["images_per_cpu_s"] for r in base)
    out = []
    for name in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == name]
        ips = statistics.median(r["images_per_s"] for r in mine)
        per_cpu = statistics.median(r["images_per_cpu_s"] for r in mine)
        out.append({"config": name, "runs": len(mine), "images_per_s": ips,
                    "ratio": ips / base_ips, "images_per_cpu_s": per_cpu,
                    "cpu_ratio": per_cpu / base_cpu,
                    "load": statistics.mean(r["load_before"] for r in mine)})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--per-class", type=int, default=1000, help="photos per class (10 classes)")
    ap.add_argument("--compile", action="store_true", help="also measure train.compile=on")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    ap.add_argument("--only", nargs="*", default=None, help="config names to run")
    args = ap.parse_args(argv)
    info = machine()
    configs = {**CONFIGS, **(COMPILE if args.compile else {})}
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only or k.startswith("baseline")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = cifar_subset(args.per_class, Path(tmp) / "cifar")
        for rep in range(args.repeats):
            for name, overrides in configs.items():
                epochs = 2 if "compile" in name else 1  # compiling is the first epoch's cost
                row = run_config(name, overrides, data, Path(tmp) / f"run-{rep}", epochs,
                                 args.threads)
                print(f"  {name}: {row['images_per_s']:.0f} images/s, "
                      f"{row['images_per_cpu_s']:.0f} images/CPU-s (load {row['load_before']:.1f})",
                      flush=True)
                rows.append({**row, "repeat": rep})
    summary = summarise(rows)
    print(f"\nTraining loop speed, {10 * args.per_class} CIFAR-10 photos (90% trained), 32 px, "
          f"batch 256 unless the row says; {describe_machine(info)}\n")
    print(markdown_table(summary, [
        ("config", "technique", ""), ("runs", "runs", "d"),
        ("images_per_s", "images/s (median)", ".0f"), ("ratio", "x baseline", ".2f"),
        ("images_per_cpu_s", "images/CPU-s", ".0f"), ("cpu_ratio", "x baseline", ".2f"),
        ("load", "load avg", ".1f")]))
    path = write_results("step_speed", {"machine": info, "rows": rows, "summary": summary})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
