"""MixUp and CutMix: mix a batch with a shuffled copy of itself.

MixUp draws one lambda per image, as fastai's ``MixUp`` does (``lam = max(lam, 1 - lam)``, so
each image stays mostly itself); CutMix one box, hence one lambda, per batch. The loss is the
lambda-weighted loss of both targets (``mixed_loss``, per image when lambda is), so label
smoothing composes with either.

Hand-written rather than torchvision.transforms.v2.MixUp/CutMix: those mix one-hot targets
(soft labels) and draw from the global RNG with one lambda per batch; ours keep integer targets
(label smoothing stays in the loss) and draw from the epoch's generator so a resumed run repeats
its draws exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

# (targets_a, targets_b, lambda of a): a float, or one per image (N,)
MixedTargets = tuple[Tensor, Tensor, "float | Tensor"]


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
    """x_i = lam_i x_i + (1 - lam_i) x_perm(i), lam_i = max(b, 1 - b), b ~ Beta(alpha, alpha)
    per image (fastai: alpha 0.4)."""

    def __init__(self, alpha: float = 0.4) -> None:
        self.alpha = alpha

    def __call__(self, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, MixedTargets]:
        lam = beta_per_image(self.alpha, len(x), gen).to(x.device)
        lam = torch.maximum(lam, 1.0 - lam)
        perm = torch.randperm(len(x), generator=gen, device=gen.device).to(x.device)
        return mix_inputs(x, perm, lam), (y, y[perm], lam)


def beta_per_image(alpha: float, n: int, gen: torch.Generator) -> Tensor:
    """n draws of Beta(alpha, alpha), reproducible from ``gen``.

    torch.distributions takes no generator, so the draws are Marsaglia-Tsang on a CPU generator
    seeded from ``gen`` (one device sync per batch, not one per draw).
    """
    seed = int(torch.randint(2**62, (), generator=gen, device=gen.device))
    cpu = torch.Generator().manual_seed(seed)
    return torch.tensor([_beta(alpha, cpu) for _ in range(n)], dtype=torch.float32)


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


def mix_inputs(x: Tensor, perm: Tensor, lam: float | Tensor) -> Tensor:
    if isinstance(lam, Tensor):
        lam = lam.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return lam * x + (1.0 - lam) * x[perm]


def paste_box(x: Tensor, perm: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    y0, y1, x0, x1 = box
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    return out


def mixed_loss(loss_fn: Callable[[Tensor, Tensor], Tensor], out: Tensor, y_a: Tensor,
               y_b: Tensor, lam: float | Tensor) -> Tensor:
    """The lambda-weighted loss of both targets; per image when lambda is a tensor."""
    if not isinstance(lam, Tensor):
        return lam * loss_fn(out, y_a) + (1.0 - lam) * loss_fn(out, y_b)
    if not isinstance(loss_fn, torch.nn.CrossEntropyLoss):
        raise TypeError("per-image MixUp needs an nn.CrossEntropyLoss (per-sample losses)")
    per_a = _per_image(loss_fn, out, y_a)
    per_b = _per_image(loss_fn, out, y_b)
    lam = lam.to(per_a.dtype)
    return (lam * per_a + (1.0 - lam) * per_b).mean()


def _per_image(loss_fn: torch.nn.CrossEntropyLoss, out: Tensor, y: Tensor) -> Tensor:
    return torch.nn.functional.cross_entropy(out, y, weight=loss_fn.weight, reduction="none",
                                             label_smoothing=loss_fn.label_smoothing)


def build_mixer(mixup_alpha: float, cutmix_alpha: float) -> Mixer | None:
    """None when both are off: the loop then skips mixing entirely."""
    if mixup_alpha > 0 and cutmix_alpha > 0:
        return MixUpOrCutMix(MixUp(mixup_alpha), CutMix(cutmix_alpha))
    if mixup_alpha > 0:
        return MixUp(mixup_alpha)
    if cutmix_alpha > 0:
        return CutMix(cutmix_alpha)
    return None
