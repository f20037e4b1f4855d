"""A small, explicit training loop with named hook points.

Optional features are optional objects (timm's habit): ``mixer`` (MixUp/CutMix) may be None,
``precision`` carries the autocast context and a GradScaler or None, ``ema`` may be None.
Callbacks get the learner as an argument and read its state; they do not write into it
through delegation. Hook names follow fastai: before_fit, before_epoch, before_train (after
``model.train()``), before_batch, after_loss, before_step, after_batch, after_epoch, after_fit.

``dist`` (training.distributed) is None unless launched by torchrun; then the training step runs
through ``train_model`` (a DDP wrapper) and losses and metrics are summed over the ranks, while
``model`` stays the plain module that is evaluated and checkpointed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from training.mixing import Mixer, mixed_loss
from training.schedule import DIV, build_optimizer, one_cycle

if TYPE_CHECKING:
    from training.distributed import DistContext

log = logging.getLogger(__name__)

HOOKS = ("before_fit", "before_epoch", "before_train", "before_batch", "after_loss",
         "before_step", "after_batch", "after_epoch", "after_fit")


class Callback:
    """Override any hook; each receives the Learner. ``order`` sorts callbacks (low first)."""

    order = 0

    def before_fit(self, learn: Learner) -> None: ...
    def before_epoch(self, learn: Learner) -> None: ...
    def before_train(self, learn: Learner) -> None: ...
    def before_batch(self, learn: Learner) -> None: ...
    def after_loss(self, learn: Learner) -> None: ...
    def before_step(self, learn: Learner) -> None: ...
    def after_batch(self, learn: Learner) -> None: ...
    def after_epoch(self, learn: Learner) -> None: ...
    def after_fit(self, learn: Learner) -> None: ...


class CancelFit(Exception):
    """Raised by a callback to stop fitting early (the LR finder uses it)."""


@dataclass
class Precision:
    """Mixed precision on the device: an autocast dtype (or None for fp32) and a GradScaler."""

    device_type: str
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


@dataclass
class EpochState:
    """What the loop knows now; callbacks read it."""

    phase: str = ""  # name of the current one-cycle phase, e.g. "stage1" or "stage1-frozen"
    epoch: int = 0  # epoch within the phase
    n_epochs: int = 0
    iteration: int = 0  # batch within the epoch
    n_iter: int = 0
    xb: Tensor | None = None  # the (augmented) input batch, set before before_batch
    yb: Tensor | None = None
    loss: Tensor | None = None
    train_loss: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)
    epoch_start: float = 0.0
    images_per_s: float = math.nan  # training throughput of the last epoch (no validation)
    images: int = 0  # images the last epoch trained on (this process)


class Learner:
    """Model + data + loss + optimiser; ``fit`` runs epochs of train then validate."""

    def __init__(
        self,
        model: nn.Module,
        train_dl: DataLoader,
        valid_dl: DataLoader,
        *,
        loss_fn: nn.Module,
        augment: Callable[[Tensor, torch.Generator | None], Tensor],
        prepare_valid: Callable[[Tensor], Tensor],
        device: torch.device,
        precision: Precision,
        mixer: Mixer | None = None,
        ema: torch.optim.swa_utils.AveragedModel | None = None,
        channels_last: bool = False,
        callbacks: Sequence[Callback] = (),
        seed: int = 42,
        dist: DistContext | None = None,
    ) -> None:
        self.model = model
        self.train_model: nn.Module = model  # what the training step calls (DDP under torchrun)
        self.dist = dist
        self.train_dl, self.valid_dl = train_dl, valid_dl
        self.loss_fn = loss_fn
        self.augment, self.prepare_valid = augment, prepare_valid
        self.device, self.precision = device, precision
        self.mixer, self.ema = mixer, ema
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.callbacks = sorted(callbacks, key=lambda cb: cb.order)
        self.seed = seed
        self.opt: torch.optim.Optimizer | None = None
        self.sched: torch.optim.lr_scheduler.LRScheduler | None = None
        self.state = EpochState()

    # -- hooks -------------------------------------------------------------------------------
    def _hook(self, name: str) -> None:
        for cb in self.callbacks:
            getattr(cb, name)(self)

    def add_callbacks(self, callbacks: Iterable[Callback]) -> None:
        self.callbacks = sorted([*self.callbacks, *callbacks], key=lambda cb: cb.order)

    def remove_callbacks(self, callbacks: Iterable[Callback]) -> None:
        drop = {id(cb) for cb in callbacks}
        self.callbacks = [cb for cb in self.callbacks if id(cb) not in drop]

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, n_epochs: int, *, phase: str = "fit", start_epoch: int = 0) -> None:
        """Train ``n_epochs`` with the current optimiser and schedule, from ``start_epoch``."""
        assert self.opt is not None and self.sched is not None, "set opt and sched first"
        self.state = EpochState(phase=phase, n_epochs=n_epochs)
        self._hook("before_fit")
        try:
            for epoch in range(start_epoch, n_epochs):
                self.state.epoch = epoch
                self.state.epoch_start = time.perf_counter()
                self._hook("before_epoch")
                self.state.train_loss = self.train_one_epoch(epoch)
                self.state.metrics = self.validate()
                self._hook("after_epoch")
        except CancelFit:
            log.debug("fit cancelled in phase %s", phase)
        finally:
            self._hook("after_fit")

    def fit_one_cycle(self, n_epochs: int, lr_max: float | Sequence[float], *,
                      weight_decay: float = 0.01, pct_start: float = 0.25,
                      div: float = DIV, phase: str = "fit") -> None:
        """fastai's ``fit_one_cycle``: a fresh AdamW over the trainable parameters, LR warm-up
        from lr_max/div then cosine annealing to lr_max/1e5, momentum 0.95 -> 0.85 -> 0.95.

        ``lr_max`` is one LR, or one per parameter group (discriminative LRs, stem to head)
        of a model with ``layer_groups()``.
        """
        lrs = [lr_max] if isinstance(lr_max, int | float) else list(lr_max)
        groups = (self.model.layer_groups() if len(lrs) > 1
                  else [list(self.model.parameters())])
        if len(groups) != len(lrs):
            raise ValueError(f"{len(lrs)} learning rates for {len(groups)} layer groups")
        self.opt = build_optimizer(groups, lrs, weight_decay)
        self.sched = one_cycle(self.opt, n_epochs * len(self.train_dl), pct_start=pct_start,
                               div=div)
        self.fit(n_epochs, phase=phase)

    def epoch_generator(self, epoch: int) -> torch.Generator:
        """Every random draw of an epoch comes from (seed, phase, epoch): resumable exactly.

        The sampler's permutation is the same on every rank (it deals out the shards); the
        augmentation and MixUp draws are offset by the rank so ranks do not repeat each other.
        """
        seed = zlib.crc32(f"{self.seed}/{self.state.phase}/{epoch}".encode()) & 0x7FFF_FFFF
        rank_seed = seed + (self.dist.rank if self.dist is not None else 0)
        torch.manual_seed(rank_seed)
        sampler = getattr(self.train_dl, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(seed)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(rank_seed)
        return gen

    def train_one_epoch(self, epoch: int) -> float:
        self.model.train()
        self._hook("before_train")  # e.g. BnFreeze puts frozen BatchNorm layers back in eval
        gen = self.epoch_generator(epoch)
        total, count = torch.zeros((), device=self.device), 0
        self.state.n_iter = len(self.train_dl)
        started = time.perf_counter()
        for i, (xb, yb) in enumerate(self.train_dl):
            self.state.iteration = i
            xb = self.augment(xb.to(self.device, non_blocking=True), gen)
            xb = xb.contiguous(memory_format=self.memory_format)
            yb = yb.to(self.device, non_blocking=True)
            self.state.xb, self.state.yb = xb, yb
            self._hook("before_batch")
            loss = self._train_step(xb, yb, gen)
            total += loss.detach() * len(yb)
            count += len(yb)
            self._hook("after_batch")
        # training images per second of this process: data + augmentation + step, no validation
        self.state.images_per_s = count / max(time.perf_counter() - started, 1e-9)
        self.state.images = count
        if self.dist is not None:
            return _ratio(*self.dist.sum(total.item(), count))
        return (total / max(count, 1)).item()

    def _train_step(self, xb: Tensor, yb: Tensor, gen: torch.Generator) -> Tensor:
        targets: tuple[Tensor, Tensor, float] | None = None
        if self.mixer is not None:
            xb, targets = self.mixer(xb, yb, gen)
        with self.precision.autocast():
            out = self.train_model(xb)
            if targets is None:
                loss = self.loss_fn(out, yb)
            else:
                loss = mixed_loss(self.loss_fn, out, *targets)
        self.state.loss = loss
        self._hook("after_loss")
        self.opt.zero_grad(set_to_none=True)
        scaler = self.precision.scaler
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(self.opt)
            self._hook("before_step")
            scaler.step(self.opt)
            scaler.update()
        else:
            loss.backward()
            self._hook("before_step")
            self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return loss

    @property
    def eval_model(self) -> nn.Module:
        """The weights evaluation uses: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        model = self.eval_model
        model.eval()
        if self.dist is not None:
            self.dist.broadcast_buffers(model)
        loss_sum, correct, n = 0.0, 0, 0
        for xb, yb in self.valid_dl:
            xb = self.prepare_valid(xb.to(self.device)).contiguous(memory_format=self.memory_format)
            yb = yb.to(self.device)
            with self.precision.autocast():
                out = model(xb)
            loss_sum += nn.functional.cross_entropy(out.float(), yb, reduction="sum").item()
            correct += (out.argmax(1) == yb).sum().item()
            n += len(yb)
        if self.dist is not None:  # each rank saw its own unpadded shard: sums are exact
            loss_sum, correct, n = self.dist.sum(loss_sum, correct, n)
        return {"valid_loss": _ratio(loss_sum, n), "accuracy": _ratio(correct, n),
                "n_valid": int(n)}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume mid-run (weights, optimiser, schedule position)."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.opt.state_dict() if self.opt is not None else None,
            "scheduler": self.sched.state_dict() if self.sched is not None else None,
            "scaler": self.precision.scaler.state_dict() if self.precision.scaler else None,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        if self.ema is not None and sd.get("ema") is not None:
            self.ema.load_state_dict(sd["ema"])
        if self.opt is not None and sd.get("optimizer") is not None:
            self.opt.load_state_dict(sd["optimizer"])
        if self.sched is not None and sd.get("scheduler") is not None:
            self.sched.load_state_dict(sd["scheduler"])
        if self.precision.scaler is not None and sd.get("scaler") is not None:
            self.precision.scaler.load_state_dict(sd["scaler"])


def _ratio(total: float, count: float) -> float:
    return total / max(count, 1)
