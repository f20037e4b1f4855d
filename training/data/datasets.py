"""Item-level datasets: decode one file into a fixed-size uint8 HWC tensor.

The item stage is deliberately deterministic and cheap to batch: training items are presized
(shorter side to ``presize``, center crop) so a batch can be stacked and then augmented on the
device in one go (training.augment); evaluation items are exactly service.imaging's eval / TTA
views, so validation accuracy is measured on the pixels the service will see.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset

from service.imaging import EvalSpec, TTASpec, eval_view, tta_views
from training.data.cache import decode_training_image, presize_one
from training.data.sources import Items


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    # Pillow hands out read-only arrays; torch wants to own writable memory.
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


class PresizedDataset(Dataset):
    """(uint8 (presize, presize, 3), label) per item, decoded every time it is read
    (``data.cache = "off"``): training.data.cache.presize_one."""

    def __init__(self, items: Items, presize: int, interpolation: str = "bilinear",
                 fit: str = "crop") -> None:
        if presize < 1:
            raise ValueError(f"presize must be >= 1 pixel, got {presize}")
        self.items = items
        self.presize = presize
        self.interpolation = interpolation
        self.fit = fit

    def __len__(self) -> int:
        return len(self.items.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        arr = presize_one(self.items.paths[i], self.presize, self.interpolation, self.fit)
        return _to_tensor(arr), self.items.labels[i]


class CachedDataset(Dataset):
    """Images decoded once (the presized training set, or precomputed validation views):
    batches are gathered by index where the tensors live (host memory, a memory map or the
    GPU), with no per-item Python work.

    ``__getitems__`` hands the DataLoader a whole batch; use ``collate_batch`` as its
    collate_fn.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64, device=self.images.device)
        return self.images[idx], self.labels[idx]


def collate_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """CachedDataset already returns the stacked batch."""
    return batch


class EvalDataset(Dataset):
    """(uint8 (size, size, 3) eval view, or (V, size, size, 3) TTA views, label) per item.

    min_side: ``service.imaging.decode_side(eval_spec, model's TTA spec)``, as every server
    decodes for the model, so the views are the very pixels the service will see.
    """

    def __init__(self, items: Items, eval_spec: EvalSpec, tta: TTASpec | None = None,
                 min_side: int | None = None) -> None:
        self.items = items
        self.eval_spec = eval_spec
        self.tta = tta
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.items.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = decode_training_image(self.items.paths[i], self.min_side)
        if self.tta is None:
            arr = eval_view(img, self.eval_spec)
        else:
            arr = tta_views(img, self.eval_spec, self.tta)
        return _to_tensor(arr), self.items.labels[i]


def precompute_views(source: EvalDataset, *, threads: int = 0) -> CachedDataset:
    """An EvalDataset's views computed once (threaded), for loaders used every epoch: the
    validation set then decodes once per stage instead of once per epoch."""
    n = len(source)
    first, _ = source[0]
    views = torch.empty((n, *first.shape), dtype=torch.uint8)
    views[0] = first

    def fill(i: int) -> None:
        views[i] = source[i][0]

    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        list(pool.map(fill, range(1, n)))
    return CachedDataset(views, torch.as_tensor(source.items.labels, dtype=torch.int64))


def eval_views_nbytes(n_items: int, eval_spec: EvalSpec, tta: TTASpec | None) -> int:
    """Bytes an EvalDataset's views take when precomputed."""
    views = len(tta.views) if tta is not None else 1
    return n_items * views * eval_spec.size * eval_spec.size * 3
