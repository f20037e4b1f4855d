"""The same recipe trained twice, side by side: with our ``training`` package and with fastai.

Same data and split (our seeded splitter; fastai gets the very same file lists through a
DataFrame and ``ColSplitter``), same model (xresnet18: fastai's ``xresnet18`` and ours have the
same layers, 11,200,874 parameters, the same init), same sizes (progressive resizing: one
one-cycle per size), epochs, batch size, LR, weight decay, MixUp, label smoothing, augmentation
(fastai's ``aug_transforms`` values; ours ``[augment]`` set to match), normalisation statistics
(computed by ``training.data.compute_stats`` on the training split), seed and thread count
(``torch.set_num_threads`` in both). TTA: fastai's ``learn.tta(n=4, beta=0.25)`` (4 randomly
augmented passes + the plain one) against ours (``--tta-views``: the plain view + 4 fixed
views in one pass, the same beta). Both evaluate the last epoch.

Every library run is its own subprocess (from scratch, no shared state; peak RSS = that
process's ``ru_maxrss``; the process tree is also sampled), and the order alternates across
seeds (seed 1: ours then fastai; seed 2: fastai then ours; ...).

``--ours-recipe techniques`` keeps fastai on that chapter-7 recipe and trains ours with the
airbench94 techniques of recipes/cifar10.toml v2 instead, on airbench_small by default, with
``--ours-epochs`` / ``--ours-batch-size`` of its own (bench/vs_fastai/ours_recipe.py says what is
taken from the file and why): the CIFAR case only (issue 23).

Two cases: (a) a CIFAR-10 subset (``--per-class`` photos per class, ``--holdout`` held out);
(b) a folder of phone-sized photos the script makes itself (``--photos-per-class`` CIFAR photos
per class upscaled to ``--photo-size`` with sensor noise, JPEG quality 90, cached under
``.cache/recipe_vs_fastai/``), trained at ``--photo-sizes`` with presize ``--photo-presize``.

fastai is not a project dependency: the first run makes ``.cache/fastai-venv`` (a venv whose
``.pth`` puts the project's site-packages after its own, so fastai runs on the project's torch
and torchvision; fastai is installed ``--no-deps`` plus its light pure-Python dependencies,
from PyPI) and checks that ``from fastai.vision.all import *`` works.

    .venv/bin/python -m bench.recipe_vs_fastai data/cifar10/train   # both cases, ~8 min on 2 cores
    .venv/bin/python -m bench.recipe_vs_fastai data/cifar10/train --case cifar --threads 2
    .venv/bin/python -m bench.recipe_vs_fastai data/cifar10/train --case cifar --threads 2 \
        --ours-recipe techniques

Figures: docs/benchmarks.md; every run and an honest reading: docs/benchmarks-history.md,
"Recipe vs fastai, side by side".

Prints progress lines and markdown tables; writes bench/results/recipe_vs_fastai-latest.json and
-latest.png (a bar chart), and timestamped copies in bench/results/history/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.vs_fastai import CACHE, FASTAI_VERSION, LIBRARIES, ROOT, VENV, say
from bench.vs_fastai.data import dataset_stats, list_class_files, make_photos, pick, split_items
from bench.vs_fastai.ours_recipe import add_ours_recipe_args, ours_overrides
from bench.vs_fastai.report import plot, summarise, table
from bench.vs_fastai.venv import ensure_fastai_venv
from bench.vs_fastai.workers import worker_main


class TreeRSS:
    """Peak of the summed RSS of a process and its descendants, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                total = 0
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
                self.peak = max(self.peak, total / 2**20)
            except psutil.Error:
                pass
            self._stop.wait(0.2)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_one(library: str, spec: dict[str, Any], fastai_python: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"rvf-{library}-", dir=CACHE) as tmp:
        spec = {**spec, "workdir": tmp, "result": str(Path(tmp) / "result.json")}
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        python = sys.executable if library == "ours" else str(fastai_python)
        threads = str(spec["threads"])
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1",
               "TTA_SERVE_CACHE": str(Path(tmp) / "cache")}
        say(f"{spec['case']}: {library} seed {spec['seed']} ...")
        t0 = time.perf_counter()
        # -m from the repository root: bench/training.py must not shadow the training package
        proc = subprocess.Popen([python, "-m", "bench.recipe_vs_fastai", "--worker", library,
                                 str(spec_path)], cwd=ROOT, env=env)
        tree = TreeRSS(proc.pid)
        rc = proc.wait()
        wall = time.perf_counter() - t0
        tree_peak = tree.stop()
        if rc != 0 or not Path(spec["result"]).is_file():
            raise SystemExit(f"{library} worker failed (exit {rc})")
        out = json.loads(Path(spec["result"]).read_text())
    n_epochs = sum(s["epochs"] for s in spec["stages"])
    epoch_s = [e["seconds"] for e in out["epochs"]]
    train_s = sum(e["train_seconds"] for e in out["epochs"])
    out.update(case=spec["case"], wall_seconds=wall, peak_tree_rss_mb=tree_peak,
               s_per_epoch=sum(epoch_s) / max(len(epoch_s), 1),
               train_images_per_s=spec["n_train"] * n_epochs / max(train_s, 1e-9),
               load_avg_after=list(os.getloadavg()))
    say(f"{spec['case']}: {library} seed {spec['seed']}: accuracy {out['accuracy']:.4f}, TTA "
        f"{out['tta_accuracy']:.4f}, wall {wall:.0f} s, {out['s_per_epoch']:.1f} s/epoch, "
        f"{out['train_images_per_s']:.0f} images/s, peak RSS {out['peak_rss_mb']:.0f} MB "
        f"(tree {tree_peak:.0f} MB)")
    return out


def case_spec(name: str, split: dict[str, Any], stats: tuple[list[float], list[float]],
              stage_sizes: list[int], stage_epochs: list[int], presize: int,
              args: argparse.Namespace) -> dict[str, Any]:
    """The spec both workers get (fastai's chapter-7 recipe), and under "ours" what our worker's
    spec changes (bench/vs_fastai/ours_recipe.py: nothing, or the techniques)."""
    stages = [{"size": s, "batch_size": args.batch_size, "epochs": e, "lr": args.lr}
              for s, e in zip(stage_sizes, stage_epochs, strict=True)]
    tta_views = [v.strip() for v in args.tta_views.split(",")]
    return {
        "case": name, "arch": args.arch, "classes": split["classes"], "rows": split["rows"],
        "n_train": split["n_train"], "n_valid": split["n_valid"], "split_seed": args.split_seed,
        "mean": stats[0], "std": stats[1], "presize": presize, "stages": stages,
        "threads": args.threads, "weight_decay": args.weight_decay,
        "label_smoothing": args.label_smoothing, "mixup": args.mixup,
        "pct_start": args.pct_start, "channels_last": args.channels_last,
        "fastai_workers": args.fastai_workers,
        "augment": {"min_scale": args.min_scale, "max_rotate": 10.0, "max_zoom": 1.1,
                    "max_warp": 0.2, "max_lighting": 0.2, "p_affine": 0.75,
                    "p_lighting": 0.75},
        "tta_views": tta_views, "tta_n": len(tta_views) - 1, "tta_beta": args.tta_beta,
        "ours": ours_overrides(args, stage_sizes, stage_epochs),
    }


def library_spec(spec: dict[str, Any], library: str, seed: int) -> dict[str, Any]:
    """One worker's spec: the shared one, with our side's changes for ours."""
    return {**spec, **(spec["ours"] if library == "ours" else {}), "seed": seed}


def run_case(name: str, items: list[tuple[Path, str]], stage_sizes: list[int],
             stage_epochs: list[int], presize: int, args: argparse.Namespace,
             fastai_python: Path, holdout: int) -> dict[str, Any]:
    split = split_items(items, holdout, args.split_seed)
    spec = case_spec(name, split, dataset_stats(split, presize), stage_sizes, stage_epochs,
                     presize, args)
    say(f"{name}: {split['n_train']} train / {split['n_valid']} valid photos, "
        f"{len(split['classes'])} classes; sizes {stage_sizes} x epochs {stage_epochs}, presize "
        f"{presize}, batch {args.batch_size}, lr {args.lr}, seeds {args.seeds}, "
        f"{args.threads} threads; ours: {spec['ours']}")
    runs = []
    for i, seed in enumerate(args.seeds):
        order = LIBRARIES if i % 2 == 0 else LIBRARIES[::-1]
        for lib in order:
            runs.append(run_one(lib, library_spec(spec, lib, seed), fastai_python))
    rows = summarise(runs)
    md = table(rows)
    print(f"\n### {name}\n\n{md}\n", flush=True)
    public_spec = {k: v for k, v in spec.items() if k != "rows"}
    return {"spec": public_spec, "runs": runs, "summary": rows, "markdown": md}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", type=Path, help="image folder with one sub-folder per class "
                   "(e.g. data/cifar10/train)")
    p.add_argument("--case", choices=("cifar", "photos", "both"), default="both")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--split-seed", type=int, default=42, help="seed of our splitter")
    p.add_argument("--subset-seed", type=int, default=0, help="which photos of each class")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads in both (2 on a 2-core box shared with other "
                   "jobs: OpenMP spin-waits make a batch 6-10x slower than 1 thread)")
    p.add_argument("--arch", default="xresnet18", choices=("xresnet18", "xresnet34", "xresnet50"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="one-cycle peak LR of every stage")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--mixup", type=float, default=0.2, help="Beta(alpha, alpha); 0: off")
    p.add_argument("--min-scale", type=float, default=0.75,
                   help="random-resized-crop min area (aug_transforms' min_scale)")
    p.add_argument("--pct-start", type=float, default=0.25)
    p.add_argument("--tta-views", default="center,hflip,zoom_center,top_left,bottom_right",
                   help="ours; fastai does len-1 augmented passes + the plain one")
    p.add_argument("--tta-beta", type=float, default=0.25)
    p.add_argument("--channels-last", default="on", choices=("on", "off"),
                   help="ours (recipes/cifar10.toml: on); fastai trains NCHW-contiguous")
    p.add_argument("--fastai-workers", type=int, default=-1,
                   help="fastai DataLoader workers (-1: fastai's default, one per core)")
    # (a) the CIFAR-10 subset
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--holdout", type=int, default=500)
    p.add_argument("--sizes", type=int, nargs="+", default=[24, 32])
    p.add_argument("--epochs", type=int, nargs="+", default=[3, 3], help="per size")
    p.add_argument("--presize", type=int, default=32)
    # (b) phone-sized photos
    p.add_argument("--photos-per-class", type=int, default=20)
    p.add_argument("--photo-size", default="2000x1500")
    p.add_argument("--photo-holdout", type=int, default=50)
    p.add_argument("--photo-sizes", type=int, nargs="+", default=[96, 128])
    p.add_argument("--photo-epochs", type=int, nargs="+", default=[2, 2])
    p.add_argument("--photo-batch-size", type=int, default=16)
    p.add_argument("--photo-presize", type=int, default=160)
    p.add_argument("--photo-seeds", type=int, nargs="+", default=[1, 2],
                   help="seeds of the photo case")
    add_ours_recipe_args(p)
    p.add_argument("--no-save", action="store_true", help="write no results file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if len(args.sizes) != len(args.epochs) or len(args.photo_sizes) != len(args.photo_epochs):
        raise SystemExit("--sizes/--epochs (and --photo-sizes/--photo-epochs) pair up")
    if args.ours_recipe == "techniques" and args.case != "cifar":
        raise SystemExit("--ours-recipe techniques is the CIFAR-10 v2 recipe: use --case cifar")
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} is not a folder (CIFAR-10: tar xzf "
                         "cifar10-train.tar.gz -C data/cifar10)")
    CACHE.mkdir(parents=True, exist_ok=True)
    fastai_python = ensure_fastai_venv()
    started = time.time()
    results: dict[str, Any] = {}
    if args.case in ("cifar", "both"):
        items = pick(list_class_files(args.data), args.per_class, args.subset_seed)
        results["cifar10-subset"] = run_case(
            "cifar10-subset", items, args.sizes, args.epochs, args.presize, args,
            fastai_python, args.holdout)
    if args.case in ("photos", "both"):
        w, h = (int(v) for v in args.photo_size.lower().split("x"))
        folder = make_photos(args.data, args.photos_per_class, (w, h), args.subset_seed)
        items = [(f, label) for label, fs in list_class_files(folder).items() for f in fs]
        photo_args = argparse.Namespace(**{**vars(args), "seeds": args.photo_seeds,
                                             "batch_size": args.photo_batch_size})
        results["large-photos"] = run_case(
            f"large-photos ({w}x{h} JPEG)", items, args.photo_sizes, args.photo_epochs,
            args.photo_presize, photo_args, fastai_python, args.photo_holdout)
    say(f"done in {time.time() - started:.0f} s")
    if args.no_save:
        return
    from bench.common import machine, write_results

    try:
        info = machine()
    except Exception:  # noqa: BLE001 -- onnxruntime missing: the rest still describes the box
        info = {"cores": os.cpu_count(), "load_avg_1_5_15": list(os.getloadavg())}
    fastai_version = (VENV / f".ready-fastai-{FASTAI_VERSION}").read_text().strip()
    payload = {"machine": info, "fastai_and_torch": fastai_version,
               "command": " ".join([".venv/bin/python -m bench.recipe_vs_fastai",
                                    *(argv if argv is not None else sys.argv[1:])]),
               "seconds": time.time() - started, "cases": results}
    path = write_results("recipe_vs_fastai", payload)
    png = path.with_suffix(".png")
    try:
        plot(results, png)
        shutil.copyfile(png, ROOT / "bench" / "results" / "recipe_vs_fastai-latest.png")
        say(f"wrote {path.relative_to(ROOT)} and {png.relative_to(ROOT)} (and -latest copies)")
    except Exception as e:  # noqa: BLE001 -- the chart is optional
        say(f"wrote {path.relative_to(ROOT)} (no chart: {e})")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3])
    else:
        main()
