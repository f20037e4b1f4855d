"""Does ONNX Runtime compute what PyTorch computes? Nothing is published unless it does.

Measured (models/digits/1, xresnet_tiny at 16 px, CPU, torch 2.15 / onnxruntime 1.31): max
|p_onnx - p_torch| = 7.8e-7 over 8 random + 359 validation images, ONNX accuracy 0.9833 equal to
training's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from training.errors import ExportError
from training.export.check_images import CheckImages
from training.export.onnx_graph import run_onnx, run_torch, session

log = logging.getLogger(__name__)

FP32_ATOL = 1e-4  # max |probability difference| ONNX Runtime vs PyTorch, fp32
RANDOM_BATCHES = (1, 7)  # random-input check batch sizes: also proves the batch axis is dynamic


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
    ort_session = session(onnx_path)
    p_torch, p_onnx = [], []
    for batch in RANDOM_BATCHES:
        x = rng.random((batch, 3, size, size), dtype=np.float32)
        p_onnx.append(ort_session.run(["probabilities"], {"pixels": x})[0])
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



def compare_with_recorded(recorded: dict[str, Any], parity: ParityResult) -> None:
    """When the check saw the whole validation set, its accuracy should be training's."""
    acc, n = recorded.get("accuracy"), recorded.get("n_valid")
    if parity.accuracy_onnx is None or not isinstance(acc, float) or n != parity.n_images:
        return
    if abs(parity.accuracy_onnx - acc) > 0.5 / max(n, 1):
        log.warning("ONNX accuracy on the %d validation images is %.4f but the checkpoint records "
                    "%.4f: training evaluated something else (another split, EMA weights?)",
                    n, parity.accuracy_onnx, acc)
