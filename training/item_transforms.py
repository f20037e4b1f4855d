"""An Albumentations pipeline the recipe names (``augment.item_transform = "module:function"``),
for users who already have one: applied to each image of the batch before ``BatchAugment``.

``function()`` returns an ``A.Compose`` (or anything called as ``pipeline(image=HWC uint8
array)["image"]``). Where it runs: images are presized and decoded once per run (the cache),
so per-epoch randomness can only come after it; this stage takes each batch's uint8 images on
the CPU, runs the pipeline image by image in the training process (no DataLoader workers) and
hands the batch back on its device. On a GPU that is a round trip per batch: the batch stage on
the device (training.augment) stays the default and the fast path.

Reproducible: each batch seeds the pipeline (Albumentations 2's ``set_random_seed``) from the
learner's per-epoch generator.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from training.errors import ConfigError

INSTALL_HINT = "pip install -c constraints.txt -e '.[train,albumentations]'"


def load_pipeline(spec: str) -> Callable[..., Any]:
    """Import ``module:function`` and call it; ConfigError naming what is wrong."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"augment.item_transform {spec!r} must look like 'module:function' "
                          "(a function returning an albumentations.Compose)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        hint = f"; install it: {INSTALL_HINT}" if e.name == "albumentations" else (
            " (is its folder on PYTHONPATH?)")
        raise ConfigError(f"augment.item_transform: cannot import {e.name!r}{hint}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"augment.item_transform: {module_name} has no function {attr!r}")
    pipeline = factory()
    if not callable(pipeline):
        raise ConfigError(f"augment.item_transform: {spec}() returned {type(pipeline).__name__}, "
                          "not a pipeline (an albumentations.Compose)")
    return pipeline


class ItemTransform:
    """uint8 (N, H, W, 3) batch -> the same, each image through the named pipeline."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.pipeline = load_pipeline(spec)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if len(x) == 0:
            return x
        if generator is not None and hasattr(self.pipeline, "set_random_seed"):
            gen_device = generator.device
            seed = int(torch.randint(2**31 - 1, (), generator=generator, device=gen_device))
            self.pipeline.set_random_seed(seed)
        images = [self.pipeline(image=np.ascontiguousarray(a))["image"]
                  for a in x.cpu().numpy()]
        shapes = {im.shape for im in images}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[2] != 3:
            raise ConfigError(f"augment.item_transform {self.spec}: images came back with "
                              f"shapes {sorted(shapes)}; a batch needs one (H, W, 3) size: end "
                              "the pipeline with a fixed-size op (A.Resize, A.RandomCrop)")
        if any(im.dtype != np.uint8 for im in images):
            raise ConfigError(f"augment.item_transform {self.spec}: images must stay uint8 "
                              "(leave A.Normalize and ToTensorV2 out: normalisation is in the "
                              "model)")
        return torch.from_numpy(np.stack(images)).to(x.device)

    def __repr__(self) -> str:
        return f"ItemTransform({self.spec!r})"
