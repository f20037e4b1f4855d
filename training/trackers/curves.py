"""The run's own pictures, with or without a tracker: the loss/accuracy curves (fastai's
``plot_loss`` + ``plot_metrics``, LR on a second axis) and the first augmented training batch.

``RunRecorder`` is an always-on callback: it reads the LR and momentum after each batch (no
device sync) and keeps the first augmented batch; ``write_run_pictures`` draws them into the
report folder after training, where the trackers pick them up like any report PNG.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.learner import Callback, Learner
from training.trackers.base import current_lr_mom

log = logging.getLogger(__name__)

SCHEDULE_FILE = "lr_schedule.json"  # [[global epoch (fractional), lr, momentum], ...]
BATCH_IMAGES = 16


class RunRecorder(Callback):
    """Records the LR schedule per batch (to OUTPUT/lr_schedule.json each epoch) and the first
    augmented training batch. A resumed run keeps the schedule up to where it resumed."""

    order = 46

    def __init__(self, run_dir: Path, epoch_offsets: Mapping[str, int], *,
                 resume: bool = False, enabled: bool = True) -> None:
        self.path = Path(run_dir) / SCHEDULE_FILE
        self.epoch_offsets = dict(epoch_offsets)
        self.enabled = enabled
        self.schedule: list[list[float]] = []
        if resume and self.path.is_file():
            self.schedule = json.loads(self.path.read_text())
        self.first_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._trimmed = False

    def _epoch_start(self, learn: Learner) -> float:
        s = learn.state
        return float(self.epoch_offsets.get(s.phase, 0) + s.epoch)

    def before_epoch(self, learn: Learner) -> None:
        if not self._trimmed:  # drop what a resumed run will redo
            start = self._epoch_start(learn)
            self.schedule = [row for row in self.schedule if row[0] <= start]
            self._trimmed = True

    def before_batch(self, learn: Learner) -> None:
        if self.first_batch is None and learn.state.xb is not None:
            xb, yb = learn.state.xb[:BATCH_IMAGES], learn.state.yb[:BATCH_IMAGES]
            self.first_batch = (xb.detach().float().cpu(), yb.detach().cpu())

    def after_batch(self, learn: Learner) -> None:
        s = learn.state
        lr, mom = current_lr_mom(learn)
        x = self._epoch_start(learn) + (s.iteration + 1) / max(len(learn.train_dl), 1)
        self.schedule.append([x, lr, mom])

    def after_epoch(self, learn: Learner) -> None:
        if self.enabled:
            self.path.write_text(json.dumps(self.schedule))


def global_epochs(history: Sequence[Mapping[str, Any]],
                  epoch_offsets: Mapping[str, int]) -> np.ndarray:
    """The run-wide epoch number (1-based) of each metrics.json history row."""
    return np.array([epoch_offsets.get(h["phase"], 0) + h["epoch"] for h in history], float)


def plot_curves(history: Sequence[Mapping[str, Any]], schedule: Sequence[Sequence[float]],
                epoch_offsets: Mapping[str, int], path: Path) -> Path:
    """Train and valid loss per epoch with the LR on a second axis (left), accuracy (right);
    dotted lines where a phase (stage, fine-tune step) begins."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = global_epochs(history, epoch_offsets)
    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax_loss.plot(x, [h["train_loss"] for h in history], "o-", color="tab:blue",
                 label="train loss")
    ax_loss.plot(x, [h["valid_loss"] for h in history], "o-", color="tab:orange",
                 label="valid loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    handles, labels = ax_loss.get_legend_handles_labels()
    if schedule:
        sched = np.asarray(schedule, dtype=float)
        ax_lr = ax_loss.twinx()
        (line,) = ax_lr.plot(sched[:, 0], sched[:, 1], color="tab:gray", alpha=0.6, lw=1)
        ax_lr.set_ylabel("learning rate (head)")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        handles.append(line)
        labels.append("learning rate")
    ax_loss.legend(handles, labels, loc="best", fontsize=8)
    ax_loss.set_title("loss per epoch")
    ax_acc.plot(x, [h["accuracy"] for h in history], "o-", color="tab:green")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("valid accuracy")
    ax_acc.set_title("accuracy per epoch")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        for phase, offset in epoch_offsets.items():
            if offset > 0 and any(h["phase"] == phase for h in history):
                # epoch points sit at the epoch's end: phase k starts at x = offset
                ax.axvline(offset, color="k", ls=":", lw=0.8)
                ax.annotate(phase, (offset, 0.02), xycoords=("data", "axes fraction"),
                            rotation=90, va="bottom", ha="right", fontsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_run_pictures(recorder: RunRecorder, history: Sequence[Mapping[str, Any]],
                       classes: Sequence[str], report_dir: Path) -> list[Path]:
    """report/curves.png and report/train_batch.png (what the model trained on)."""
    from training.show import show_batch

    written = []
    if history:
        written.append(plot_curves(history, recorder.schedule, recorder.epoch_offsets,
                                   report_dir / "curves.png"))
    if recorder.first_batch is not None:
        images, labels = recorder.first_batch
        written.append(show_batch(images, labels, classes, report_dir / "train_batch.png"))
    return written
