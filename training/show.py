"""Look at the data: a PNG grid of images with their labels (fastai's ``show_batch``).

fastbook's advice: check an augmented batch before training -- wrong labels, crops that cut the
object out, or too-strong warps show up here in seconds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


def to_hwc_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """float (N, 3, H, W) in [0, 1] or uint8 (N, H, W, 3) -> uint8 (N, H, W, 3) for plotting."""
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.dtype == np.uint8:
        return arr
    arr = np.clip(arr, 0.0, 1.0).transpose(0, 2, 3, 1)
    return np.rint(arr * 255.0).astype(np.uint8)


def save_image_grid(
    images: torch.Tensor | np.ndarray,
    titles: Sequence[str],
    path: str | Path,
    *,
    ncols: int | None = None,
    cell_inches: float = 1.6,
) -> Path:
    """Write images (float NCHW in [0, 1] or uint8 NHWC) as a titled grid PNG; returns the path."""
    arr = to_hwc_uint8(images)
    n = len(arr)
    if n == 0:
        raise ValueError("no images to show")
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(ncols * cell_inches, nrows * (cell_inches + 0.2)))
    FigureCanvasAgg(fig)
    for i in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.axis("off")
        if i < n:
            # Small images (8x8 digits) look right blown up with nearest-neighbour pixels.
            ax.imshow(arr[i], interpolation="nearest")
            ax.set_title(str(titles[i]), fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    logger.info("wrote %d images to %s", n, out)
    return out


def show_batch(
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    classes: Sequence[str],
    path: str | Path,
    *,
    ncols: int | None = None,
) -> Path:
    """A batch with its class names as titles."""
    titles = [classes[int(y)] for y in labels]
    return save_image_grid(images, titles, path, ncols=ncols)
