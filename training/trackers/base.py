"""What every experiment tracker shares: when to log (the loop's hook points) and which numbers.

A tracker is a ``Callback``: the loop knows nothing about TensorBoard or MLflow. Each backend
(``tensorboard.py``, ``mlflow.py``, ``csv_logger.py``) implements only ``start``,
``log_scalars``, ``log_report`` and ``close``; this base decides the steps and the values, so
every backend records the same numbers -- the very floats ``HistoryCallback`` writes to
metrics.json.

Steps: epoch scalars use the run's global epoch (1-based, across stages and fine-tune phases,
the same after ``--resume``); per-batch scalars use a global batch counter (exact for an
uninterrupted run; after a resume it restarts at epoch x batches-per-epoch).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.evaluation_summary import EvaluationSummary
from training.learner import Callback, EpochState, Learner

log = logging.getLogger(__name__)

EPOCH_KEYS = ("train_loss", "valid_loss", "accuracy")


def current_lr_mom(learn: Learner) -> tuple[float, float]:
    """The head's (last param group's) LR and momentum (Adam's beta1) right now."""
    group = learn.opt.param_groups[-1]
    mom = group["betas"][0] if "betas" in group else group.get("momentum", math.nan)
    return float(group["lr"]), float(mom)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}; lists of tables (stages) by index."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, v in enumerate(value):
                out.update(flatten(v, f"{name}.{i}."))
        else:
            out[name] = value
    return out


class Tracker(Callback):
    """Base of the experiment trackers: hook points -> ``log_scalars(values, step)``.

    ``epoch_offsets`` maps each phase name to the epochs run before it (from
    ``training.phases.plan_phases``), so a phase's epoch becomes the run's global epoch.
    """

    order = 45  # after HistoryCallback (40) recorded the epoch, before the checkpoint (60)
    name = "tracker"

    def __init__(self, run_dir: Path, recipe: dict[str, Any], epoch_offsets: Mapping[str, int],
                 *, every_n_steps: int = 10, resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.recipe = recipe
        self.epoch_offsets = dict(epoch_offsets)
        self.every_n_steps = every_n_steps
        self.resume = resume
        self.started = False
        self.step: int | None = None
        self.last_epoch = 0

    # -- what a backend implements -----------------------------------------------------------
    def start(self) -> None:
        """Open the run (files, connections); log the recipe as parameters."""

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def log_report(self, report_dir: Path, summary: EvaluationSummary) -> None:
        """The run's report folder (PNGs, JSON) and its final metrics, once training ended."""

    def close(self, status: str = "FINISHED") -> None:
        """Flush and close; ``status`` is FINISHED, FAILED or KILLED."""

    # -- the hook points ---------------------------------------------------------------------
    def global_epoch(self, s: EpochState) -> int:
        if s.phase in self.epoch_offsets:
            return self.epoch_offsets[s.phase] + s.epoch + 1
        return self.last_epoch + 1  # a phase the plan does not know (e.g. fit_one_cycle)

    def before_fit(self, learn: Learner) -> None:
        if not self.started:
            self.start()
            self.started = True

    def before_epoch(self, learn: Learner) -> None:
        if self.step is None:
            self.step = (self.global_epoch(learn.state) - 1) * len(learn.train_dl)

    def after_batch(self, learn: Learner) -> None:
        self.step += 1
        if self.step % self.every_n_steps == 0:
            lr, mom = current_lr_mom(learn)
            self.log_scalars({"step/loss": learn.state.loss.item(), "step/lr": lr,
                              "step/mom": mom}, self.step)

    def after_epoch(self, learn: Learner) -> None:
        s = learn.state
        epoch = self.global_epoch(s)
        lr, _ = current_lr_mom(learn)
        values = {"train_loss": s.train_loss, **{k: s.metrics[k] for k in EPOCH_KEYS[1:]
                                                 if k in s.metrics}, "lr": lr}
        self.log_scalars({f"epoch/{k}": v for k, v in values.items()}, epoch)
        self.last_epoch = epoch

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.run_dir})"
