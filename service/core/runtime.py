"""ONNX Runtime sessions and the choice of execution provider.

``device="auto"`` uses CUDA when a GPU and the CUDA libraries are really usable, else the CPU;
``device="cuda"`` refuses (DeviceUnavailable) instead of silently running on the CPU. What
counts is the provider a created session actually got (``session.get_providers()``):
onnxruntime-gpu *lists* CUDAExecutionProvider in ``get_available_providers()`` even on machines
without a GPU, and quietly falls back to the CPU when it cannot load the CUDA libraries.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from service.core.errors import DeviceUnavailable

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

_preload_lock = threading.Lock()
_preloaded = False


@dataclass(frozen=True)
class ProviderInfo:
    """Which provider sessions run on, what was asked for, and why."""

    requested: str  # auto | cpu | cuda
    device: str  # cpu | cuda
    name: str  # e.g. CPUExecutionProvider
    reason: str = ""  # why not CUDA, when requested was auto

    def __str__(self) -> str:
        return self.name


def cuda_problem() -> str | None:
    """Why CUDA cannot be used here, or None when it looks usable (a session confirms it)."""
    if CUDA not in ort.get_available_providers():
        return (f"this onnxruntime build ({ort.__version__}) has no CUDA provider; "
                "install onnxruntime-gpu")
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver found (libcuda.so.1 cannot be loaded), so there is no usable GPU"
    return None


def _preload_cuda_libraries() -> None:
    """Let ORT find the CUDA/cuDNN libraries of the nvidia-* pip wheels (torch's), if present."""
    global _preloaded
    with _preload_lock:
        if _preloaded:
            return
        _preloaded = True
        if importlib.util.find_spec("nvidia") is None or not hasattr(ort, "preload_dlls"):
            return
        try:
            ort.preload_dlls()
        except Exception as e:  # best effort: the system libraries may still work
            log.debug("onnxruntime.preload_dlls() failed: %s", e)


def plan_device(requested: str) -> ProviderInfo:
    """Decide the provider before any model is loaded; DeviceUnavailable for an impossible cuda."""
    if requested == "cpu":
        return ProviderInfo(requested, "cpu", CPU)
    problem = cuda_problem()
    if problem is None:
        _preload_cuda_libraries()
        return ProviderInfo(requested, "cuda", CUDA)
    if requested == "cuda":
        raise DeviceUnavailable(
            f"--device cuda was requested but CUDA cannot be used: {problem}. "
            "Run with --device cpu (or auto) on this machine."
        )
    return ProviderInfo(requested, "cpu", CPU, reason=problem)


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Don't busy-wait between forward passes: the decode threads need those cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only; we log the provider ourselves
    return options


def create_session(
    onnx_path: Path, plan: ProviderInfo, *, intra_op_threads: int
) -> tuple[ort.InferenceSession, ProviderInfo]:
    """A session on the planned provider, and the provider it really got.

    When CUDA was planned but the session came up on the CPU: DeviceUnavailable if cuda was
    explicitly requested, otherwise the returned info says CPU and why.
    """
    if plan.device == "cuda":
        # HEURISTIC: dynamic batch sizes make EXHAUSTIVE re-search cuDNN algorithms per shape.
        providers: list = [(CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), CPU]
    else:
        providers = [CPU]
    session = ort.InferenceSession(
        str(onnx_path), sess_options=session_options(intra_op_threads), providers=providers
    )
    active = session.get_providers()[0]
    if plan.device == "cuda" and active != CUDA:
        reason = ("onnxruntime could not load its CUDA provider (are the CUDA and cuDNN "
                  "libraries this onnxruntime build needs installed?)")
        if plan.requested == "cuda":
            raise DeviceUnavailable(f"--device cuda was requested but {reason}; run with "
                                    "--device cpu or install the CUDA libraries")
        return session, ProviderInfo(plan.requested, "cpu", active, reason=reason)
    return session, ProviderInfo(plan.requested, plan.device, active, reason=plan.reason)
