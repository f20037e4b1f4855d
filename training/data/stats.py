"""Normalisation statistics.

ImageNet's are right for ImageNet-pretrained bodies; a model trained from scratch on other data
can use its own (fastbook ch. 7: normalise with the statistics the model will be trained with).
The numbers end up in Classifier.normalize, i.e. inside the exported graph.
"""

from __future__ import annotations

import logging

import numpy as np

from service.imaging import decode_image, resize_center_crop
from training.data.sources import DataSplit

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def compute_stats(
    split: DataSplit, *, presize: int, max_images: int = 2000, seed: int = 0
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel (mean, std) of the presized training images in [0, 1].

    At most ``max_images`` images, a seeded random subset, so the numbers are reproducible and
    the cost is bounded on large datasets.
    """
    paths = split.train.paths
    if len(paths) > max_images:
        idx = np.sort(np.random.default_rng(seed).choice(len(paths), max_images, replace=False))
        paths = [paths[i] for i in idx]
    total = np.zeros(3, np.float64)
    total_sq = np.zeros(3, np.float64)
    count = 0
    for p in paths:
        arr = resize_center_crop(decode_image(p), presize, presize).reshape(-1, 3)
        x = arr.astype(np.float64) / 255.0
        total += x.sum(axis=0)
        total_sq += (x * x).sum(axis=0)
        count += x.shape[0]
    if count == 0:
        raise ValueError("compute_stats needs at least one training image")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std = np.maximum(std, 1e-3)  # a constant channel (grayscale digits' background) must not /0
    logger.info("stats over %d images: mean %s std %s", len(paths), mean.round(4), std.round(4))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)  # type: ignore[return-value]
