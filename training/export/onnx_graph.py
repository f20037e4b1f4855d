"""The ONNX graph of a Classifier, and both runtimes' probabilities for the parity check.

Exporter choice: ``torch.onnx.export(..., dynamo=True)``, the torch.export-based exporter (the
TorchScript one is deprecated in torch 2.9+). It captures the graph without Python tracing
quirks, takes the batch axis as a real symbolic dimension (``dynamic_shapes``) and runs the
onnxscript optimiser (constant folding, BatchNorm folded into Conv, no local functions left).
Opset 18 is the exporter's native opset (no version-converter pass, which can be lossy) and
onnxruntime has run it since 1.14 (the service requires >= 1.20). The file is saved
self-contained (no external-data file): one sha256 covers the whole model, which is what
model.json records; protobuf's 2 GB limit is far above our model sizes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.checkpoint import Checkpoint
from training.errors import ExportError

log = logging.getLogger(__name__)

OPSET = 18


class ProbabilityModel(nn.Module):
    """The exported function: [0, 1] NCHW pixels -> class probabilities (softmax in the graph)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(pixels).float(), dim=1)




def build_export_module(checkpoint: Checkpoint) -> ProbabilityModel:
    """The checkpoint's evaluated model, fp32 and in eval mode, softmax appended."""
    return ProbabilityModel(checkpoint.build_model(error=ExportError)).float().eval()


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


def session(path: Path):  # -> onnxruntime.InferenceSession (imported only when used)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _batches(x: np.ndarray, size: int = 64) -> Iterator[np.ndarray]:
    for i in range(0, len(x), size):
        yield x[i:i + size]


def run_onnx(path: Path, pixels: np.ndarray) -> np.ndarray:
    """Probabilities from ONNX Runtime (CPU), in batches."""
    ort_session = session(path)
    outs = [ort_session.run(["probabilities"], {"pixels": b})[0] for b in _batches(pixels)]
    return np.concatenate(outs).astype(np.float32)


def run_torch(module: nn.Module, pixels: np.ndarray) -> np.ndarray:
    """Probabilities from PyTorch (CPU, fp32), in batches."""
    with torch.no_grad():
        outs = [module(torch.from_numpy(b)).numpy() for b in _batches(pixels)]
    return np.concatenate(outs).astype(np.float32)
