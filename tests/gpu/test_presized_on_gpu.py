"""On a GPU the presized training set lives on the device and batches are gathered there: an
epoch copies nothing from the host."""

from __future__ import annotations

from pathlib import Path

import torch

from training.data import load_items
from training.data.cache import build_presized
from training.data.datasets import CachedDataset, collate_batch


def test_presized_set_moves_to_the_gpu_and_batches_are_gathered_there(gpu_digits_dir: Path):
    items = load_items(gpu_digits_dir, valid_pct=0.0).train
    presized = build_presized(items, 24, progress=False).to(torch.device("cuda"))
    assert presized.images.is_cuda and presized.labels.is_cuda
    loader = torch.utils.data.DataLoader(CachedDataset(presized.images, presized.labels),
                                         batch_size=32, shuffle=True,
                                         collate_fn=collate_batch)
    xb, yb = next(iter(loader))
    assert xb.is_cuda and yb.is_cuda and xb.dtype == torch.uint8 and xb.shape == (32, 24, 24, 3)
