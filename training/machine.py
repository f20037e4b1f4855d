"""What a training run cost and where it ran, for metrics.json and model.json.

Wall time alone does not say much on a shared machine: the load average (other work) and the
process's CPU time (its own work) say how much of the machine the run had.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from typing import Any

import torch


def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def describe() -> dict[str, Any]:
    """The machine: CPU model, cores, torch's threads, the accelerator if any."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "torch": torch.__version__, "platform": platform.platform()}


def training_images_per_s(history: list[dict[str, Any]]) -> float | None:
    """All epochs' training images over their training seconds (validation excluded)."""
    rows = [h for h in history if h.get("images") and h.get("images_per_s")]
    seconds = sum(h["images"] / h["images_per_s"] for h in rows)
    return sum(h["images"] for h in rows) / seconds if seconds else None


def start() -> dict[str, float]:
    return {"wall": time.perf_counter(), "cpu": process_cpu_seconds(),
            "load": os.getloadavg()[0]}


def finish(started: dict[str, float]) -> dict[str, Any]:
    """The run's wall and CPU seconds, the 1-minute load average at its start and end."""
    return {"wall_seconds": time.perf_counter() - started["wall"],
            "cpu_seconds": process_cpu_seconds() - started["cpu"],
            "load_average": {"start": started["load"], "end": os.getloadavg()[0],
                             "end_5min": os.getloadavg()[1], "end_15min": os.getloadavg()[2]},
            "machine": describe()}
