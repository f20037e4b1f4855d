"""Checkpoint -> verified, versioned ONNX model in the model repository.

A checkpoint (docs/architecture.md) is rebuilt with ``training.models.build_model``, wrapped as
``softmax(model(pixels))`` and exported as ``model.onnx``: input ``pixels`` float32 NCHW in [0, 1]
with a dynamic batch axis, output ``probabilities``. Nothing is published until ONNX Runtime has
reproduced PyTorch's probabilities on random inputs and on real images read through
``service.imaging`` (the path the service itself uses): max |p_onnx - p_torch| <= 1e-4 and the
same top-1 class. A failure raises ExportError and leaves no version behind: everything is written
into a hidden staging folder and renamed into place by ``ModelRepository.publish``. Publishing
the newest version also (re)writes ``NAME/config.pbtxt`` and ``NAME/labels.txt``
(``service.oip.model_config``), so NVIDIA Triton can serve the same folder (docs/deploy.md).

Exporter choice: ``torch.onnx.export(..., dynamo=True)``, the torch.export-based exporter (the
TorchScript one is deprecated in torch 2.9+). It captures the graph without Python tracing
quirks, takes the batch axis as a real symbolic dimension (``dynamic_shapes``) and runs the
onnxscript optimiser (constant folding, BatchNorm folded into Conv, no local functions left).
Opset 18 is the exporter's native opset (no version-converter pass, which can be lossy) and
onnxruntime has run it since 1.14 (the service requires >= 1.20). The file is saved
self-contained (no external-data file): one sha256 covers the whole model, which is what
model.json records; protobuf's 2 GB limit is far above our model sizes.

Optional variants, each measured on the same check images and recorded in model.json
``variants``: ``--fp16`` (onnxruntime's float16 converter, inputs/outputs kept float32 so clients
do not change; meant for GPUs) and ``--int8`` (``quantize_dynamic``: int8 weights, activations
quantised at run time; meant for the CPU).

Measured (models/digits/1, xresnet_tiny at 16 px, CPU, torch 2.15 / onnxruntime 1.31): max
|p_onnx - p_torch| = 7.8e-7 over 8 random + 359 validation images, ONNX accuracy 0.9833 equal to
training's; int8: same accuracy, max |p - p_fp32| = 0.042; fp16: same accuracy, 1.6e-3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from service.imaging import (
    EvalSpec,
    ImageDecodeError,
    ImageTooLargeError,
    TTASpec,
    decode_image,
    decode_side,
    eval_view,
    to_model_input,
)
from service.model_repository import (
    CARD_FILE,
    MODEL_FILE,
    ModelCard,
    ModelRepository,
    ModelRepositoryError,
    ModelVersion,
    sha256_file,
)
from service.oip.model_config import write_triton_files
from training.distributed import require_single_process
from training.errors import ConfigError, ExportError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "tta-serve-checkpoint/1"
REQUIRED_KEYS = ("arch", "classes", "mean", "std", "eval_spec", "model")
OPSET = 18
FP32_ATOL = 1e-4  # max |probability difference| ONNX Runtime vs PyTorch, fp32
MAX_CHECK_IMAGES = 512  # real images used for the parity check and the variants' accuracy
RANDOM_BATCHES = (1, 7)  # random-input check batch sizes: also proves the batch axis is dynamic
REPORT_SUFFIXES = {".json", ".png", ".csv", ".txt", ".toml", ".md", ".svg"}
MAX_REPORT_FILE_BYTES = 50 * 1024 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ParityResult:
    """How closely the ONNX graph reproduces PyTorch (recorded in model.json metrics)."""

    max_abs_diff: float  # over all checked probabilities
    tolerance: float
    n_random: int
    n_images: int
    top1_mismatches: int  # excluding rows where PyTorch's top two are within `tolerance`
    accuracy_torch: float | None  # on the check images (labels from their class folders)
    accuracy_onnx: float | None
    images_source: str | None = None

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_mismatches == 0


@dataclass(frozen=True)
class CheckImages:
    """Real images as the service sees them: model input and class index per image."""

    pixels: np.ndarray  # float32 (N, 3, H, W) in [0, 1]
    labels: np.ndarray  # int64 (N,)
    source: str  # where they came from, for model.json


class ProbabilityModel(nn.Module):
    """The exported function: [0, 1] NCHW pixels -> class probabilities (softmax in the graph)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(pixels).float(), dim=1)


# ----------------------------------------------------------------------------- checkpoint


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read and check a training checkpoint; ExportError names what is missing."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"checkpoint {path} not found")
    try:
        # last.pt also holds optimizer/RNG state (numpy arrays), which weights_only refuses;
        # checkpoints are this project's own training output.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ExportError(f"{path} could not be read as a PyTorch checkpoint: {e}") from e
    if not isinstance(ckpt, dict):
        raise ExportError(f"{path} is not a tta-serve checkpoint (a {type(ckpt).__name__})")
    fmt = ckpt.get("format", CHECKPOINT_FORMAT)
    if fmt != CHECKPOINT_FORMAT:
        raise ExportError(f"{path} has format {fmt!r}; this exporter reads {CHECKPOINT_FORMAT!r}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ExportError(f"{path} lacks key(s) {missing}; is it a tta-serve training checkpoint?")
    if not ckpt["classes"]:
        raise ExportError(f"{path} records no classes")
    return ckpt


def _build_model(arch: str, n_classes: int, mean: list[float], std: list[float]) -> nn.Module:
    from training.models import build_model

    return build_model(arch, n_classes, mean=mean, std=std)


def _weights(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The weights training evaluated: the EMA copy when last.pt carries one (best.pt's
    "model" already is the evaluated model)."""
    ema = ckpt.get("ema")
    if isinstance(ema, dict) and any(k.startswith("module.") for k in ema):
        log.info("exporting the EMA weights (the ones training evaluated)")
        return {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}
    return ckpt["model"]


def build_export_module(ckpt: dict[str, Any]) -> ProbabilityModel:
    """Rebuild the Classifier from a checkpoint, fp32 and in eval mode, softmax appended."""
    try:
        model = _build_model(ckpt["arch"], len(ckpt["classes"]), list(ckpt["mean"]),
                             list(ckpt["std"]))
        model.load_state_dict(_weights(ckpt))
    except (KeyError, ValueError, RuntimeError, TypeError, ConfigError) as e:
        raise ExportError(
            f"could not rebuild arch {ckpt['arch']!r} with {len(ckpt['classes'])} classes from "
            f"the checkpoint: {e}"
        ) from e
    return ProbabilityModel(model).float().eval()


# ----------------------------------------------------------------------------- ONNX


@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """onnxscript/onnx_ir log every optimiser pass at INFO; keep them for --verbose only."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _quiet_root_info() -> Iterator[None]:
    """onnxruntime.quantization logs a line per tensor on the *root* logger at INFO."""
    root = logging.getLogger()
    level = root.level
    if not log.isEnabledFor(logging.DEBUG) and root.getEffectiveLevel() < logging.WARNING:
        root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(level)


def export_onnx(module: nn.Module, path: Path, *, size: int, opset: int = OPSET,
                metadata: dict[str, str] | None = None) -> int:
    """Write ``module`` as one self-contained ONNX file; returns the ai.onnx opset it uses."""
    import onnx

    path = Path(path)
    example = torch.rand(2, 3, size, size)  # batch 2: torch.export specialises sizes 0 and 1
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with torch.no_grad(), _quiet_exporter_logs():
            program = torch.onnx.export(
                module, (example,), dynamo=True, opset_version=opset,
                input_names=["pixels"], output_names=["probabilities"],
                dynamic_shapes={"pixels": {0: batch}}, optimize=True, verbose=False,
            )
        program.save(path, external_data=False)
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {e}") from e

    model = onnx.load(str(path), load_external_data=False)
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    external = [t.name for t in model.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ExportError(f"the exported graph keeps {len(external)} tensor(s) outside the file")
    model.doc_string = "tta-serve classifier: pixels float32 NCHW [0,1] -> probabilities"
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    used = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    log.info("exported %s (opset %d, %.1f MB)", path, used, path.stat().st_size / 1e6)
    return used


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _batches(x: np.ndarray, size: int = 64) -> Iterator[np.ndarray]:
    for i in range(0, len(x), size):
        yield x[i:i + size]


def run_onnx(path: Path, pixels: np.ndarray) -> np.ndarray:
    """Probabilities from ONNX Runtime (CPU), in batches."""
    session = _session(path)
    outs = [session.run(["probabilities"], {"pixels": b})[0] for b in _batches(pixels)]
    return np.concatenate(outs).astype(np.float32)


def run_torch(module: nn.Module, pixels: np.ndarray) -> np.ndarray:
    """Probabilities from PyTorch (CPU, fp32), in batches."""
    with torch.no_grad():
        outs = [module(torch.from_numpy(b)).numpy() for b in _batches(pixels)]
    return np.concatenate(outs).astype(np.float32)


# ----------------------------------------------------------------------------- check images


def _spread(pairs: list[tuple[Path, int]], limit: int) -> list[tuple[Path, int]]:
    """At most ``limit`` items taken round-robin over classes, so every class is represented."""
    by_class: dict[int, list[Path]] = {}
    for path, label in pairs:
        by_class.setdefault(label, []).append(path)
    chosen: list[tuple[Path, int]] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(v) for v in by_class.values()):
        chosen += [(v[depth], y) for y, v in sorted(by_class.items()) if depth < len(v)]
        depth += 1
    return chosen[:limit]


def _read_views(pairs: list[tuple[Path, int]], spec: EvalSpec, source: str,
                min_side: int | None) -> CheckImages | None:
    views, labels = [], []
    for path, label in pairs:
        try:
            views.append(eval_view(decode_image(path, min_side=min_side), spec))
        except (ImageDecodeError, ImageTooLargeError) as e:
            log.warning("skipping check image: %s", e)
            continue
        labels.append(label)
    if not views:
        return None
    return CheckImages(pixels=to_model_input(np.stack(views)),
                       labels=np.asarray(labels, dtype=np.int64), source=source)


def folder_items(data_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """Labelled images of a folder: ``DIR/valid/<class>/*`` (or val/) if present, else
    ``DIR/<class>/*``; folders of classes the model does not know are ignored with a warning."""
    from training.data import IMAGE_EXTENSIONS

    root = next((data_dir / s for s in ("valid", "val") if (data_dir / s).is_dir()), data_dir)
    index = {name: i for i, name in enumerate(classes)}
    pairs: list[tuple[Path, int]] = []
    unknown = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name not in index:
            unknown.append(folder.name)
            continue
        pairs += [(p, index[folder.name]) for p in sorted(folder.iterdir())
                  if p.suffix.lower() in IMAGE_EXTENSIONS]
    if unknown and pairs:
        log.warning("%s: ignoring folders of classes the model does not know: %s", root, unknown)
    return pairs


def recipe_valid_items(recipe: dict[str, Any] | None,
                       classes: list[str]) -> tuple[list[tuple[Path, int]], str] | None:
    """The run's own validation split, rebuilt from the recorded recipe (None if unavailable)."""
    from training.data import load_items
    from training.errors import DataError

    d = (recipe or {}).get("data") or {}
    if not isinstance(d, dict) or not d.get("path") or not Path(d["path"]).is_dir():
        return None
    try:
        # The split is decided before images are checked (load_items' contract), so skipping
        # the check gives the same validation set; unreadable files are skipped when decoded.
        split = load_items(d["path"], csv=d.get("csv") or None, valid_pct=d.get("valid_pct", 0.2),
                           seed=d.get("seed", 42), check_images=False)
    except DataError as e:
        log.warning("could not rebuild the validation split: %s", e)
        return None
    index = {name: i for i, name in enumerate(classes)}
    pairs = [(Path(p), index[split.classes[y]])
             for p, y in zip(split.valid.paths, split.valid.labels, strict=True)
             if split.classes[y] in index]
    return pairs, f"{split.source} (validation split)"


def find_check_images(data: Path | None, recipe: dict[str, Any] | None, classes: list[str],
                      spec: EvalSpec, *, limit: int = MAX_CHECK_IMAGES,
                      min_side: int | None = None) -> CheckImages | None:
    """Real images for the check, through service.imaging exactly as the service reads them
    (``min_side``: the model's ``decode_side``, as the servers decode).

    ``data`` given: that folder (it must hold images of the model's classes), unless it is the
    recipe's own data folder. Otherwise the run's validation split, rebuilt from the recorded
    recipe when its data folder is here: the images training's accuracy was measured on.
    """
    recipe_data = ((recipe or {}).get("data") or {}).get("path")
    if data is not None and recipe_data and Path(data).resolve() == Path(recipe_data).resolve():
        data = None  # the training data itself: check on its validation split, not on all of it
    if data is not None:
        data = Path(data)
        if not data.is_dir():
            raise ExportError(f"--data {data} is not a folder")
        pairs, source = folder_items(data, classes), str(data)
        if not pairs:
            shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
            raise ExportError(f"--data {data}: no images in folders named after the model's "
                              f"classes ({shown})")
    else:
        found = recipe_valid_items(recipe, classes)
        if found is None:
            return None
        pairs, source = found
    images = _read_views(_spread(pairs, limit), spec, source, min_side)
    if images is None and data is not None:
        raise ExportError(f"--data {data}: none of the images could be decoded")
    return images


# ----------------------------------------------------------------------------- parity


def _top1_mismatches(p_ref: np.ndarray, p_other: np.ndarray, tolerance: float) -> int:
    """Rows whose top-1 differs, ignoring rows where the reference's top two are a tie."""
    differ = p_ref.argmax(1) != p_other.argmax(1)
    if p_ref.shape[1] > 1:
        top2 = np.sort(p_ref, axis=1)[:, -2:]
        differ &= (top2[:, 1] - top2[:, 0]) > tolerance
    return int(differ.sum())


def verify_parity(module: nn.Module, onnx_path: Path, images: CheckImages | None, *,
                  size: int, tolerance: float = FP32_ATOL, seed: int = 0) -> ParityResult:
    """Compare ONNX Runtime with PyTorch on random inputs (batch 1 and 7) and real images."""
    rng = np.random.default_rng(seed)
    session = _session(onnx_path)
    p_torch, p_onnx = [], []
    for batch in RANDOM_BATCHES:
        x = rng.random((batch, 3, size, size), dtype=np.float32)
        p_onnx.append(session.run(["probabilities"], {"pixels": x})[0])
        p_torch.append(run_torch(module, x))
        if p_onnx[-1].shape != p_torch[-1].shape:
            raise ExportError(f"ONNX output shape {p_onnx[-1].shape} != PyTorch's "
                              f"{p_torch[-1].shape} at batch {batch}")
    acc_t = acc_o = None
    if images is not None:
        it, io_ = run_torch(module, images.pixels), run_onnx(onnx_path, images.pixels)
        acc_t = float((it.argmax(1) == images.labels).mean())
        acc_o = float((io_.argmax(1) == images.labels).mean())
        p_torch.append(it)
        p_onnx.append(io_)
    ref, got = np.concatenate(p_torch), np.concatenate(p_onnx)
    return ParityResult(
        max_abs_diff=float(np.abs(ref - got).max()),
        tolerance=tolerance,
        n_random=sum(RANDOM_BATCHES),
        n_images=0 if images is None else len(images.labels),
        top1_mismatches=_top1_mismatches(ref, got, tolerance),
        accuracy_torch=acc_t,
        accuracy_onnx=acc_o,
        images_source=None if images is None else images.source,
    )


# ----------------------------------------------------------------------------- variants


def _convert_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def _quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # The documented pre-processing (shape inference + graph optimisation) first; without it
    # the quantiser's own shape inference rejects the exporter's value_info once it rewrites
    # Gemm ("Inferred shape and existing shape differ", onnxruntime 1.31).
    with tempfile.TemporaryDirectory() as tmp, _quiet_root_info():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(src, prepared)
        quantize_dynamic(prepared, dst, weight_type=QuantType.QInt8)


VARIANTS: dict[str, tuple[str, Callable[[Path, Path], None]]] = {
    "fp16": ("model.fp16.onnx", _convert_fp16),
    "int8": ("model.int8.onnx", _quantize_int8),
}


def build_variant(kind: str, folder: Path, images: CheckImages | None, reference: np.ndarray,
                  fp32_accuracy: float | None, size: int) -> dict[str, Any]:
    """Write one reduced-precision variant next to model.onnx and measure what it costs."""
    file, convert = VARIANTS[kind]
    try:
        convert(folder / MODEL_FILE, folder / file)
        pixels = images.pixels if images is not None else _random_pixels(size)
        probs = run_onnx(folder / file, pixels)
    except Exception as e:
        raise ExportError(f"the {kind} variant failed: {type(e).__name__}: {e}") from e
    accuracy = None
    if images is not None:
        accuracy = float((probs.argmax(1) == images.labels).mean())
    record = {
        "file": file,
        "sha256": sha256_file(folder / file),
        "bytes": (folder / file).stat().st_size,
        "accuracy": accuracy,
        "delta_accuracy": None if accuracy is None or fp32_accuracy is None
        else accuracy - fp32_accuracy,
        "max_abs_diff_vs_fp32": float(np.abs(probs - reference).max()),
        "top1_agreement_vs_fp32": float((probs.argmax(1) == reference.argmax(1)).mean()),
        "n_images": 0 if images is None else len(images.labels),
    }
    log.info("%s variant: %s", kind, record)
    return record


def _random_pixels(size: int, n: int = 32) -> np.ndarray:
    return np.random.default_rng(1).random((n, 3, size, size), dtype=np.float32)


# ----------------------------------------------------------------------------- report files


RUN_FOLDER_MARKERS = ("report", "metrics.json", "recipe.toml")  # what `training fit` leaves


def copy_run_report(run_dir: Path, dest: Path) -> list[str]:
    """Copy the run's report files (its report/ folder, metrics JSON, plots) into ``dest``.

    Only from a run folder as ``training fit`` writes it, so a checkpoint kept elsewhere does
    not sweep unrelated files into the published version.
    """
    if not any((run_dir / marker).exists() for marker in RUN_FOLDER_MARKERS):
        log.info("%s is not a training run folder; no report files copied", run_dir)
        return []
    copied: list[str] = []
    if (run_dir / "report").is_dir():
        shutil.copytree(run_dir / "report", dest, dirs_exist_ok=True)
        copied += [str(p.relative_to(dest)) for p in sorted(dest.rglob("*")) if p.is_file()]
    for p in sorted(run_dir.iterdir()):
        if (p.is_file() and p.suffix.lower() in REPORT_SUFFIXES
                and p.stat().st_size <= MAX_REPORT_FILE_BYTES and not (dest / p.name).exists()):
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest / p.name)
            copied.append(p.name)
    return copied


# ----------------------------------------------------------------------------- export


def _metrics(ckpt: dict[str, Any], parity: ParityResult, checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's metrics (plain and TTA accuracy, ...) plus what the export measured."""
    metrics: dict[str, Any] = {}
    for key, value in (ckpt.get("metrics") or {}).items():
        if isinstance(value, torch.Tensor | np.generic | np.ndarray) and np.prod(value.shape) == 1:
            value = float(value.item())  # a 0-d tensor or numpy scalar
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            log.debug("metric %r is not JSON-serialisable; left out of model.json", key)
            continue
        metrics[key] = value
    metrics.setdefault("accuracy", None)
    metrics.setdefault("tta_accuracy", None)
    metrics["export_check"] = {**asdict(parity), "runtime": "onnxruntime CPUExecutionProvider",
                               "checkpoint": str(checkpoint), "arch": str(ckpt["arch"])}
    return metrics


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _compare_with_recorded(recorded: dict[str, Any], parity: ParityResult) -> None:
    """When the check saw the whole validation set, its accuracy should be training's."""
    acc, n = recorded.get("accuracy"), recorded.get("n_valid")
    if parity.accuracy_onnx is None or not isinstance(acc, float) or n != parity.n_images:
        return
    if abs(parity.accuracy_onnx - acc) > 0.5 / max(n, 1):
        log.warning("ONNX accuracy on the %d validation images is %.4f but the checkpoint records "
                    "%.4f: training evaluated something else (another split, EMA weights?)",
                    n, parity.accuracy_onnx, acc)


def _check_target(repo: ModelRepository, name: str, version: int | None, force: bool) -> int:
    if not _NAME_RE.match(name):
        raise ExportError(f"model name {name!r} must be letters, digits, '.', '_' or '-' and "
                          "start with a letter or digit")
    if version is None:
        return repo.next_version(name)
    if version < 1:
        raise ExportError(f"--version must be >= 1, got {version}")
    if version in repo.versions(name) and not force:
        raise ExportError(f"{repo.root / name / str(version)} already exists; pass --force to "
                          "replace it, or leave out --version to publish the next version")
    return version


def export_and_verify(module: nn.Module, onnx_path: Path, ckpt: dict[str, Any],
                      images: CheckImages | None, spec: EvalSpec,
                      tolerance: float = FP32_ATOL) -> tuple[int, ParityResult]:
    """Write model.onnx and prove it computes what PyTorch computes; ExportError if not."""
    opset = export_onnx(module, onnx_path, size=spec.size, metadata={
        "tta_serve.classes": json.dumps([str(c) for c in ckpt["classes"]]),
        "tta_serve.arch": str(ckpt["arch"]),
        "tta_serve.eval_transform": json.dumps(spec.to_dict()),
    })
    parity = verify_parity(module, onnx_path, images, size=spec.size, tolerance=tolerance)
    log.info("parity: max |p_onnx - p_torch| = %.3g (tolerance %.0e) on %d random + %d real "
             "images; top-1 mismatches %d", parity.max_abs_diff, tolerance, parity.n_random,
             parity.n_images, parity.top1_mismatches)
    _compare_with_recorded(ckpt.get("metrics") or {}, parity)
    if not parity.ok:
        raise ExportError(
            f"ONNX Runtime does not reproduce PyTorch: max |p_onnx - p_torch| = "
            f"{parity.max_abs_diff:.3g} (tolerance {tolerance:.0e}), "
            f"{parity.top1_mismatches} top-1 mismatch(es); nothing was published"
        )
    return opset, parity


def build_variants(folder: Path, kinds: list[str], images: CheckImages | None,
                   parity: ParityResult, size: int) -> dict[str, Any]:
    """The requested reduced-precision variants, each measured against model.onnx."""
    if not kinds:
        return {}
    pixels = images.pixels if images is not None else _random_pixels(size)
    reference = run_onnx(folder / MODEL_FILE, pixels)
    return {kind: build_variant(kind, folder, images, reference, parity.accuracy_onnx, size)
            for kind in kinds}


def publish_staged(repo: ModelRepository, staging: Path, card: ModelCard, *, force: bool,
                   auto_version: bool, attempts: int = 5) -> ModelVersion:
    """Write model.json and rename the staging folder into place.

    An automatically chosen version taken meanwhile by a concurrent export moves on to the
    next free one; an explicitly requested version never does.
    """
    for _ in range(attempts):
        (staging / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
        try:
            return repo.publish(staging, card.name, card.version, force=force)
        except ModelRepositoryError as e:
            raise ExportError(f"the staged version did not validate: {e}") from e
        except OSError as e:
            taken = isinstance(e, FileExistsError) or e.errno in (errno.EEXIST, errno.ENOTEMPTY)
            if not taken:
                raise
            if not auto_version:
                raise ExportError(f"{repo.root / card.name / str(card.version)} was published "
                                  "by someone else meanwhile; nothing was overwritten") from e
            log.warning("version %d was taken meanwhile; trying the next one", card.version)
            card = dataclasses.replace(card, version=repo.next_version(card.name))
    raise ExportError(f"could not find a free version of {card.name} in {attempts} attempts")


def export_checkpoint(
    checkpoint: Path,
    *,
    name: str,
    models_dir: Path,
    version: int | None = None,
    force: bool = False,
    data: Path | None = None,
    fp16: bool = False,
    int8: bool = False,
    tolerance: float = FP32_ATOL,
    max_images: int = MAX_CHECK_IMAGES,
    random_inputs_only: bool = False,
) -> ModelVersion:
    """Export, verify and publish a checkpoint as ``models_dir/name/version``.

    ``version`` None publishes the next integer; an existing version is replaced only with
    ``force``. Raises ExportError (nothing published) when the checkpoint is unusable, the
    export fails, or ONNX Runtime does not reproduce PyTorch within ``tolerance``. The check
    needs real images (``data``, or the run's validation split) unless ``random_inputs_only``
    (models without data, e.g. random-weight benchmark models).
    """
    require_single_process("export", "every rank would publish its own version")
    checkpoint = Path(checkpoint)
    repo = ModelRepository(models_dir)
    auto_version = version is None
    version = _check_target(repo, name, version, force)
    ckpt = read_checkpoint(checkpoint)
    classes = [str(c) for c in ckpt["classes"]]
    try:
        spec = EvalSpec.from_dict(ckpt["eval_spec"])
        tta = TTASpec.from_dict(ckpt["tta"]) if ckpt.get("tta") else TTASpec()
    except (TypeError, ValueError) as e:
        raise ExportError(f"{checkpoint}: eval_spec/tta are not valid: {e}") from e
    module = build_export_module(ckpt)
    images = None if random_inputs_only else find_check_images(
        data, ckpt.get("recipe"), classes, spec, limit=max_images,
        min_side=decode_side(spec, tta))
    if images is None and not random_inputs_only:
        where = ((ckpt.get("recipe") or {}).get("data") or {}).get("path")
        raise ExportError(
            f"no real images to check {checkpoint} on: the recipe's data folder {where!r} is not "
            "here. Pass --data DIR (a labelled folder of the model's classes), or "
            "--random-inputs-only to check on random inputs alone (model.json then records "
            "n_images 0)")

    staging = repo.staging_dir(name)
    try:
        opset, parity = export_and_verify(module, staging / MODEL_FILE, ckpt, images, spec,
                                          tolerance)
        kinds = [kind for kind, wanted in (("fp16", fp16), ("int8", int8)) if wanted]
        variants = build_variants(staging, kinds, images, parity, spec.size)
        report = copy_run_report(checkpoint.parent, staging / "report")
        card = ModelCard(
            name=name, version=version, classes=tuple(classes), eval_spec=spec, tta=tta,
            sha256=sha256_file(staging / MODEL_FILE),
            mean=tuple(float(v) for v in ckpt["mean"]),
            std=tuple(float(v) for v in ckpt["std"]),
            opset=opset,
            metrics=_jsonable(_metrics(ckpt, parity, checkpoint)),
            recipe=_jsonable(ckpt.get("recipe") or {}),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            variants=variants,
        )
        log.info("staged %s (%d report file(s))", staging, len(report))
        published = publish_staged(repo, staging, card, force=force, auto_version=auto_version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # NVIDIA Triton can serve the same folder: models/NAME/config.pbtxt + labels.txt (newest).
    if published.version == repo.latest(name):
        write_triton_files(repo.root / name, published.card)
    return published
