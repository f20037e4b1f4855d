"""Training on several devices with ``torchrun``: DistributedDataParallel, NCCL on GPUs, Gloo on
CPUs. A run started without torchrun gets no ``DistContext`` and nothing here changes it.

The contract (docs/distributed.md):

- ``stages[].batch_size`` is per device; the global batch is ``batch_size * world_size``.
- ``train.scale_lr`` scales the recipe's LR for that global batch: "linear" (Goyal et al. 2017,
  the default), "sqrt", or "none". The recipe's ``lr`` stays what one device (and the LR finder)
  found for ``batch_size`` images.
- Training shards come from one seeded permutation per epoch (the single-process order, padded
  to a multiple of the world size and dealt out ``[rank::world]``): same seed, same shards, so
  ``--resume`` on the same number of processes reproduces the uninterrupted run.
- Evaluation is sharded ``[rank::world]`` without padding and summed across ranks, so every
  validation image counts exactly once.
- Rank 0 writes every file and prints every log line and progress bar.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from training.data import DataLoaders, EpochShuffleSampler
from training.errors import ConfigError

log = logging.getLogger(__name__)

LR_SCALING = ("linear", "sqrt", "none")


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun job; passed as an optional object (None: one process)."""

    rank: int
    world_size: int
    local_rank: int
    backend: str  # "nccl" | "gloo"
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.backend == "nccl":
            tdist.barrier(device_ids=[self.device.index])
        else:
            tdist.barrier()

    def sum(self, *values: float) -> tuple[float, ...]:
        """Sum scalars over all ranks in one collective (float64: exact for counts < 2**53)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return tuple(t.tolist())

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics, EMA averages).

        Parameters stay equal under DDP, but each rank's last forward updates its own BN
        statistics; evaluating with rank 0's makes every shard measure the saved model.
        """
        for b in module.buffers():
            tdist.broadcast(b, src=0)

    def gather_rows(self, part: np.ndarray | None) -> np.ndarray | None:
        """The full array on every rank from the shards of ``shard_eval_loader``.

        Rank r holds rows r, r + world, ...; the result is in the original (item) order.
        """
        if part is None:
            return None
        parts: list[Any] = [None] * self.world_size
        tdist.all_gather_object(parts, part)
        return interleave(parts)

    def shard_loaders(self, dls: DataLoaders, seed: int) -> DataLoaders:
        """This rank's share of a stage's loaders: the same datasets and settings, sharded."""
        sampler = DistributedEpochSampler(len(dls.train.dataset), seed=seed, rank=self.rank,
                                          world_size=self.world_size)
        drop_last = dls.train.drop_last
        if drop_last and len(sampler) < (dls.train.batch_size or 1):
            log.warning("%d training images per process for batch size %d: keeping the partial "
                        "batch", len(sampler), dls.train.batch_size)
            drop_last = False
        train = _rebuild(dls.train, sampler, drop_last)
        return DataLoaders(train=train, valid=self.shard_eval_loader(dls.valid),
                           classes=dls.classes)

    def shard_eval_loader(self, loader: DataLoader) -> DataLoader:
        """The in-order evaluation loader restricted to items rank, rank + world, ..."""
        if len(loader.dataset) < self.world_size:
            raise ConfigError(f"{len(loader.dataset)} evaluation image(s) for {self.world_size} "
                              "processes: every process needs at least one; use fewer "
                              "processes or a larger validation set")
        sampler = ShardedEvalSampler(len(loader.dataset), rank=self.rank,
                                     world_size=self.world_size)
        return _rebuild(loader, sampler, drop_last=False)

    def wrap(self, model: nn.Module) -> DistributedDataParallel:
        """A DDP wrapper for the parameters trainable *now*.

        Build it again whenever ``requires_grad`` changes (fine-tune's freeze -> unfreeze): DDP
        only reduces the parameters that were trainable when it was built, and one frozen since
        gets no gradient, which fails the next step. Building it also broadcasts rank 0's weights.
        """
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def lr_factor(self, rule: str) -> float:
        """What the recipe's per-device LR is multiplied by for the global batch."""
        return lr_factor(rule, self.world_size)


def lr_factor(rule: str, world_size: int) -> float:
    if rule not in LR_SCALING:
        raise ConfigError(f"train.scale_lr is {rule!r}; choose one of {list(LR_SCALING)}")
    if rule == "linear":
        return float(world_size)
    if rule == "sqrt":
        return math.sqrt(world_size)
    return 1.0


def interleave(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Inverse of dealing rows out ``[rank::world]`` (every part non-empty: shard_eval_loader)."""
    world = len(parts)
    out = np.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), dtype=parts[0].dtype)
    for r, p in enumerate(parts):
        out[r::world] = p
    return out


class DistributedEpochSampler(EpochShuffleSampler):
    """EpochShuffleSampler's permutation (seed + epoch), padded and dealt out ``[rank::world]``.

    Every rank draws the same permutation, so the shards are disjoint (but for the at most
    ``world - 1`` padding repeats, which keep the step count equal on every rank, as DDP
    needs) and the union is the whole training set.
    """

    def __init__(self, n: int, *, seed: int = 42, rank: int, world_size: int) -> None:
        super().__init__(n, seed=seed)
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)

    def __iter__(self) -> Iterator[int]:
        order = list(super().__iter__())
        total = len(self) * self.world_size
        order += order[: total - len(order)]
        return iter(order[self.rank::self.world_size])


class ShardedEvalSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order, no padding: each image on exactly one rank.

    (DistributedSampler pads with repeats so ranks get equal lengths; summed metrics would
    count those images twice.)
    """

    def __init__(self, n: int, *, rank: int, world_size: int) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))


def _rebuild(loader: DataLoader, sampler: Sampler[int], drop_last: bool) -> DataLoader:
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                      drop_last=drop_last, num_workers=loader.num_workers,
                      pin_memory=loader.pin_memory, persistent_workers=loader.persistent_workers,
                      collate_fn=loader.collate_fn)


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun sets it; 1 when not launched by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def require_single_process(command: str, why: str) -> None:
    """Refuse a command that must not run once per rank (it publishes or reports once)."""
    if launched_world_size() > 1:
        raise ConfigError(f"`training {command}` runs in one process: run it without torchrun "
                          f"({why})")


def init_distributed(device_name: str = "auto") -> DistContext | None:
    """Join the torchrun job described by RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT).

    None when there is no job to join (no torchrun, or a single process): that run is plain.
    GPUs (``device_name`` "auto" or "cuda" with CUDA present) use NCCL and one GPU per local
    rank; otherwise Gloo on the CPU.
    """
    world_size = launched_world_size()
    if world_size <= 1:
        return None
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world_size} is set but {missing} are not: launch with "
                          "torchrun (see docs/distributed.md), or unset WORLD_SIZE")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if device_name == "cuda" and not use_cuda:
        raise ConfigError("train.device is 'cuda' but no CUDA GPU is available; use 'auto' or "
                          "'cpu' (Gloo)")
    if use_cuda:
        n_gpus = torch.cuda.device_count()
        if local_rank >= n_gpus:
            raise ConfigError(f"LOCAL_RANK {local_rank} but this machine has {n_gpus} GPU(s): "
                              f"use torchrun --nproc-per-node {n_gpus} (one process per GPU)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        tdist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        tdist.init_process_group("gloo")
    dist = DistContext(rank, world_size, local_rank, tdist.get_backend(), device)
    if dist.is_main:
        log.info("distributed: %d processes (%s), %s per process", world_size, dist.backend,
                 "one GPU" if use_cuda else "CPU")
    return dist


def cleanup(dist: DistContext | None) -> None:
    if dist is not None and tdist.is_initialized():
        tdist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(device_name: str = "auto") -> Iterator[DistContext | None]:
    """init_distributed ... cleanup, with logging from rank 0 only (other ranks: errors).

    On success the ranks leave together (a barrier), so none exits while rank 0 still writes.
    """
    dist = init_distributed(device_name)
    if dist is not None and not dist.is_main:
        logging.getLogger().setLevel(logging.ERROR)
    try:
        yield dist
        if dist is not None:
            dist.barrier()
    finally:
        cleanup(dist)


def is_main(dist: DistContext | None) -> bool:
    """True in a plain run and on rank 0: the process that writes files and prints."""
    return dist is None or dist.is_main


def convert_sync_bn(model: nn.Module, dist: DistContext | None, enabled: bool) -> nn.Module:
    """SyncBatchNorm (statistics over the global batch) when asked for and possible.

    Only worth it when the per-device batch is small; PyTorch supports it on GPUs only, so a
    Gloo (CPU) run keeps per-device BatchNorm and says so.
    """
    if not enabled or dist is None:
        return model
    if dist.device.type != "cuda":
        log.warning("train.sync_bn: SyncBatchNorm needs GPUs (NCCL); this %s run keeps "
                    "per-process BatchNorm", dist.backend)
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
