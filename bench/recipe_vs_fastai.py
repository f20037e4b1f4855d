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

Figures and an honest reading: docs/benchmarks.md, "Recipe vs fastai, side by side".

Prints progress lines and markdown tables; writes bench/results/recipe_vs_fastai-*.json and a
PNG bar chart beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "recipe_vs_fastai"
VENV = ROOT / ".cache" / "fastai-venv"
FASTAI_VERSION = "2.8.12"
# fastai's light dependencies (its heavy ones -- torch, torchvision, matplotlib, pandas' peers,
# scikit-learn, scipy -- come from the project's environment; spacy is only for fastai.text).
FASTAI_DEPS = ["fastcore>=2.2.22", "fastdownload>=0.0.8,<2", "fasttransform>=0.0.3",
               "fastprogress>=0.2.4", "plum-dispatch<2.10", "pandas", "cloudpickle"]
LIBRARIES = ("ours", "fastai")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ============================================================================ the fastai venv


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_fastai_venv() -> Path:
    """.cache/fastai-venv with fastai FASTAI_VERSION on the project's torch; its python."""
    import sysconfig

    marker = VENV / f".ready-fastai-{FASTAI_VERSION}"
    py = venv_python()
    if marker.is_file() and py.is_file():
        return py
    say(f"making {VENV.relative_to(ROOT)} (fastai {FASTAI_VERSION} on the project's torch; "
        "first run only, ~2-3 minutes)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    purelib = VENV / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages"
    # after the venv's own packages: the project's (torch, torchvision, numpy, PIL, ...)
    (purelib / "_tta_serve_project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", f"fastai=={FASTAI_VERSION}"], check=True)
    subprocess.run([*pip, *FASTAI_DEPS], check=True)
    check = subprocess.run(
        [str(py), "-c", "from fastai.vision.all import *; import fastai, torch; "
         "print(fastai.__version__, torch.__version__, torch.__file__)"],
        capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"fastai does not import in {VENV}:\n{check.stderr[-3000:]}")
    say(f"fastai venv ready: {check.stdout.strip()}")
    marker.write_text(check.stdout)
    return py


# ============================================================================ data


def list_class_files(root: Path) -> dict[str, list[Path]]:
    exts = {".jpg", ".jpeg", ".png"}
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in exts)
        if files:
            out[d.name] = files
    if len(out) < 2:
        raise SystemExit(f"{root}: expected class sub-folders of images")
    return out


def pick(files: dict[str, list[Path]], per_class: int, seed: int) -> list[tuple[Path, str]]:
    rng = random.Random(seed)
    items = []
    for label, fs in files.items():
        if len(fs) < per_class:
            raise SystemExit(f"class {label} has {len(fs)} images, fewer than {per_class}")
        items += [(f, label) for f in sorted(rng.sample(fs, per_class))]
    return items


def make_photos(root: Path, per_class: int, size: tuple[int, int], seed: int) -> Path:
    """Phone-sized JPEGs: CIFAR photos upscaled to ``size`` (w, h) with sensor noise, q90."""
    import numpy as np
    from PIL import Image

    w, h = size
    folder = CACHE / f"photos-{per_class}pc-{w}x{h}-q90-seed{seed}"
    done = folder / ".complete"
    if done.is_file():
        return folder
    say(f"making {per_class * 10} phone-sized photos ({w}x{h}, q90) under "
        f"{folder.relative_to(ROOT)} (once)")
    items = pick(list_class_files(root), per_class, seed + 1000)
    rng = np.random.default_rng(seed)
    for i, (src, label) in enumerate(items):
        with Image.open(src) as im:
            big = np.asarray(im.convert("RGB").resize((w, h), Image.Resampling.BICUBIC),
                             dtype=np.float32)
        noise = rng.standard_normal(big.shape, dtype=np.float32) * 6.0  # sensor noise, sigma 6
        out = Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8))
        (folder / label).mkdir(parents=True, exist_ok=True)
        out.save(folder / label / f"{src.stem}.jpg", quality=90)
        if (i + 1) % 50 == 0:
            say(f"  {i + 1}/{len(items)} photos")
    done.write_text("ok\n")
    return folder


def split_items(items: list[tuple[Path, str]], holdout: int, seed: int) -> dict[str, Any]:
    """Our seeded splitter (training.data.sources.random_split), as both libraries get it."""
    from training.data.sources import random_split

    train, valid = random_split(items, holdout / len(items), seed)
    rows = [{"path": str(p.resolve()), "label": label, "is_valid": False} for p, label in train]
    rows += [{"path": str(p.resolve()), "label": label, "is_valid": True} for p, label in valid]
    return {"classes": sorted({label for _, label in items}), "rows": rows,
            "n_train": len(train), "n_valid": len(valid)}


def dataset_stats(split: dict[str, Any], presize: int) -> tuple[list[float], list[float]]:
    """The same numbers ours computes with data.normalize = "dataset" (fastai gets them)."""
    from training.data import DataSplit, Items, compute_stats

    classes = split["classes"]
    train = [r for r in split["rows"] if not r["is_valid"]]
    items = Items([Path(r["path"]) for r in train], [classes.index(r["label"]) for r in train])
    mean, std = compute_stats(DataSplit(classes, items, Items([], []), [], "bench"),
                              presize=presize)
    return list(mean), list(std)


# ============================================================================ workers


def _rss_mb() -> dict[str, float]:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mb": me, "peak_rss_children_mb": kids}


def worker_ours(spec: dict[str, Any]) -> dict[str, Any]:
    import logging

    import torch

    torch.set_num_threads(spec["threads"])
    from service.imaging import decode_side
    from training.checkpoint import load_model
    from training.config import recipe_from_dict
    from training.evaluate import predict
    from training.learner import Callback
    from training.phases import fit

    logging.basicConfig(level=logging.WARNING, format="    ours: %(message)s")
    logging.getLogger("training.phases").setLevel(logging.INFO)
    work = Path(spec["workdir"])
    csv_path = work / "items.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "is_valid"])
        for r in spec["rows"]:
            w.writerow([r["path"], r["label"], "1" if r["is_valid"] else "0"])
    aug = spec["augment"]
    recipe = recipe_from_dict({
        "data": {"path": str(work), "csv": str(csv_path), "seed": spec["split_seed"],
                 "presize": spec["presize"], "normalize": "dataset", "cache": "auto"},
        "model": {"arch": spec["arch"]},
        "augment": {"min_scale": aug["min_scale"], "max_aspect": 1.0,  # fastai: ratio=(1, 1)
                    "flip": True, "max_rotate": aug["max_rotate"], "max_zoom": aug["max_zoom"],
                    "max_warp": aug["max_warp"], "max_lighting": aug["max_lighting"],
                    "p_affine": aug["p_affine"], "p_lighting": aug["p_lighting"],
                    "max_translate": 0.0},
        "train": {"seed": spec["seed"], "output": str(work / "run"), "device": "cpu",
                  "threads": spec["threads"], "weight_decay": spec["weight_decay"],
                  "label_smoothing": spec["label_smoothing"], "mixup": spec["mixup"],
                  "channels_last": spec["channels_last"], "pct_start": spec["pct_start"],
                  "select": "last"},
        "stages": [dict(s) for s in spec["stages"]],
        "tta": {"views": spec["tta_views"], "combine": "mean", "beta": spec["tta_beta"]},
    })
    epochs: list[dict[str, Any]] = []

    class Log(Callback):
        order = 50

        def before_epoch(self, learn) -> None:
            self.t0 = time.perf_counter()

        def after_epoch(self, learn) -> None:
            s = learn.state
            seconds = time.perf_counter() - self.t0
            n = spec["n_train"]
            train_s = n / s.images_per_s if s.images_per_s == s.images_per_s else seconds
            epochs.append({"phase": s.phase, "seconds": seconds, "train_seconds": train_s,
                           "accuracy": s.metrics.get("accuracy")})
            print(f"    ours   seed {spec['seed']} {s.phase} epoch {s.epoch + 1}/{s.n_epochs}: "
                  f"loss {s.train_loss:.3f} acc {s.metrics.get('accuracy', 0):.4f} "
                  f"{seconds:.1f} s ({s.images_per_s:.0f} train images/s)", flush=True)

    t0 = time.perf_counter()
    result = fit(recipe, progress=False, callbacks=[Log()])
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    device = torch.device("cpu")
    model, ckpt = load_model(result.best_checkpoint, device)
    espec, tspec = ckpt.eval_transform, ckpt.tta_spec
    preds = predict(model, result.split.valid, eval_spec=espec, tta=tspec, device=device,
                    progress=False, min_side=decode_side(espec, tspec))
    eval_s = time.perf_counter() - t1
    return {"accuracy": preds.accuracy, "tta_accuracy": preds.tta_accuracy,
            "last_epoch_accuracy": epochs[-1]["accuracy"] if epochs else None,
            "fit_seconds": fit_s, "eval_tta_seconds": eval_s, "epochs": epochs}


def worker_fastai(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec["threads"])
    import pandas as pd
    from fastai.callback.mixup import MixUp
    from fastai.callback.progress import ProgressCallback
    from fastai.vision.all import Callback as FastaiCallback
    from fastai.vision.all import (
        CategoryBlock,
        ColReader,
        ColSplitter,
        CrossEntropyLossFlat,
        DataBlock,
        ImageBlock,
        LabelSmoothingCrossEntropy,
        Learner,
        Normalize,
        Resize,
        accuracy,
        aug_transforms,
        set_seed,
        xresnet18,
        xresnet34,
        xresnet50,
    )

    set_seed(spec["seed"])
    df = pd.DataFrame(spec["rows"])
    aug = spec["augment"]
    cpu = torch.device("cpu")

    def dls_for(stage: dict[str, Any]):
        block = DataBlock(
            blocks=(ImageBlock, CategoryBlock(vocab=spec["classes"])),
            get_x=ColReader("path"), get_y=ColReader("label"),
            splitter=ColSplitter("is_valid"),
            item_tfms=Resize(spec["presize"]),
            batch_tfms=[*aug_transforms(size=stage["size"], min_scale=aug["min_scale"],
                                        max_rotate=aug["max_rotate"],
                                        max_zoom=aug["max_zoom"], max_warp=aug["max_warp"],
                                        max_lighting=aug["max_lighting"],
                                        p_affine=aug["p_affine"],
                                        p_lighting=aug["p_lighting"]),
                        Normalize.from_stats(spec["mean"], spec["std"])])
        kw = {} if spec["fastai_workers"] < 0 else {"num_workers": spec["fastai_workers"]}
        return block.dataloaders(df, bs=stage["batch_size"], device=cpu, **kw)

    epochs: list[dict[str, Any]] = []

    class EpochLog(FastaiCallback):
        order = 90  # after the Recorder (50)

        def before_epoch(self) -> None:
            self.t0 = time.perf_counter()

        def before_train(self) -> None:
            self.tt = time.perf_counter()

        def after_train(self) -> None:
            self.train_s = time.perf_counter() - self.tt

        def after_epoch(self) -> None:
            seconds = time.perf_counter() - self.t0
            train_loss, _, acc = (float(v) for v in self.learn.recorder.values[-1][:3])
            n = spec["n_train"]
            epochs.append({"phase": f"stage{stage_i + 1}", "seconds": seconds,
                           "train_seconds": self.train_s, "accuracy": acc})
            print(f"    fastai seed {spec['seed']} stage{stage_i + 1} epoch "
                  f"{self.epoch + 1}/{self.n_epoch}: loss {train_loss:.3f} acc {acc:.4f} "
                  f"{seconds:.1f} s ({n / self.train_s:.0f} train images/s)", flush=True)

    t0 = time.perf_counter()
    stage_i = 0
    dls = dls_for(spec["stages"][0])
    arch = {"xresnet18": xresnet18, "xresnet34": xresnet34, "xresnet50": xresnet50}[spec["arch"]]
    model = arch(n_out=len(spec["classes"]))
    eps = spec["label_smoothing"]
    loss = LabelSmoothingCrossEntropy(eps=eps) if eps > 0 else CrossEntropyLossFlat()
    cbs = [EpochLog()] + ([MixUp(spec["mixup"])] if spec["mixup"] > 0 else [])
    learn = Learner(dls, model, loss_func=loss, metrics=accuracy, cbs=cbs,
                    wd=spec["weight_decay"])
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *a, **k: None
    for stage_i, stage in enumerate(spec["stages"]):
        if stage_i > 0:
            learn.dls = dls_for(stage)
        if stage["epochs"] > 0:
            learn.fit_one_cycle(stage["epochs"], stage["lr"], pct_start=spec["pct_start"])
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    preds, targs = learn.tta(n=spec["tta_n"], beta=spec["tta_beta"])
    tta_acc = float((preds.argmax(1) == targs).float().mean())
    eval_s = time.perf_counter() - t1
    last = epochs[-1]["accuracy"] if epochs else None
    return {"accuracy": last, "tta_accuracy": tta_acc, "last_epoch_accuracy": last,
            "fit_seconds": fit_s, "eval_tta_seconds": eval_s, "epochs": epochs}


def worker_main(library: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    t0 = time.perf_counter()
    out = (worker_ours if library == "ours" else worker_fastai)(spec)
    out.update(_rss_mb(), library=library, seed=spec["seed"],
               worker_seconds=time.perf_counter() - t0)
    Path(spec["result"]).write_text(json.dumps(out, indent=2))


# ============================================================================ the parent


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


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import statistics

    rows = []
    for lib in LIBRARIES:
        rs = [r for r in runs if r["library"] == lib]
        if not rs:
            continue

        def mean(key: str, rs=rs) -> float:
            return statistics.fmean(r[key] for r in rs)

        def spread(key: str, rs=rs) -> str:
            vals = [r[key] for r in rs]
            return f"{100 * min(vals):.1f}-{100 * max(vals):.1f}" if len(vals) > 1 else ""

        rows.append({
            "library": lib, "seeds": len(rs),
            "accuracy": 100 * mean("accuracy"), "accuracy_range": spread("accuracy"),
            "tta_accuracy": 100 * mean("tta_accuracy"),
            "tta_accuracy_range": spread("tta_accuracy"),
            "wall_seconds": mean("wall_seconds"), "s_per_epoch": mean("s_per_epoch"),
            "train_images_per_s": mean("train_images_per_s"),
            "peak_rss_mb": mean("peak_rss_mb"), "peak_tree_rss_mb": mean("peak_tree_rss_mb"),
        })
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| library | seeds | accuracy % (range) | TTA accuracy % (range) | wall s | s/epoch "
            "| train images/s | peak RSS MB (tree) |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        acc = f"{r['accuracy']:.2f}" + (f" ({r['accuracy_range']})" if r["accuracy_range"] else "")
        tta = f"{r['tta_accuracy']:.2f}" + (
            f" ({r['tta_accuracy_range']})" if r["tta_accuracy_range"] else "")
        lines.append(f"| {r['library']} | {r['seeds']} | {acc} | {tta} | {r['wall_seconds']:.0f} "
                     f"| {r['s_per_epoch']:.1f} | {r['train_images_per_s']:.0f} "
                     f"| {r['peak_rss_mb']:.0f} ({r['peak_tree_rss_mb']:.0f}) |")
    by = {r["library"]: r for r in rows}
    if len(by) == 2:
        o, f = by["ours"], by["fastai"]
        lines.append(
            f"| **ours vs fastai** | | {o['accuracy'] - f['accuracy']:+.2f} points "
            f"| {o['tta_accuracy'] - f['tta_accuracy']:+.2f} points "
            f"| {o['wall_seconds'] / f['wall_seconds']:.2f}x "
            f"| {o['s_per_epoch'] / f['s_per_epoch']:.2f}x "
            f"| {o['train_images_per_s'] / f['train_images_per_s']:.2f}x "
            f"| {o['peak_rss_mb'] / f['peak_rss_mb']:.2f}x |")
    return "\n".join(lines)


def run_case(name: str, items: list[tuple[Path, str]], stage_sizes: list[int],
             stage_epochs: list[int], presize: int, args: argparse.Namespace,
             fastai_python: Path, holdout: int) -> dict[str, Any]:
    split = split_items(items, holdout, args.split_seed)
    mean, std = dataset_stats(split, presize)
    stages = [{"size": s, "batch_size": args.batch_size, "epochs": e, "lr": args.lr}
              for s, e in zip(stage_sizes, stage_epochs, strict=True)]
    tta_views = [v.strip() for v in args.tta_views.split(",")]
    spec = {
        "case": name, "arch": args.arch, "classes": split["classes"], "rows": split["rows"],
        "n_train": split["n_train"], "n_valid": split["n_valid"], "split_seed": args.split_seed,
        "mean": mean, "std": std, "presize": presize, "stages": stages,
        "threads": args.threads, "weight_decay": args.weight_decay,
        "label_smoothing": args.label_smoothing, "mixup": args.mixup,
        "pct_start": args.pct_start, "channels_last": args.channels_last,
        "fastai_workers": args.fastai_workers,
        "augment": {"min_scale": args.min_scale, "max_rotate": 10.0, "max_zoom": 1.1,
                    "max_warp": 0.2, "max_lighting": 0.2, "p_affine": 0.75,
                    "p_lighting": 0.75},
        "tta_views": tta_views, "tta_n": len(tta_views) - 1, "tta_beta": args.tta_beta,
    }
    say(f"{name}: {split['n_train']} train / {split['n_valid']} valid photos, "
        f"{len(split['classes'])} classes; sizes {stage_sizes} x epochs {stage_epochs}, presize "
        f"{presize}, batch {args.batch_size}, lr {args.lr}, seeds {args.seeds}, "
        f"{args.threads} threads")
    runs = []
    for i, seed in enumerate(args.seeds):
        order = LIBRARIES if i % 2 == 0 else LIBRARIES[::-1]
        for lib in order:
            runs.append(run_one(lib, {**spec, "seed": seed}, fastai_python))
    rows = summarise(runs)
    md = table(rows)
    print(f"\n### {name}\n\n{md}\n", flush=True)
    public_spec = {k: v for k, v in spec.items() if k != "rows"}
    return {"spec": public_spec, "runs": runs, "summary": rows, "markdown": md}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(results)
    metrics = [("accuracy", "accuracy %"), ("tta_accuracy", "TTA accuracy %"),
               ("wall_seconds", "wall s"), ("train_images_per_s", "train images/s"),
               ("peak_rss_mb", "peak RSS MB")]
    fig, axes = plt.subplots(len(cases), len(metrics), figsize=(3.2 * len(metrics),
                                                                 2.8 * len(cases)),
                             squeeze=False)
    for ci, case in enumerate(cases):
        rows = {r["library"]: r for r in results[case]["summary"]}
        for mi, (key, label) in enumerate(metrics):
            ax = axes[ci][mi]
            libs = [lib for lib in LIBRARIES if lib in rows]
            vals = [rows[lib][key] for lib in libs]
            bars = ax.bar(libs, vals, color=["tab:blue", "tab:orange"][: len(libs)])
            ax.bar_label(bars, fmt="%.1f" if "acc" in key else "%.0f", fontsize=8)
            ax.set_title(f"{case}\n{label}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


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
    p.add_argument("--no-save", action="store_true", help="write no results file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if len(args.sizes) != len(args.epochs) or len(args.photo_sizes) != len(args.photo_epochs):
        raise SystemExit("--sizes/--epochs (and --photo-sizes/--photo-epochs) pair up")
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
        say(f"wrote {path.relative_to(ROOT)} and {png.relative_to(ROOT)}")
    except Exception as e:  # noqa: BLE001 -- the chart is optional
        say(f"wrote {path.relative_to(ROOT)} (no chart: {e})")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3])
    else:
        main()
