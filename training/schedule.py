"""One-cycle schedule (fastai defaults) and discriminative learning rates.

fastai's ``fit_one_cycle``: warm-up for ``pct_start`` of the steps from lr/div to lr, then cosine
annealing to lr/div_final; momentum (Adam's beta1) cycles 0.95 -> 0.85 -> 0.95.

fastai's ``fine_tune`` gives its two one-cycle runs their own shapes: the frozen run warms up for
almost all of it (pct_start 0.99), the unfrozen run warms up for 0.3 of it from lr/5.
"""

from __future__ import annotations

import math

import torch
from torch import nn

DIV = 25.0
DIV_FINAL = 1e5
MOMS = (0.95, 0.85, 0.95)
FINE_TUNE_FROZEN_PCT_START = 0.99  # fine_tune's frozen phase (fit_one_cycle(..., pct_start=0.99))
FINE_TUNE_PCT_START = 0.3  # fine_tune's unfrozen phase: pct_start=0.3 ...
FINE_TUNE_DIV = 5.0  # ... and div=5


def discriminative_lrs(lr: float, n_groups: int, lr_mult: float) -> list[float]:
    """LRs spread geometrically from lr/lr_mult (stem) to lr (head), like fastai's slice(lo, hi)."""
    if n_groups == 1 or lr_mult == 1:
        return [lr] * n_groups
    lo = lr / lr_mult
    step = (lr / lo) ** (1 / (n_groups - 1))
    return [lo * step**i for i in range(n_groups)]


def build_optimizer(groups: list[list[nn.Parameter]], lrs: list[float],
                    weight_decay: float) -> torch.optim.AdamW:
    """AdamW, one parameter group per layer group (frozen parameters get no grad: no step)."""
    param_groups = [{"params": g, "lr": lr} for g, lr in zip(groups, lrs, strict=True) if g]
    return torch.optim.AdamW(param_groups, betas=(MOMS[0], 0.99), eps=1e-5,
                             weight_decay=weight_decay)


def one_cycle(opt: torch.optim.Optimizer, total_steps: int, *, pct_start: float = 0.25,
              div: float = DIV, cycle_momentum: bool = True) -> torch.optim.lr_scheduler.OneCycleLR:
    """From lr/div up to each group's current lr (the peak) and down to lr/DIV_FINAL.

    ``cycle_momentum``: Adam's beta1 cycles with fastai's MOMS; SGD keeps its momentum."""
    max_lrs = [g["lr"] for g in opt.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=max_lrs,
        total_steps=max(total_steps, 1),
        pct_start=pct_start,
        anneal_strategy="cos",
        cycle_momentum=cycle_momentum,
        base_momentum=MOMS[1],
        max_momentum=MOMS[0],
        div_factor=div,
        final_div_factor=DIV_FINAL / div,  # torch's final lr = initial_lr / final_div_factor
    )


def one_cycle_lr_at(step: int, total: int, lr_max: float, pct_start: float = 0.25,
                    div: float = DIV) -> float:
    """The closed form of the schedule (for tests and plots)."""
    warm = pct_start * total - 1
    lo, hi, end = lr_max / div, lr_max, lr_max / DIV_FINAL
    if step <= warm:
        pct = step / warm
        return hi + (lo - hi) / 2 * (math.cos(math.pi * pct) + 1)
    pct = (step - warm) / (total - 1 - warm)
    return end + (hi - end) / 2 * (math.cos(math.pi * pct) + 1)


TRIANGLE_START, TRIANGLE_END = 0.2, 0.07  # airbench94's triangle: 0.2 -> 1 -> 0.07 of the peak


def run_shape(shape: str, progress: float, *, pct_start: float = 0.25, div: float = DIV) -> float:
    """The LR factor (of each group's peak) at ``progress`` in [0, 1] of the WHOLE run.

    "run": the one-cycle's shape (cosine up from 1/div, cosine down to 1/DIV_FINAL) stretched
    over every progressive-resizing stage, so a new stage does not restart the warm-up (a
    restart at 32 px cost the v1 recipe about 2 points). "triangular": airbench94's linear
    triangle, 0.2 -> 1 at pct_start -> 0.07 at the end.
    """
    p = min(max(progress, 0.0), 1.0)
    if shape == "triangular":
        if p <= pct_start:
            return TRIANGLE_START + (1 - TRIANGLE_START) * p / pct_start
        return 1 + (TRIANGLE_END - 1) * (p - pct_start) / (1 - pct_start)
    if shape != "run":
        raise ValueError(f"unknown whole-run schedule {shape!r}; choose 'run' or 'triangular'")
    lo, end = 1 / div, 1 / DIV_FINAL
    if p <= pct_start:
        return 1 + (lo - 1) / 2 * (math.cos(math.pi * p / pct_start) + 1)
    return end + (1 - end) / 2 * (math.cos(math.pi * (p - pct_start) / (1 - pct_start)) + 1)


def whole_run_schedule(opt: torch.optim.Optimizer, shape: str, *, offset: int, total: int,
                       pct_start: float = 0.25,
                       div: float = DIV) -> torch.optim.lr_scheduler.LambdaLR:
    """A phase's scheduler that continues the run's one schedule: step i of this phase is step
    ``offset + i`` of ``total``. Each group's current lr is its peak; momentum stays as set."""
    total = max(total - 1, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: run_shape(shape, (offset + i) / total, pct_start=pct_start, div=div))
