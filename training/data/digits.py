"""A real, tiny, offline dataset: scikit-learn's bundled handwritten digits as an image folder.

1,797 8x8 grayscale images in 10 classes ship inside scikit-learn, so tests and smoke runs need
no download and exercise exactly the folder path a user's own data takes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)


def make_digits(out_dir: Path) -> Path:
    """Write out_dir/<digit>/<index>.png (8-bit grayscale, 0..16 scaled to 0..255); returns out_dir.

    A single class tree: load_items splits it with its seeded random splitter.
    """
    from sklearn.datasets import load_digits  # scikit-learn is a training-only dependency

    out_dir = Path(out_dir)
    digits = load_digits()
    pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    for name in digits.target_names:
        (out_dir / str(name)).mkdir(parents=True, exist_ok=True)
    for i, (img, target) in enumerate(zip(pixels, digits.target, strict=True)):
        Image.fromarray(img).save(out_dir / str(target) / f"{i}.png")
    logger.debug("wrote %d digit images in %d classes to %s", len(pixels),
                 len(digits.target_names), out_dir)
    return out_dir
