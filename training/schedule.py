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
              div: float = DIV) -> torch.optim.lr_scheduler.OneCycleLR:
    """From lr/div up to each group's current lr (the peak) and down to lr/DIV_FINAL."""
    max_lrs = [g["lr"] for g in opt.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=max_lrs,
        total_steps=max(total_steps, 1),
        pct_start=pct_start,
        anneal_strategy="cos",
        cycle_momentum=True,
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
