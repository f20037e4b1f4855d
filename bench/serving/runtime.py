"""The limits a server is measured against: raw ONNX Runtime on ready arrays, and the inference
core alone, in-process."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import numpy as np

from bench.common import (
    BenchModel,
    images_for,
    latency_ms,
    timed_loop,
)
from bench.loadgen import run_load
from bench.serving.settings import SETTINGS, Durations


def gpu_name() -> str:
    """nvidia-smi's name of the first GPU, or "none" (bench.common.machine says "none")."""
    import shutil

    if shutil.which("nvidia-smi") is None:
        return "none"
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    return lines[0] if out.returncode == 0 and lines else "none"


def providers() -> list:
    """Raw ORT's providers on --device: CUDA as the core configures it (runtime.py), or CPU."""
    if SETTINGS.device == "cuda":
        return [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}),
                "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def bench_raw_ort(model: BenchModel, quick: bool) -> list[dict[str, Any]]:
    """session.run on ready-made (B, 3, S, S) float32 arrays: no decode, no resize, no queue."""
    import onnxruntime as ort

    from service.core.config import default_threads
    from service.core.runtime import session_options

    rows = []
    variants = {"core options": session_options(default_threads()),
                "ORT defaults": ort.SessionOptions()}
    rng = np.random.default_rng(0)
    min_s = (0.5 if quick else 1.5) if model.key != "xresnet50" else (2.0 if quick else 4.0)
    for label, options in variants.items():
        session = ort.InferenceSession(str(model.onnx_path), options, providers=providers())
        for batch in sorted({1, model.tta_views, 8, 32}):
            x = rng.random((batch, 3, model.size, model.size), dtype=np.float32)
            cpu0 = time.process_time()
            times = timed_loop(lambda x=x, s=session: s.run(["probabilities"], {"pixels": x}),
                               min_seconds=min_s, min_iters=3, warmup=2)
            cpu_ms = (time.process_time() - cpu0) * 1000.0 / ((len(times) + 2) * batch)
            rows.append({"runtime": label, "batch": batch,
                         "throughput": batch / float(np.median(times)),
                         **latency_ms(times), "calls": len(times), "cpu_ms_per_image": cpu_ms})
    return rows


# ----------------------------------------------------------------------------- core alone


def bench_core(model: BenchModel, d: Durations, quick: bool) -> list[dict[str, Any]]:
    """InferenceCore.predict driven in-process by the load client's loop (no network)."""
    from service.core import CoreConfig, InferenceCore

    images = images_for(model.key)
    rows = []
    core = InferenceCore.create(CoreConfig(models_dir=model.models_dir, default_model=model.name,
                                           device=SETTINGS.device, poll_interval_s=0)).start()
    try:
        plan = [(False, 1), (True, 1), (False, 32)] + ([] if quick else [(True, 32)])
        for tta, concurrency in plan:
            async def send(image: bytes, tta: bool = tta) -> None:
                await core.predict(image, tta=tta)

            result = asyncio.run(run_load(send, images, concurrency=concurrency,
                                          duration_s=d.measure_s, warmup_s=d.warmup_s))
            rows.append({"tta": tta, **result})
    finally:
        core.stop()
    return rows
