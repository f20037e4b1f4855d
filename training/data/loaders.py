"""DataLoaders for training (presized uint8 batches, seeded per-epoch shuffle) and evaluation.

Batches stay uint8 NHWC until they reach the device: 4x less to copy than float32, and the
random augmentation (training.augment.BatchAugment) or the plain /255 conversion
(training.augment.to_float_nchw) happens there, on the whole batch at once.

With a presized set (training.data.cache) the training loader gathers batches from it and
decodes nothing; the validation views are computed once per stage when they fit in
``EVAL_CACHE_BYTES``. So only the first epoch of a run decodes files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Sampler

from service.imaging import EvalSpec, TTASpec
from training.data.cache import PresizedImages
from training.data.datasets import (
    CachedDataset,
    EvalDataset,
    PresizedDataset,
    collate_batch,
    eval_views_nbytes,
    precompute_views,
)
from training.data.sources import DataSplit, Items
from training.errors import DataError

logger = logging.getLogger(__name__)

EVAL_CACHE_BYTES = 2 << 30  # validation views kept in memory for a stage up to this size


class EpochShuffleSampler(Sampler[int]):
    """A random permutation seeded with ``seed + epoch``, so a resumed run sees the same order.

    Call ``set_epoch(epoch)`` before each epoch, as with DistributedSampler. If it is not called,
    each new iteration advances the epoch by one, so orders still differ between epochs.
    """

    def __init__(self, n: int, seed: int = 42) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        self.epoch += 1
        return iter(torch.randperm(self.n, generator=g).tolist())


@dataclass
class DataLoaders:
    """The train loader (uint8 (N, presize, presize, 3)) and the valid loader (uint8 eval views)."""

    train: DataLoader
    valid: DataLoader
    classes: list[str]


def build_dataloaders(
    split: DataSplit, *, size: int, batch_size: int, presize: int, eval_spec: EvalSpec,
    tta: TTASpec | None = None, num_workers: int = 0, seed: int = 42, drop_last: bool = True,
    valid_batch_size: int | None = None, pin_memory: bool | None = None,
    presized: PresizedImages | None = None, min_side: int | None = None,
    presize_fit: str = "crop",
) -> DataLoaders:
    """Loaders for one progressive-resizing stage.

    size: the training side after augmentation (pixels); only checked against presize here,
        since the crop to ``size`` happens on the device.
    presize: item-stage side (pixels), larger than size (fastai: 460 for 224) so the random
        crop, rotation and zoom have real pixels to work with.
    valid_batch_size: images per valid batch; default 2 * batch_size (no gradients), divided by
        the number of TTA views when tta is given.
    drop_last: drop the ragged last training batch (a batch of 1 breaks BatchNorm); ignored,
        with a warning, when the training set is smaller than one batch.
    presized: the training split decoded once (training.data.cache.build_presized); without
        it every epoch decodes every file again.
    min_side: ``service.imaging.decode_side`` of the model, for the validation decode.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if presize < size:
        logger.warning("presize %d is smaller than the training size %d; augmentation will "
                       "upsample", presize, size)
    if drop_last and len(split.train) < batch_size:
        logger.warning("only %d training images for batch size %d: keeping the partial batch",
                       len(split.train), batch_size)
        drop_last = False
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    train = _train_loader(split.train, presized, batch_size=batch_size, presize=presize,
                          eval_spec=eval_spec, presize_fit=presize_fit, seed=seed,
                          drop_last=drop_last, num_workers=num_workers, pin_memory=pin_memory)
    if valid_batch_size is None:
        valid_batch_size = max(1, 2 * batch_size // (len(tta.views) if tta else 1))
    valid = make_eval_loader(
        split.valid, eval_spec=eval_spec, tta=tta, batch_size=valid_batch_size,
        num_workers=num_workers, pin_memory=pin_memory, min_side=min_side,
        precompute=presized is not None,
    )
    return DataLoaders(train=train, valid=valid, classes=list(split.classes))


def _train_loader(items: Items, presized: PresizedImages | None, *, batch_size: int,
                  presize: int, eval_spec: EvalSpec, presize_fit: str, seed: int,
                  drop_last: bool, num_workers: int, pin_memory: bool) -> DataLoader:
    """Shuffled (seed + epoch) batches: gathered from the presized set, or decoded per epoch."""
    sampler = EpochShuffleSampler(len(items), seed=seed)
    if presized is not None:
        on_device = presized.images.device.type != "cpu"
        return DataLoader(CachedDataset(presized.images, presized.labels),
                          batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          collate_fn=collate_batch, num_workers=0,
                          pin_memory=pin_memory and not on_device)
    return DataLoader(
        PresizedDataset(items, presize, eval_spec.interpolation, presize_fit),
        batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=num_workers,
        pin_memory=pin_memory, persistent_workers=num_workers > 0,
    )


def make_eval_loader(
    items: Items,
    *,
    eval_spec: EvalSpec,
    tta: TTASpec | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    min_side: int | None = None,
    precompute: bool = False,
) -> DataLoader:
    """In-order batches of (uint8 (N, size, size, 3) or (N, V, size, size, 3), int64 labels).

    precompute: compute every view once now (when they fit in EVAL_CACHE_BYTES), for a loader
    that is iterated every epoch.
    """
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    dataset = EvalDataset(items, eval_spec, tta, min_side)
    if precompute and len(items) and eval_views_nbytes(len(items), eval_spec, tta) \
            <= EVAL_CACHE_BYTES:
        return DataLoader(precompute_views(dataset), batch_size=batch_size, shuffle=False,
                          drop_last=False, collate_fn=collate_batch, pin_memory=pin_memory)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
