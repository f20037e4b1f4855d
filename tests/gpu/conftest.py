"""GPU tests: skipped unless a CUDA GPU is really usable by both PyTorch and ONNX Runtime.

"Really usable" is checked, not assumed: onnxruntime-gpu lists CUDAExecutionProvider even on
machines without a GPU and silently falls back to the CPU, so a session is created on a tiny
graph and must come up on CUDAExecutionProvider. The one digits training run these tests need
(1 epoch on the GPU, with spies on augmentation and the forward pass) is shared by the session.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "digits.toml"
CUDA = "CUDAExecutionProvider"


@functools.cache
def cuda_problem() -> str | None:
    """Why these tests cannot run here, or None when PyTorch and ONNX Runtime both have CUDA."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (scripts/setup.sh train,dev)"
    if not torch.cuda.is_available():
        return "no CUDA GPU: torch.cuda.is_available() is False"
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from service.core.errors import DeviceUnavailable
    from service.core.runtime import plan_device

    try:
        plan_device("cuda")  # also preloads the CUDA/cuDNN libraries of the nvidia-* wheels
    except DeviceUnavailable as e:
        return str(e)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    try:
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=[CUDA, "CPUExecutionProvider"])
        session.run(None, {"x": np.ones((2, 4), np.float32)})
    except Exception as e:  # any failure to use the provider means: not here
        return f"onnxruntime cannot run on CUDA: {e}"
    if session.get_providers()[0] != CUDA:
        return (f"onnxruntime {ort.__version__} fell back to {session.get_providers()[0]} "
                "(CUDA/cuDNN libraries missing or mismatched)")
    return None


@pytest.fixture(scope="session", autouse=True)
def require_cuda() -> None:
    problem = cuda_problem()
    if problem is not None:
        pytest.skip(f"GPU tests need a CUDA GPU: {problem}")


@pytest.fixture(scope="session")
def gpu_digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's 1,797 real handwritten digits as an image folder."""
    from training.data import make_digits

    return make_digits(tmp_path_factory.mktemp("digits") / "digits")


@dataclass
class TrainingSpy:
    """What the training run did on the device, recorded from inside it."""

    augment_inputs: list[tuple[str, Any, tuple[int, ...]]] = field(default_factory=list)
    augment_outputs: list[tuple[str, Any]] = field(default_factory=list)
    # per training forward pass: (input device, autocast on, autocast dtype, input channels_last,
    # first conv weight channels_last)
    forwards: list[tuple[str, bool, Any, bool, bool]] = field(default_factory=list)


@dataclass
class GpuRun:
    result: Any  # training.phases.FitResult
    recipe: Any
    spy: TrainingSpy


def _first_conv_weight(module: Any) -> Any:
    import torch

    return next(m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d))


def spied_fit(recipe: Any) -> GpuRun:
    """training.phases.fit(recipe) with spies on BatchAugment and on the model's forward passes."""
    import torch

    from training.augment import BatchAugment
    from training.models import Classifier
    from training.phases import fit

    spy = TrainingSpy()
    original_call = BatchAugment.__call__

    def spying_call(self: BatchAugment, x: torch.Tensor, generator: Any = None) -> torch.Tensor:
        spy.augment_inputs.append((x.device.type, x.dtype, tuple(x.shape)))
        y = original_call(self, x, generator)
        spy.augment_outputs.append((y.device.type, y.dtype))
        return y

    def forward_hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
        if not isinstance(module, Classifier) or not module.training:
            return
        x = args[0]
        spy.forwards.append((
            x.device.type,
            torch.is_autocast_enabled(x.device.type),
            torch.get_autocast_dtype(x.device.type),
            x.is_contiguous(memory_format=torch.channels_last),
            _first_conv_weight(module).is_contiguous(memory_format=torch.channels_last),
        ))

    handle = torch.nn.modules.module.register_module_forward_hook(forward_hook)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(BatchAugment, "__call__", spying_call)
            result = fit(recipe, progress=False)
    finally:
        handle.remove()
    return GpuRun(result=result, recipe=recipe, spy=spy)


@pytest.fixture(scope="session")
def gpu_training_run(gpu_digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> GpuRun:
    """Digits, 1 epoch at 32 px on the GPU (recipe defaults: mixed precision and channels_last
    "auto"), spied on."""
    from training.config import load_recipe

    out = tmp_path_factory.mktemp("gpu-run")
    return spied_fit(load_recipe(RECIPE, [
        f'data.path="{gpu_digits_dir}"', f'train.output="{out}"', 'train.device="cuda"',
        "stages.0.size=32", "stages.0.epochs=1", "stages.1.epochs=0",
    ]))


@pytest.fixture(scope="session")
def gpu_models_dir(gpu_training_run: GpuRun, gpu_digits_dir: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The GPU-trained digits model exported (and parity-checked) into a model repository."""
    from training.export import export_checkpoint

    models = tmp_path_factory.mktemp("models")
    export_checkpoint(gpu_training_run.result.best_checkpoint, name="digits", models_dir=models,
                      data=gpu_digits_dir, max_images=256)
    yield models
