"""Where training runs and in what precision: the GPU when there is one, and says which."""

from __future__ import annotations

import logging

import torch

from training.errors import ConfigError
from training.learner import Precision

log = logging.getLogger(__name__)


def select_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA GPU is available; "
                          "use 'auto' or 'cpu'")
    if name != "cpu" and torch.cuda.is_available():
        device = torch.device("cuda")
        log.info("training on GPU: %s", torch.cuda.get_device_name(device))
    else:
        device = torch.device("cpu")
        log.info("training on CPU (%d threads)%s", torch.get_num_threads(),
                 "" if name == "cpu" else "; no CUDA GPU found")
    return device


def select_precision(mode: str, device: torch.device) -> Precision:
    """auto: bf16 where the GPU supports it, else fp16 with a GradScaler; fp32 on the CPU."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return Precision(device.type)
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 and device.type == "cuda" \
        else None
    return Precision(device.type, dtype, scaler)


def use_channels_last(mode: str, device: torch.device) -> bool:
    return mode == "on" or (mode == "auto" and device.type == "cuda")
