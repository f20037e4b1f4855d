"""The inference core on the GPU: its ONNX Runtime session really runs on CUDAExecutionProvider,
and its answers on real digit images equal the CPU core's within tolerance (TTA too)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service.core import CoreConfig, InferenceCore, Prediction
from service.core.runtime import create_session, plan_device

pytestmark = pytest.mark.gpu

CUDA = "CUDAExecutionProvider"
# ORT's CUDA provider may use TF32 for convolutions and matmuls (on by default on Ampere and
# later): probabilities differ from the CPU's in the third decimal at most on these models.
ATOL = 5e-3
N_IMAGES = 300


def started_core(models_dir: Path, device: str, **kw) -> InferenceCore:
    return InferenceCore.create(CoreConfig(models_dir=models_dir, default_model="digits",
                                           device=device, poll_interval_s=0, **kw)).start()


@pytest.fixture(scope="module")
def digit_images(gpu_digits_dir: Path) -> list[bytes]:
    """Real PNG bytes, spread over the ten classes."""
    per_class = [sorted((gpu_digits_dir / str(d)).glob("*.png")) for d in range(10)]
    paths = [p for group in zip(*per_class, strict=False) for p in group][:N_IMAGES]
    return [p.read_bytes() for p in paths]


def probabilities(core: InferenceCore, images: list[bytes], tta: bool) -> np.ndarray:
    results = asyncio.run(core.predict_batch(images, tta=tta))
    assert all(isinstance(r, Prediction) for r in results), [r for r in results
                                                             if not isinstance(r, Prediction)]
    return np.stack([r.probabilities for r in results])


def test_session_really_runs_on_cuda(gpu_models_dir: Path) -> None:
    session, info = create_session(gpu_models_dir / "digits" / "1" / "model.onnx",
                                   plan_device("cuda"), intra_op_threads=2)
    assert session.get_providers()[0] == CUDA
    assert info.name == CUDA and info.device == "cuda"


def test_core_reports_the_cuda_provider(gpu_models_dir: Path) -> None:
    for requested in ("cuda", "auto"):
        core = started_core(gpu_models_dir, requested)
        try:
            assert core.provider.name == CUDA and core.provider.device == "cuda", core.provider
            assert core.get_model("digits").provider.name == CUDA
        finally:
            core.stop()


@pytest.mark.parametrize("tta", [False, True], ids=["single", "tta"])
def test_gpu_predictions_equal_cpu_predictions(gpu_models_dir: Path, digit_images: list[bytes],
                                               tta: bool) -> None:
    gpu, cpu = started_core(gpu_models_dir, "cuda"), started_core(gpu_models_dir, "cpu")
    try:
        assert cpu.provider.name == "CPUExecutionProvider"
        p_gpu = probabilities(gpu, digit_images, tta)
        p_cpu = probabilities(cpu, digit_images, tta)
    finally:
        gpu.stop()
        cpu.stop()
    assert p_gpu.shape == p_cpu.shape == (len(digit_images), 10)
    np.testing.assert_allclose(p_gpu, p_cpu, atol=ATOL)
    top2 = np.sort(p_cpu, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * ATOL  # ignore near-ties
    assert (p_gpu.argmax(1) == p_cpu.argmax(1))[clear].all()


def test_batched_and_unbatched_gpu_answers_agree(gpu_models_dir: Path,
                                                digit_images: list[bytes]) -> None:
    """Dynamic batching on the GPU gives every request its own rows back."""
    batched = started_core(gpu_models_dir, "cuda", max_batch_size=32)
    single = started_core(gpu_models_dir, "cuda", max_batch_size=1)
    try:
        p_batched = probabilities(batched, digit_images[:96], tta=True)
        p_single = probabilities(single, digit_images[:96], tta=True)
    finally:
        batched.stop()
        single.stop()
    np.testing.assert_allclose(p_batched, p_single, atol=ATOL)
