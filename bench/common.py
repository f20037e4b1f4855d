"""What every benchmark shares: the models and images it measures, the machine it ran on,
percentiles, markdown tables and the JSON results file.

Models are built once and cached under bench/results/models/ (git-ignored): the digits model is
the committed ``models/digits`` when it exists, otherwise a random-weight ``xresnet_tiny`` at
32 px with the digits recipe's TTA views (the same graph shape and cost); the large model is a
random-weight ``xresnet50`` at 224 px. Both go through ``training.export`` like any real model.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

from service.model_repository import ModelRepository, ModelRepositoryError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CACHE = RESULTS / "models"
HISTORY = RESULTS / "history"  # timestamped runs, git-ignored (write_results)
DIGITS_RECIPE = ROOT / "recipes" / "digits.toml"


@dataclass(frozen=True)
class BenchModel:
    """A model repository with one model to benchmark, and where the model came from."""

    key: str  # "cifar10" | "digits" | "xresnet50" | "resnet18-32"
    models_dir: Path
    name: str
    version: int
    size: int  # model input side, pixels
    tta_views: int
    source: str

    @property
    def onnx_path(self) -> Path:
        return self.models_dir / self.name / str(self.version) / "model.onnx"


# ----------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare figures: cores, CPU, load, versions, date."""
    import onnxruntime as ort

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "cores": cores,
        "cpu": cpu or platform.processor(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "gpu": "none",
    }


def describe_machine(info: dict[str, Any]) -> str:
    load = ", ".join(f"{x:g}" for x in info["load_avg_1_5_15"])
    return (f"{info['cores']} cores ({info['cpu']}), {info['gpu']} GPU, onnxruntime "
            f"{info['onnxruntime']}, Python {info['python']}, {info['date']}; load average "
            f"at start {load} (the CPU is shared with other engineers' test runs)")


# ----------------------------------------------------------------------------- numbers


def process_tree(pid: int) -> list[psutil.Process]:
    """A server and every process it started; empty once it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU the server's tree has used so far, every thread included: per request,
    the server's cost, which other work on a shared machine moves far less than latency."""
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def latency_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 and mean of a latency sample, in milliseconds."""
    if not len(seconds):
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"),
                "mean_ms": float("nan")}
    a = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "mean_ms": float(a.mean())}


def timed_loop(fn: Callable[[], Any], *, min_seconds: float, min_iters: int = 5,
               warmup: int = 3) -> list[float]:
    """Call ``fn`` until both ``min_seconds`` and ``min_iters`` are reached; per-call seconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


Column = tuple[str, str, str]  # (key, header, format spec)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """Rows as a GitHub markdown table; missing values print as '-'."""

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "-"
        return format(value, fmt) if fmt else str(value)

    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "|".join("---" if not f else "---:" for _, _, f in columns) + "|"]
    lines += ["| " + " | ".join(cell(r, k, f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """bench/results/NAME-latest.json (kept in git: the figures docs/benchmarks.md quotes), and a
    timestamped copy in bench/results/history/ (git-ignored: every run on this machine, for
    comparing runs without committing each one). Returns the timestamped copy's path."""
    HISTORY.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = HISTORY / f"{name}-{stamp}.json"
    text = json.dumps(payload, indent=2, default=str) + "\n"
    path.write_text(text)
    (RESULTS / f"{name}-latest.json").write_text(text)
    return path


# ----------------------------------------------------------------------------- images


def _digit_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return pixels, digits.target


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def digit_pngs(n: int = 256) -> list[bytes]:
    """Real handwritten digits (scikit-learn's 8x8 set) as the PNG files a client would send."""
    pixels, _ = _digit_arrays()
    return [_encode(Image.fromarray(p), "PNG") for p in pixels[:n]]


def photo_jpegs(n: int = 32, side: int = 320) -> list[bytes]:
    """Photo-sized RGB JPEGs (``side`` x ``side``): digits upscaled, tinted and noised, so the
    decode and resize cost is that of a real 224 px classifier's input."""
    pixels, _ = _digit_arrays()
    rng = np.random.default_rng(0)
    out = []
    for p in pixels[:n]:
        img = Image.fromarray(p).resize((side, side), Image.Resampling.BICUBIC)
        rgb = np.asarray(img, dtype=np.float32)[..., None] * rng.uniform(0.5, 1.0, 3)
        rgb += rng.normal(0, 12, rgb.shape)
        out.append(_encode(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)), "JPEG"))
    return out


HELDOUT_PHOTOS = ROOT / "tests" / "data" / "cifar10_heldout"
PHONE_CACHE = RESULTS / "models" / "phone-jpegs"
IMAGE_SETS = ("digits", "xresnet50", "resnet18-32", "cifar10", "phone")


def cifar_jpegs(n: int = 256, photos: Path | None = None) -> list[bytes]:
    """Real CIFAR-10 photos as their JPEG files: the 100 held-out test photos, or up to ``n``
    files from ``photos`` (e.g. data/cifar10/train), taken round-robin over its class folders."""
    folder = Path(photos) if photos else HELDOUT_PHOTOS
    classes = sorted(p for p in folder.iterdir() if p.is_dir()) or [folder]
    per_class = [sorted(c.glob("*.jp*g")) + sorted(c.glob("*.png")) for c in classes]
    files: list[Path] = []
    for row in range(max(len(f) for f in per_class)):
        files += [f[row] for f in per_class if row < len(f)]
        if len(files) >= n:
            break
    if not files:
        raise FileNotFoundError(f"no JPEG/PNG photos under {folder}")
    return [f.read_bytes() for f in files[:n]]


def phone_jpegs(n: int = 4) -> list[bytes]:
    """12 MP (4000x3000) phone-size JPEGs of ``n`` held-out photos (bench.imaging.phone_jpeg:
    upscaled with sensor-like noise, ~4-5 MB each), written once to the git-ignored cache so
    every load-client process sends the same files."""
    from bench.imaging import phone_jpeg

    PHONE_CACHE.mkdir(parents=True, exist_ok=True)
    sources = sorted(HELDOUT_PHOTOS.glob("*/*.jpg"))[::25][:n]
    out = []
    for source in sources:
        path = PHONE_CACHE / f"{source.parent.name}-{source.stem}.jpg"
        if not path.exists():
            path.write_bytes(phone_jpeg(source))
        out.append(path.read_bytes())
    return out


def images_for(key: str, n: int | None = None, photos: Path | None = None) -> list[bytes]:
    """The encoded images a benchmark sends: real CIFAR-10 JPEGs for cifar10 (``photos``: a
    folder of them instead of the held-out set), 12 MP JPEGs for phone, photo-sized JPEGs for
    the 224 px model, digits PNGs for the other 32 px models."""
    if key == "cifar10":
        return cifar_jpegs(n or 256, photos)
    if key == "phone":
        return phone_jpegs(n or 4)
    return photo_jpegs(n or 32) if key == "xresnet50" else digit_pngs(n or 256)


# ----------------------------------------------------------------------------- models


def _published(models_dir: Path, name: str) -> int | None:
    repo = ModelRepository(models_dir)
    for version in reversed(repo.versions(name)):
        try:
            repo.resolve(name, version)
        except ModelRepositoryError:
            continue
        return version
    return None


def _export_random(arch: str, size: int, resize_ratio: float, tta: Any, models_dir: Path,
                   name: str, n_classes: int = 10) -> None:
    """A random-weight ``arch`` exported through training.export into ``models_dir/name/1``."""
    import tempfile

    import torch

    from service.imaging import EvalSpec
    from training.checkpoint import Checkpoint, save_checkpoint
    from training.export import export_checkpoint
    from training.models import build_model

    torch.manual_seed(0)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    model = build_model(arch, n_classes, mean=mean, std=std)
    ckpt = Checkpoint(
        arch=arch, classes=[str(i) for i in range(n_classes)], mean=mean, std=std,
        eval_spec=EvalSpec(size, resize_ratio).to_dict(), tta=tta.to_dict(),
        model=model.state_dict(), metrics={"note": "random weights, for benchmarks only"})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.pt"
        save_checkpoint(ckpt, path)
        export_checkpoint(path, name=name, models_dir=models_dir, version=1, force=True,
                          random_inputs_only=True)


def ensure_model(key: str) -> BenchModel:
    """The benchmark model ``key`` ("cifar10", "digits", "xresnet50", "resnet18-32"), exported
    once (cifar10 is the bundled default model, models/cifar10)."""
    from service.imaging import TTASpec

    if key == "cifar10":
        version = _published(ROOT / "models", "cifar10")
        if version is None:
            raise FileNotFoundError("models/cifar10 is not published; it ships with the repository")
        card = ModelRepository(ROOT / "models").resolve("cifar10", version).card
        return BenchModel("cifar10", ROOT / "models", "cifar10", version, card.input_size,
                          len(card.tta.views), f"models/cifar10/{version} (the bundled default "
                          "model, trained on CIFAR-10's photos)")

    if key == "digits":
        version = _published(ROOT / "models", "digits")
        if version is not None:
            card = ModelRepository(ROOT / "models").resolve("digits", version).card
            return BenchModel("digits", ROOT / "models", "digits", version, card.input_size,
                              len(card.tta.views), f"models/digits/{version} (the bundled model)")
        from training.config import load_recipe, tta_spec

        recipe = load_recipe(DIGITS_RECIPE)
        size, tta = recipe.stages[-1].size, tta_spec(recipe)
        models_dir, name = CACHE / "digits-stand-in", "digits"
        source = (f"random-weight {recipe.model.arch} at {size} px with the digits recipe's "
                  f"{len(tta.views)} TTA views (models/digits was not published yet)")
        if _published(models_dir, name) is None:
            _export_random(recipe.model.arch, size, 1.0, tta, models_dir, name)
        return BenchModel("digits", models_dir, name, 1, size, len(tta.views), source)
    if key == "xresnet50":
        tta = TTASpec()
        models_dir, name = CACHE / "xresnet50", "xresnet50"
        if _published(models_dir, name) is None:
            _export_random("xresnet50", 224, 256 / 224, tta, models_dir, name)
        return BenchModel("xresnet50", models_dir, name, 1, 224, len(tta.views),
                          "random-weight xresnet50 at 224 px (resize 256, center crop 224), "
                          f"{len(tta.views)} TTA views")
    if key == "resnet18-32":
        tta = TTASpec()
        models_dir, name = CACHE / "resnet18-32", "resnet18"
        if _published(models_dir, name) is None:
            _export_random("resnet18", 32, 1.0, tta, models_dir, name)
        return BenchModel("resnet18-32", models_dir, name, 1, 32, len(tta.views),
                          "random-weight torchvision resnet18 at 32 px (the model of the "
                          "reference points in issue 7)")
    raise ValueError(f"unknown benchmark model {key!r}; use cifar10, digits, xresnet50 or "
                     "resnet18-32")
