"""Training benchmark: our data pipeline against the conventional one, and progressive resizing.

1. Throughput -- images/s of training epochs (data + forward + backward + step, the same model,
   optimiser, loop and machine) for
   - ours: the item stage only presizes (decode + resize, uint8) and ``BatchAugment`` augments
     the whole batch on the device in one grid_sample (the recipe's settings);
   - conventional: torchvision transforms v2 per image in DataLoader workers
     (RandomResizedCrop, flip when the recipe flips, RandomRotation, ColorJitter) -> float tensors.
   The data side alone (loader + augmentation, no model) is measured too.
2. Time to accuracy on digits (recipes/digits.toml with training.phases.fit): progressive resizing
   (the recipe: 16 px then 32 px) against no progressive resizing (32 px throughout, same epochs).

    .venv/bin/python -m bench.training                 # both (~6 minutes on 2 CPU cores)
    .venv/bin/python -m bench.training --only throughput

Prints markdown tables, writes bench/results/training-*.json.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bench.common import (
    DIGITS_RECIPE,
    ROOT,
    describe_machine,
    machine,
    markdown_table,
    write_results,
)

log = logging.getLogger(__name__)


class TorchvisionDataset(Dataset):
    """The conventional item stage: open, convert, and run a per-image transforms v2 pipeline."""

    def __init__(self, paths: list[Path], labels: list[int], transform: Callable) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB")), self.labels[i]


def conventional_transform(recipe: Any, size: int) -> Callable:
    """torchvision's reference-style train preset with the recipe's strengths."""
    from torchvision.transforms import v2

    a = recipe.augment
    steps = [v2.RandomResizedCrop(size, scale=(a.min_scale, 1.0), antialias=True)]
    if a.flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.RandomRotation(a.max_rotate),
              v2.ColorJitter(brightness=a.max_lighting, contrast=a.max_lighting),
              v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(steps)


def _learner(recipe: Any, split: Any, train_dl: DataLoader, augment: Callable,
             device: torch.device) -> Any:
    from training.augment import to_float_nchw
    from training.device import select_precision, use_channels_last
    from training.learner import Learner
    from training.models import build_model
    from training.schedule import build_optimizer, one_cycle

    torch.manual_seed(0)
    model = build_model(recipe.model.arch, len(split.classes)).to(device)
    channels_last = use_channels_last(recipe.train.channels_last, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    learn = Learner(model, train_dl, [], loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1),
                    augment=augment, prepare_valid=to_float_nchw, device=device,
                    precision=select_precision(recipe.train.mixed_precision, device),
                    channels_last=channels_last)
    groups = model.layer_groups()
    learn.opt = build_optimizer(groups, [recipe.stages[-1].lr] * len(groups), 0.01)
    learn.sched = one_cycle(learn.opt, 100 * len(train_dl))
    return learn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_pipeline(name: str, recipe: Any, split: Any, train_dl: DataLoader,
                     augment: Callable, device: torch.device, size: int,
                     epochs: int) -> dict[str, Any]:
    """images/s of ``epochs`` timed training epochs (after one warm-up), and of the data side."""
    learn = _learner(recipe, split, train_dl, augment, device)
    n_per_epoch = len(train_dl) * train_dl.batch_size
    learn.train_one_epoch(0)  # warm-up: workers start, kernels and allocator settle
    _sync(device)
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        learn.train_one_epoch(epoch)
    _sync(device)
    train_s = time.perf_counter() - t0
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for xb, _yb in train_dl:
            augment(xb.to(device, non_blocking=True), gen)
    _sync(device)
    data_s = time.perf_counter() - t0
    return {"pipeline": name, "size": size, "batch_size": train_dl.batch_size,
            "num_workers": train_dl.num_workers, "epochs": epochs,
            "train_images_per_s": n_per_epoch * epochs / train_s,
            "data_images_per_s": n_per_epoch * epochs / data_s}


def bench_throughput(digits_dir: Path, device: torch.device, epochs: int,
                     workers: int) -> list[dict[str, Any]]:
    from training.augment import BatchAugment
    from training.config import eval_spec, load_recipe
    from training.data import EpochShuffleSampler, build_dataloaders, load_items

    recipe = load_recipe(DIGITS_RECIPE, [f'data.path="{digits_dir}"'])
    split = load_items(digits_dir, valid_pct=recipe.data.valid_pct, seed=recipe.data.seed)
    stage = recipe.stages[-1]
    size, batch_size = stage.size, stage.batch_size
    rows = []
    ours_dl = build_dataloaders(split, size=size, batch_size=batch_size, presize=recipe.presize,
                                eval_spec=eval_spec(recipe, size),
                                num_workers=recipe.data.num_workers, seed=0).train
    rows.append(measure_pipeline("ours: presize + BatchAugment on the device", recipe, split,
                                 ours_dl, BatchAugment(recipe.augment, size), device, size,
                                 epochs))
    conventional = TorchvisionDataset(split.train.paths, split.train.labels,
                                      conventional_transform(recipe, size))
    for w in sorted({workers, 0}):
        dl = DataLoader(conventional, batch_size=batch_size, drop_last=True, num_workers=w,
                        sampler=EpochShuffleSampler(len(conventional), seed=0),
                        persistent_workers=w > 0, pin_memory=device.type == "cuda")
        rows.append(measure_pipeline(f"conventional: torchvision v2 per image, {w} workers",
                                     recipe, split, dl, lambda x, gen: x, device, size, epochs))
    return rows


def bench_time_to_accuracy(digits_dir: Path, out: Path,
                           thresholds: tuple[float, ...]) -> list[dict[str, Any]]:
    from training.config import load_recipe
    from training.phases import fit

    variants = {
        "progressive resizing (16 px -> 32 px, the recipe)": [],
        "no progressive resizing (32 px -> 32 px)": ["stages.0.size=32"],
    }
    rows = []
    for name, overrides in variants.items():
        run_dir = out / name.split(" (")[0].replace(" ", "-")
        recipe = load_recipe(DIGITS_RECIPE, [f'data.path="{digits_dir}"',
                                             f'train.output="{run_dir}"', *overrides])
        t0 = time.perf_counter()
        result = fit(recipe, progress=False)
        wall = time.perf_counter() - t0
        elapsed = list(itertools.accumulate(h["seconds"] for h in result.history))
        row: dict[str, Any] = {"variant": name, "epochs": len(result.history),
                               "best_accuracy": result.best_metric,
                               "final_accuracy": result.history[-1]["accuracy"],
                               "train_seconds": elapsed[-1], "wall_seconds": wall,
                               "curve": [{"epoch": i + 1, "size": recipe.stages[
                                   int(h["phase"].removeprefix("stage").split("-")[0]) - 1].size,
                                          "accuracy": h["accuracy"], "seconds": t}
                                         for i, (h, t) in enumerate(zip(result.history, elapsed,
                                                                        strict=True))]}
        for th in thresholds:
            hit = next((t for h, t in zip(result.history, elapsed, strict=True)
                        if h["accuracy"] >= th), None)
            row[f"seconds_to_{th:g}"] = hit
        rows.append(row)
    return rows


THROUGHPUT_COLUMNS = [("pipeline", "pipeline", ""), ("size", "px", "d"),
                      ("batch_size", "batch", "d"),
                      ("train_images_per_s", "train images/s", ",.0f"),
                      ("data_images_per_s", "data only images/s", ",.0f"),
                      ("vs_conventional", "train vs conventional", ".2f")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["throughput", "time-to-accuracy"], default=None)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per pipeline")
    parser.add_argument("--workers", type=int, default=min(len(os.sched_getaffinity(0)), 8),
                        help="DataLoader workers of the conventional pipeline")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads of the training process (0: torch's "
                             "default). On a shared, oversubscribed CPU, 1 avoids OpenMP "
                             "spin-wait collapse (docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from training.data import make_digits
    from training.device import select_device

    device = select_device(args.device)
    results: dict[str, Any] = {"machine": {**machine(), "gpu": torch.cuda.get_device_name()
                                           if device.type == "cuda" else "none"},
                               "device": device.type, "torch": torch.__version__,
                               "torch_threads": torch.get_num_threads(),
                               "command": " ".join(["python -m bench.training",
                                                    *(argv or sys.argv[1:])])}
    lines = [f"Machine: {describe_machine(results['machine'])}; torch {torch.__version__} on "
             f"{device.type}, {torch.get_num_threads()} intra-op thread(s)", ""]
    with tempfile.TemporaryDirectory() as tmp:
        digits_dir = make_digits(Path(tmp) / "digits")
        if args.only in (None, "throughput"):
            rows = bench_throughput(digits_dir, device, args.epochs, args.workers)
            best_conventional = max(r["train_images_per_s"] for r in rows
                                    if r["pipeline"].startswith("conventional"))
            for r in rows:
                r["vs_conventional"] = r["train_images_per_s"] / best_conventional
            target = 2.0 if device.type == "cuda" else 1.0
            ours = rows[0]["vs_conventional"]
            results["throughput"] = rows
            results["throughput_target"] = {"target": f">= {target:g}x the best conventional "
                                                      f"({device.type})", "ratio": ours,
                                            "met": ours >= target}
            lines += ["Training throughput (digits, recipe model and size, same loop):", "",
                      markdown_table(rows, THROUGHPUT_COLUMNS), "",
                      f"Target {results['throughput_target']['target']}: {ours:.2f}x -> "
                      f"{'met' if ours >= target else 'NOT met'}", ""]
        if args.only in (None, "time-to-accuracy"):
            thresholds = (0.95, 0.97)
            rows = bench_time_to_accuracy(digits_dir, Path(tmp) / "runs", thresholds)
            results["time_to_accuracy"] = rows
            columns = [("variant", "variant", ""), ("epochs", "epochs", "d"),
                       *[(f"seconds_to_{t:g}", f"s to {t:.0%}", ".1f") for t in thresholds],
                       ("best_accuracy", "best acc", ".4f"), ("train_seconds", "train s", ".1f")]
            lines += ["Time to accuracy (digits recipe, training.phases.fit):", "",
                      markdown_table(rows, columns), ""]
    results["machine_after"] = {"load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}
    path = write_results("training", results)
    print("\n".join(lines))
    print(f"JSON: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
