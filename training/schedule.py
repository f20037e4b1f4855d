"""One-cycle schedule (fastai defaults) and discriminative learning rates.

fastai's ``fit_one_cycle``: warm-up for ``pct_start`` of the steps from lr/div to lr, then cosine
annealing to lr/div_final; momentum (Adam's beta1) cycles 0.95 -> 0.85 -> 0.95.
"""

from __future__ import annotations

import math

import torch
from torch import nn

DIV = 25.0
DIV_FINAL = 1e5
MOMS = (0.95, 0.85, 0.95)


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


def one_cycle(opt: torch.optim.Optimizer, total_steps: int, *,
              pct_start: float = 0.25) -> torch.optim.lr_scheduler.OneCycleLR:
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
        div_factor=DIV,
        final_div_factor=DIV_FINAL / DIV,  # torch's final lr = initial_lr / final_div_factor
    )


def one_cycle_lr_at(step: int, total: int, lr_max: float, pct_start: float = 0.25) -> float:
    """The closed form of the schedule (for tests and plots)."""
    warm = pct_start * total - 1
    lo, hi, end = lr_max / DIV, lr_max, lr_max / DIV_FINAL
    if step <= warm:
        pct = step / warm
        return hi + (lo - hi) / 2 * (math.cos(math.pi * pct) + 1)
    pct = (step - warm) / (total - 1 - warm)
    return end + (hi - end) / 2 * (math.cos(math.pi * pct) + 1)
