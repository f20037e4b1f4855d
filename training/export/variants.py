"""Optional reduced-precision variants, each measured on the same check images as model.onnx
and recorded in model.json ``variants``.

``--fp16``: onnxruntime's float16 converter, inputs/outputs kept float32 so clients do not
change; meant for GPUs. ``--int8``: ``quantize_dynamic``, int8 weights, activations quantised at
run time; meant for the CPU. Measured on models/digits/1: int8 the same accuracy, max
|p - p_fp32| = 0.042; fp16 the same accuracy, 1.6e-3.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from service.model_repository import MODEL_FILE, VariantRecord, sha256_file
from training.errors import ExportError
from training.export.check_images import CheckImages
from training.export.onnx_graph import run_onnx
from training.export.parity import ParityResult

log = logging.getLogger(__name__)


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
                  fp32_accuracy: float | None, size: int) -> VariantRecord:
    """Write one reduced-precision variant next to model.onnx and measure what it costs."""
    file, convert = VARIANTS[kind]
    try:
        convert(folder / MODEL_FILE, folder / file)
        pixels = images.pixels if images is not None else random_pixels(size)
        probs = run_onnx(folder / file, pixels)
    except Exception as e:
        raise ExportError(f"the {kind} variant failed: {type(e).__name__}: {e}") from e
    accuracy = None
    if images is not None:
        accuracy = float((probs.argmax(1) == images.labels).mean())
    record = VariantRecord(
        file=file,
        sha256=sha256_file(folder / file),
        bytes=(folder / file).stat().st_size,
        accuracy=accuracy,
        delta_accuracy=None if accuracy is None or fp32_accuracy is None
        else accuracy - fp32_accuracy,
        max_abs_diff_vs_fp32=float(np.abs(probs - reference).max()),
        top1_agreement_vs_fp32=float((probs.argmax(1) == reference.argmax(1)).mean()),
        n_images=0 if images is None else len(images.labels),
    )
    log.info("%s variant: %s", kind, record.to_dict())
    return record


def random_pixels(size: int, n: int = 32) -> np.ndarray:
    return np.random.default_rng(1).random((n, 3, size, size), dtype=np.float32)


def build_variants(folder: Path, kinds: list[str], images: CheckImages | None,
                   parity: ParityResult, size: int) -> dict[str, VariantRecord]:
    """The requested reduced-precision variants, each measured against model.onnx."""
    if not kinds:
        return {}
    pixels = images.pixels if images is not None else random_pixels(size)
    reference = run_onnx(folder / MODEL_FILE, pixels)
    return {kind: build_variant(kind, folder, images, reference, parity.accuracy_onnx, size)
            for kind in kinds}
