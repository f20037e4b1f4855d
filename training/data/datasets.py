"""Item-level datasets: decode one file into a fixed-size uint8 HWC tensor.

The item stage is deliberately deterministic and cheap to batch: training items are presized
(shorter side to ``presize``, center crop) so a batch can be stacked and then augmented on the
device in one go (training.augment); evaluation items are exactly service.imaging's eval / TTA
views, so validation accuracy is measured on the pixels the service will see.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from service.imaging import (
    EvalSpec,
    ImageDecodeError,
    ImageTooLargeError,
    TTASpec,
    decode_image,
    eval_view,
    resize_center_crop,
    tta_views,
)
from training.data.sources import Items
from training.errors import DataError


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    # Pillow hands out read-only arrays; torch wants to own writable memory.
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def _decode(path: Path) -> Image.Image:
    try:
        return decode_image(path)
    except (ImageDecodeError, ImageTooLargeError) as e:
        # Only reachable with check_images=False: load_items would have skipped the file.
        raise DataError(f"cannot read training image {path}: {e}") from e


class PresizedDataset(Dataset):
    """(uint8 (presize, presize, 3), label) per item: decode_image + resize_center_crop."""

    def __init__(self, items: Items, presize: int, interpolation: str = "bilinear") -> None:
        if presize < 1:
            raise ValueError(f"presize must be >= 1 pixel, got {presize}")
        self.items = items
        self.presize = presize
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self.items.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = _decode(self.items.paths[i])
        arr = resize_center_crop(img, self.presize, self.presize, self.interpolation)
        return _to_tensor(arr), self.items.labels[i]


class EvalDataset(Dataset):
    """(uint8 (size, size, 3) eval view, or (V, size, size, 3) TTA views, label) per item."""

    def __init__(self, items: Items, eval_spec: EvalSpec, tta: TTASpec | None = None) -> None:
        self.items = items
        self.eval_spec = eval_spec
        self.tta = tta

    def __len__(self) -> int:
        return len(self.items.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = _decode(self.items.paths[i])
        if self.tta is None:
            arr = eval_view(img, self.eval_spec)
        else:
            arr = tta_views(img, self.eval_spec, self.tta)
        return _to_tensor(arr), self.items.labels[i]
