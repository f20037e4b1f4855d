"""The learning-rate finder (Smith 2015, as fastai's ``lr_find``).

Train for a bounded number of mini-batches while the LR grows exponentially, stop once the
smoothed loss diverges, put the weights back, and suggest LRs from the loss curve with fastai's
four rules: minimum/10, steepest slope, valley and slide.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from training.errors import ConfigError, DataError
from training.learner import Callback, CancelFit, Learner

log = logging.getLogger(__name__)

MIN_BATCHES = 12  # the suggestions trim 5 points at each end and need a curve in between


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed
    suggestions: dict[str, float]  # minimum, steep, valley, slide

    def to_dict(self) -> dict:
        return {"lrs": self.lrs, "losses": self.losses, "suggestions": self.suggestions}


class _ExponentialLR(Callback):
    """Sets the LR before each batch, records the smoothed loss, cancels on divergence."""

    def __init__(self, start_lr: float, end_lr: float, num_it: int, stop_div: bool,
                 progress: bool = True) -> None:
        self.start_lr, self.end_lr, self.num_it, self.stop_div = start_lr, end_lr, num_it, stop_div
        # one bar over the whole search (disable=None: none when stderr is not a terminal)
        self.bar = tqdm(total=num_it, desc="lr_find", leave=False, dynamic_ncols=True,
                        disable=None if progress else True)
        self.step = 0
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.avg = 0.0
        self.best = math.inf
        self.diverged = False

    def lr_at(self, i: int) -> float:
        return self.start_lr * (self.end_lr / self.start_lr) ** (i / max(self.num_it - 1, 1))

    def before_batch(self, learn: Learner) -> None:
        for g in learn.opt.param_groups:
            g["lr"] = self.lr_at(self.step)

    def after_batch(self, learn: Learner) -> None:
        loss = learn.state.loss.item()
        self.avg = 0.98 * self.avg + 0.02 * loss
        smooth = self.avg / (1 - 0.98 ** (self.step + 1))
        self.lrs.append(self.lr_at(self.step))
        self.losses.append(smooth)
        self.best = min(self.best, smooth)
        self.step += 1
        if not self.bar.disable:
            self.bar.update(1)
            self.bar.set_postfix(lr=f"{self.lrs[-1]:.1e}", loss=f"{smooth:.3f}")
        if self.step >= self.num_it:
            raise CancelFit
        if self.stop_div and (not math.isfinite(smooth) or smooth > 4 * self.best):
            self.diverged = True
            raise CancelFit


class _ConstantSchedule:
    """The finder sets the LR itself; the learner's sched.step() must not override it."""

    def step(self) -> None: ...
    def state_dict(self) -> dict:
        return {}


def lr_find(learn: Learner, *, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100,
            stop_div: bool = True, weight_decay: float = 0.01,
            progress: bool = True) -> LRFindResult:
    """Run the finder on ``learn`` and restore its weights afterwards.

    Reproducible: every random draw comes from the learner's seed (``Learner.epoch_generator``);
    the caller seeds the model's initialisation (``run_lr_find`` does).

    Raises ConfigError when ``num_it`` is too small or the loss diverged before MIN_BATCHES
    batches (start_lr too high), DataError when the training data gave too few batches.
    """
    from training.schedule import build_optimizer

    if num_it < MIN_BATCHES:
        raise ConfigError(f"the LR finder needs at least {MIN_BATCHES} mini-batches to suggest "
                          f"an LR; raise --num-it (got {num_it})")

    saved = copy.deepcopy(learn.model.state_dict())
    saved_opt, saved_sched = learn.opt, learn.sched
    groups = [[p for p in learn.model.parameters() if p.requires_grad]]
    learn.opt = build_optimizer(groups, [start_lr], weight_decay)
    learn.sched = _ConstantSchedule()
    finder = _ExponentialLR(start_lr, end_lr, num_it, stop_div, progress)
    learn.add_callbacks([finder])
    n_epochs = math.ceil(num_it / max(len(learn.train_dl), 1))
    original_validate = learn.validate
    learn.validate = lambda: {"valid_loss": math.nan, "accuracy": math.nan}  # not needed here
    try:
        learn.fit(n_epochs, phase="lr_find")
    finally:
        finder.bar.close()
        learn.validate = original_validate
        learn.remove_callbacks([finder])
        learn.model.load_state_dict(saved)
        learn.opt, learn.sched = saved_opt, saved_sched
    n = len(finder.lrs)
    if n < MIN_BATCHES and finder.diverged:
        raise ConfigError(
            f"the loss diverged after {n} mini-batches (at lr {finder.lrs[-1]:.2e}), before the "
            f"{MIN_BATCHES} the LR finder needs; lower --start-lr (got {start_lr:.2e})")
    if n < MIN_BATCHES:
        raise DataError(
            f"the LR finder ran only {n} mini-batches ({len(learn.train_dl)} per epoch), fewer "
            f"than the {MIN_BATCHES} it needs; add training images or lower the first stage's "
            "batch_size")
    return LRFindResult(finder.lrs, finder.losses, suggest(finder.lrs, finder.losses))


def suggest(lrs: list[float], losses: list[float], skip_start: int = 5,
            skip_end: int = 5) -> dict[str, float]:
    """fastai's four suggestion rules on the (trimmed) loss curve."""
    lr = np.asarray(lrs[skip_start:len(lrs) - skip_end])
    loss = np.asarray(losses[skip_start:len(losses) - skip_end])
    finite = np.isfinite(loss)
    lr, loss = lr[finite], loss[finite]
    log_lr = np.log(lr)
    grads = (loss[1:] - loss[:-1]) / (log_lr[1:] - log_lr[:-1])
    return {
        "minimum": float(lr[np.argmin(loss)] / 10),
        "steep": float(lr[np.argmin(grads) + 1]),
        "valley": _valley(lr, loss),
        "slide": _slide(lr, loss),
    }


def _valley(lrs: np.ndarray, losses: np.ndarray) -> float:
    """Middle of the longest decreasing run of the loss (fastai's ``valley``)."""
    n = len(losses)
    run = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
            if run[max_end] < run[i]:
                max_end = i
                max_start = max_end - run[max_end]
    sections = (max_end - max_start) / 3
    return float(lrs[max_start + int(sections) + int(sections / 2)])


def _slide(lrs: np.ndarray, losses: np.ndarray, lr_diff: int = 15, thresh: float = 0.005) -> float:
    """Walk left from the divergence until the slope flattens (fastai's ``slide``)."""
    grad = np.gradient(losses)
    r_idx = -1
    l_idx = r_idx - lr_diff
    local_min_lr = lrs[l_idx] if len(lrs) > lr_diff else lrs[0]
    while l_idx >= -len(losses) and abs(grad[r_idx] - grad[l_idx]) > thresh:
        local_min_lr = lrs[l_idx]
        r_idx -= 1
        l_idx -= 1
    return float(local_min_lr)


SUGGESTIONS = ("minimum", "steep", "valley", "slide")
DEFAULT_SUGGESTION = "valley"  # fastai's default since 2.5


def plot_lr_find(result: LRFindResult, path: Path, *, use: str = DEFAULT_SUGGESTION,
                 recipe_lr: float | None = None) -> Path:
    """LR (log scale) vs smoothed loss, each suggestion marked; the one to use (``use``) is
    drawn as a line and named in the title, beside the recipe's current LR (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.plot(result.lrs, result.losses, color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    lrs, losses = np.log(result.lrs), np.asarray(result.losses)
    markers = {"minimum": "o", "steep": "s", "valley": "D", "slide": "^"}
    for name, lr in result.suggestions.items():
        y = float(np.interp(np.log(lr), lrs, losses))
        chosen = name == use
        ax.plot([lr], [y], markers[name], markersize=11 if chosen else 7,
                markeredgecolor="k" if chosen else None,
                label=f"{name}: {lr:.2e}" + ("  <- used" if chosen else ""))
    used = result.suggestions[use]
    ax.axvline(used, color="tab:red", lw=1.2)
    title = f"LR finder: use {use} = {used:.2e}"
    if recipe_lr is not None:
        ax.axvline(recipe_lr, color="k", ls="--", lw=1, label=f"recipe's lr: {recipe_lr:.2e}")
        title += f" (recipe's stages[0].lr: {recipe_lr:.2e})"
    finite = losses[np.isfinite(losses)]
    if finite.size:
        ax.set_ylim(finite.min() - 0.1 * abs(finite.min()), min(finite.max(), 4 * finite.min()))
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
