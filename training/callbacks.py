"""The callbacks every fit uses: progress display, history, checkpoints, frozen BatchNorm."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from training.checkpoint import Checkpoint, RunFields, save_checkpoint
from training.learner import Callback, Learner
from training.machine import process_cpu_seconds
from training.models.classifier import BN_TYPES

log = logging.getLogger(__name__)


class ProgressCallback(Callback):
    """A progress bar per epoch and one table row per epoch, as fastai prints them."""

    order = 50

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None
        self.header_done = False
        self.smooth: float | None = None

    def before_epoch(self, learn: Learner) -> None:
        if not self.header_done:
            self._write(f"{'phase':<16}{'epoch':>6}{'train_loss':>12}{'valid_loss':>12}"
                        f"{'accuracy':>10}{'img/s':>8}{'time':>8}")
            self.header_done = True
        s = learn.state
        # disable=None: no bar when stderr is not a terminal (a log file gets one line per
        # epoch, not hundreds of carriage-return frames).
        self.bar = tqdm(total=len(learn.train_dl), leave=False,
                        disable=None if self.enabled else True,
                        desc=f"{s.phase} {s.epoch + 1}/{s.n_epochs}", dynamic_ncols=True)

    def after_batch(self, learn: Learner) -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar.update(1)
            if learn.state.iteration % 10 == 0:  # .item() syncs the device: not every batch
                loss = learn.state.loss.item()
                self.smooth = loss if self.smooth is None else 0.9 * self.smooth + 0.1 * loss
                self.bar.set_postfix(loss=f"{self.smooth:.4f}")

    def after_epoch(self, learn: Learner) -> None:
        if self.bar is not None:
            self.bar.close()
        s = learn.state
        self._write(f"{s.phase:<16}{s.epoch + 1:>6}{s.train_loss:>12.4f}"
                    f"{s.metrics['valid_loss']:>12.4f}{s.metrics['accuracy']:>10.4f}"
                    f"{s.images_per_s:>8.0f}{time.perf_counter() - s.epoch_start:>7.1f}s")

    def _write(self, line: str) -> None:
        if self.enabled:
            tqdm.write(line)


def frozen_bn_layers(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers whose affine parameters are all frozen (``freeze_body(train_bn=False)``).

    Layers without affine parameters cannot say whether they are frozen and are left alone.
    """
    out = []
    for m in model.modules():
        params = list(m.parameters(recurse=False))
        if isinstance(m, BN_TYPES) and params and not any(p.requires_grad for p in params):
            out.append(m)
    return out


class BnFreeze(Callback):
    """Frozen BatchNorm layers stay in eval mode while training (fastai's ``BnFreeze``).

    ``Learner.train_one_epoch`` puts the whole model in train mode; without this a frozen body's
    running mean/var would still drift towards the new data. Layers whose parameters train (the
    head, ``train_bn=true``, or after unfreezing) are untouched, so the callback can always run.
    """

    order = -10

    def before_train(self, learn: Learner) -> None:
        for m in frozen_bn_layers(learn.model):
            m.eval()


class HistoryCallback(Callback):
    """Appends one row per epoch to ``history``; the runner writes it to metrics.json."""

    order = 40

    def __init__(self, history: list[dict[str, Any]]) -> None:
        self.history = history

    def after_epoch(self, learn: Learner) -> None:
        s = learn.state
        self.history.append({"phase": s.phase, "epoch": s.epoch + 1, "train_loss": s.train_loss,
                             **s.metrics, "images_per_s": s.images_per_s,
                             "images": s.images, "process_cpu_seconds": process_cpu_seconds(),
                             "seconds": time.perf_counter() - s.epoch_start})


class CheckpointCallback(Callback):
    """Saves ``last.pt`` every epoch (to resume) and ``best.pt`` when the metric improves.

    select="last": ``best.pt`` is simply the latest epoch. The epoch is then not chosen on the
    validation split, so the accuracy measured on that split is an honest estimate; with
    "best" it is optimistic (picked and reported on the same images), which the report says.

    ``describe`` returns the run-level fields (arch, classes, eval spec, progress...) that the
    runner owns; this callback only decides when to write. ``saved_best`` is the best.pt this
    process wrote last (weights copied to the CPU), so the runner can add the final evaluation
    to it without reading the file back.
    """

    order = 60

    def __init__(self, out_dir: Path, metric: str, describe: Callable[[Learner], RunFields],
                 best: float | None = None, enabled: bool = True,
                 select: str = "best") -> None:
        self.out_dir, self.metric, self.describe = Path(out_dir), metric, describe
        self.select = select
        self.higher_is_better = metric != "valid_loss"
        self.best = best if best is not None else (-math.inf if self.higher_is_better else math.inf)
        self.enabled = enabled
        self.saved_best: Checkpoint | None = None

    def improved(self, value: float) -> bool:
        if self.select == "last":
            return True
        return value > self.best if self.higher_is_better else value < self.best

    def after_epoch(self, learn: Learner) -> None:
        value = learn.state.metrics[self.metric]
        is_best = self.improved(value)
        if is_best:
            self.best = value
        if not self.enabled:
            return
        fields = self.describe(learn)
        meta = {"best_metric": self.best, "metrics": dict(learn.state.metrics)}
        if is_best:
            weights = {k: v.detach().to("cpu", copy=True)
                       for k, v in learn.eval_model.state_dict().items()}
            self.saved_best = fields.checkpoint(**meta, model=weights)
            save_checkpoint(self.saved_best, self.out_dir / "best.pt")
            log.info("%s %s %.4f: saved %s", "last epoch" if self.select == "last" else "best",
                     self.metric, value, self.out_dir / "best.pt")
        save_checkpoint(fields.checkpoint(**meta, **learn.state_dict()), self.out_dir / "last.pt")


def write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=float))


class RunClock(Callback):
    """Where the whole run is, across phases and progressive-resizing stages.

    ``step`` counts optimiser steps from the run's start (fit sets it at each phase's start,
    resumes included), ``epoch`` the run's epochs done before this one. It also tells the
    batch augmentation the run's epoch (alternate_flip follows its parity). Whole-run LR
    schedules, Lookahead and StemFreeze read it.
    """

    order = -20

    def __init__(self, total_steps: int, epochs_done: Callable[[], int]) -> None:
        self.total_steps = max(total_steps, 1)
        self.epochs_done = epochs_done
        self.step = 0
        self.epoch = 0

    @property
    def progress(self) -> float:
        return min(self.step / self.total_steps, 1.0)

    def before_epoch(self, learn: Learner) -> None:
        self.epoch = self.epochs_done()
        if hasattr(learn.augment, "epoch"):
            learn.augment.epoch = self.epoch

    def before_batch(self, learn: Learner) -> None:
        self.step += 1


class StemFreeze(Callback):
    """The whitened stem's filters frozen for the first ``weight_epochs`` epochs of the run (-1:
    the whole run, as airbench94) and its bias trained only for the first ``bias_epochs`` (-1:
    all of them; airbench94 freezes it after 3, for speed at no cost in accuracy).

    Runs after each phase's unfreeze (before_epoch), so fine-tuning's freezing cannot undo it.
    """

    order = -15

    def __init__(self, conv: nn.Conv2d, clock: RunClock, weight_epochs: int = -1,
                 bias_epochs: int = -1) -> None:
        self.conv, self.clock = conv, clock
        self.weight_epochs, self.bias_epochs = weight_epochs, bias_epochs

    def before_epoch(self, learn: Learner) -> None:
        e = self.clock.epoch
        self.conv.weight.requires_grad_(0 <= self.weight_epochs <= e)
        if self.conv.bias is not None:
            self.conv.bias.requires_grad_(self.bias_epochs < 0 or e < self.bias_epochs)
