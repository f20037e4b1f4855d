"""MixUp and CutMix: mix a batch with a shuffled copy of itself, one lambda per batch.

The loss is the lambda-weighted loss of both targets (``mixed_loss``), so label smoothing
composes with either.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

MixedTargets = tuple[Tensor, Tensor, float]  # (targets_a, targets_b, lambda of a)


def _beta(alpha: float, gen: torch.Generator) -> float:
    """Beta(alpha, alpha) as a ratio of Gammas, drawn from ``gen`` so runs are reproducible."""
    x, y = _gamma(alpha, gen), _gamma(alpha, gen)
    return x / (x + y)


def _gamma(alpha: float, gen: torch.Generator) -> float:
    # torch._standard_gamma takes no generator; Marsaglia-Tsang with our generator instead.
    boost = 1.0
    if alpha < 1.0:
        boost = float(torch.rand((), generator=gen, device=gen.device).item()) ** (1.0 / alpha)
        alpha += 1.0
    d = alpha - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = float(torch.randn((), generator=gen, device=gen.device).item())
        v = (1.0 + c * x) ** 3
        if v <= 0:
            continue
        u = float(torch.rand((), generator=gen, device=gen.device).item())
        if math.log(max(u, 1e-300)) < 0.5 * x * x + d - d * v + d * math.log(v):
            return boost * d * v


class Mixer:
    """Base: ``__call__(x, y, gen) -> (mixed x, (y_a, y_b, lam))``."""

    def __call__(self, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, MixedTargets]:
        raise NotImplementedError


class MixUp(Mixer):
    """x = lam * x + (1 - lam) * x[perm], lam ~ Beta(alpha, alpha) (fastai: alpha 0.4)."""

    def __init__(self, alpha: float = 0.4) -> None:
        self.alpha = alpha

    def __call__(self, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, MixedTargets]:
        lam = _beta(self.alpha, gen)
        perm = torch.randperm(len(x), generator=gen, device=gen.device).to(x.device)
        return mix_inputs(x, perm, lam), (y, y[perm], lam)


class CutMix(Mixer):
    """Paste a random box of x[perm] into x; lam is the kept area (Yun et al. 2019)."""

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def __call__(self, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, MixedTargets]:
        lam = _beta(self.alpha, gen)
        perm = torch.randperm(len(x), generator=gen, device=gen.device).to(x.device)
        h, w = x.shape[-2:]
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy = int(torch.randint(h, (), generator=gen, device=gen.device))
        cx = int(torch.randint(w, (), generator=gen, device=gen.device))
        box = (max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h),
               max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w))
        mixed = paste_box(x, perm, box)
        kept = 1.0 - (box[1] - box[0]) * (box[3] - box[2]) / (h * w)
        return mixed, (y, y[perm], kept)


class MixUpOrCutMix(Mixer):
    """Each batch uses one of the two, chosen with equal probability (timm's switch)."""

    def __init__(self, mixup: MixUp, cutmix: CutMix) -> None:
        self.mixup, self.cutmix = mixup, cutmix

    def __call__(self, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, MixedTargets]:
        use_cutmix = bool(torch.rand((), generator=gen, device=gen.device) < 0.5)
        return (self.cutmix if use_cutmix else self.mixup)(x, y, gen)


def mix_inputs(x: Tensor, perm: Tensor, lam: float) -> Tensor:
    return lam * x + (1.0 - lam) * x[perm]


def paste_box(x: Tensor, perm: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    y0, y1, x0, x1 = box
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    return out


def mixed_loss(loss_fn: Callable[[Tensor, Tensor], Tensor], out: Tensor, y_a: Tensor,
               y_b: Tensor, lam: float) -> Tensor:
    return lam * loss_fn(out, y_a) + (1.0 - lam) * loss_fn(out, y_b)


def build_mixer(mixup_alpha: float, cutmix_alpha: float) -> Mixer | None:
    """None when both are off: the loop then skips mixing entirely."""
    if mixup_alpha > 0 and cutmix_alpha > 0:
        return MixUpOrCutMix(MixUp(mixup_alpha), CutMix(cutmix_alpha))
    if mixup_alpha > 0:
        return MixUp(mixup_alpha)
    if cutmix_alpha > 0:
        return CutMix(cutmix_alpha)
    return None
