"""torchvision v2's learned/random augmentation policies and RandomErasing, as recipe options
applied after ``BatchAugment``'s crop/affine/lighting, on the batch's device.

Order as in timm's and torchvision's reference train presets: crop + flip, then the policy
(RandAugment, TrivialAugmentWide or AutoAugment's ImageNet policy), then RandomErasing. Each image
gets its own draw (a v2 transform given a whole batch applies one op to all of it), so the
batch is walked image by image; the ops themselves run on the tensor's device (CUDA included).
Randomness comes from torch's global generator, which ``Learner.epoch_generator`` seeds per
epoch: a seeded run is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from training.config import POLICIES

MAX_MAGNITUDE = 30  # RandAugment's num_magnitude_bins - 1 (torchvision's default 31 bins)


def build_policy(name: str, magnitude: int = 9, num_ops: int = 2) -> Callable[[Tensor], Tensor]:
    """A torchvision v2 policy transform for one (3, H, W) float image in [0, 1]."""
    from torchvision.transforms import v2

    if name == "randaugment":
        return v2.RandAugment(num_ops=num_ops, magnitude=magnitude,
                              num_magnitude_bins=MAX_MAGNITUDE + 1)
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    raise ValueError(f"unknown auto_augment policy {name!r}; choose one of {list(POLICIES)}")


class BatchPolicy:
    """float (N, 3, H, W) in [0, 1] -> the same shape, each image through the policy and then
    RandomErasing (probability ``erasing``, erased pixels set to random noise as timm does)."""

    def __init__(self, policy: str = "none", *, magnitude: int = 9, erasing: float = 0.0) -> None:
        from torchvision.transforms import v2

        self.name = policy
        self.policy = None if policy == "none" else build_policy(policy, magnitude)
        self.erase = v2.RandomErasing(p=erasing, value="random") if erasing > 0 else None

    @property
    def active(self) -> bool:
        return self.policy is not None or self.erase is not None

    def __call__(self, x: Tensor) -> Tensor:
        if not self.active or len(x) == 0:
            return x
        images = list(x.unbind(0))
        if self.policy is not None:
            images = [self.policy(img) for img in images]
        if self.erase is not None:
            images = [self.erase(img) for img in images]
        return torch.stack(images).clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"BatchPolicy({self.name!r}, erasing={self.erase is not None})"


def batch_policy_for(cfg: object) -> BatchPolicy | None:
    """The BatchPolicy an AugmentConfig asks for, or None (no extra work per batch)."""
    policy = BatchPolicy(getattr(cfg, "auto_augment", "none"),
                         magnitude=getattr(cfg, "auto_augment_magnitude", 9),
                         erasing=getattr(cfg, "random_erasing", 0.0))
    return policy if policy.active else None
