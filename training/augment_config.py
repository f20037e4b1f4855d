"""The recipe's [augment] section: what the batch augmentation on the device does
(``training/augment.py``), as a dataclass that imports no torch (``training.config`` reads and
checks a recipe with it alone)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

POLICIES = ("none", "randaugment", "trivialaugment", "autoaugment")


@dataclass
class AugmentConfig:
    """fastai ``aug_transforms`` defaults; each transform is off at its neutral value.

    min_scale: smallest crop area as a fraction of the image (1.0 turns the random crop off).
    max_aspect: crop aspect ratios (width / height) range over [1 / max_aspect, max_aspect],
        log-uniform (torchvision's RandomResizedCrop: 4/3).
    flip / flip_vert: mirror left-right / top-bottom with probability 0.5.
    alternate_flip: with flip, mirror each image on alternate epochs instead of at random
        (airbench94's alternating flip): over any two epochs the network sees both sides of
        every image, where random flips show ~1/4 of them the same side twice.
    max_rotate: degrees, uniform in [-max_rotate, max_rotate].
    max_zoom, min_zoom: zoom by a factor uniform in [min_zoom, max_zoom] about a random point
        (fastai's ``min_zoom``: below 1 zooms out, the border filled by reflection).
    max_translate: shift by up to this fraction of the side in x and y, uniform, reflection at
        the border (the CIFAR standard "pad 4 and crop" is 0.125 at 32 px).
    max_warp: perspective warp magnitude (normalised coordinates), uniform in [-max, max].
    max_lighting: brightness and contrast change (0.2 = +-20% around neutral).
    p_affine: probability of each of rotate / zoom / warp, per image.
    p_lighting: probability of each of brightness / contrast, per image.
    """

    min_scale: float = 0.35
    max_aspect: float = 4 / 3
    flip: bool = True
    flip_vert: bool = False
    alternate_flip: bool = False
    max_rotate: float = 10.0
    max_zoom: float = 1.1
    min_zoom: float = 1.0
    max_translate: float = 0.0
    max_warp: float = 0.2
    max_lighting: float = 0.2
    p_affine: float = 0.75
    p_lighting: float = 0.75
    # after the above, per image (training/auto_augment.py): a torchvision v2 policy,
    # "none" | "randaugment" | "trivialaugment" | "autoaugment" (ImageNet policy) ...
    auto_augment: str = "none"
    auto_augment_magnitude: int = 9  # RandAugment's magnitude, 0..30
    random_erasing: float = 0.0  # ... then RandomErasing with this probability per image
    # before all of it: "module:function" returning an albumentations.Compose, run per image on
    # the CPU (training/item_transforms.py); "" is off
    item_transform: str = ""

    def __post_init__(self) -> None:
        if not 0.0 < self.min_scale <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {self.min_scale}")
        if self.max_zoom < 1.0:
            raise ValueError(f"max_zoom must be >= 1, got {self.max_zoom}")
        if not 0.0 < self.min_zoom <= 1.0:
            raise ValueError(f"min_zoom must be in (0, 1], got {self.min_zoom}")
        if self.max_aspect < 1.0:
            raise ValueError(f"max_aspect must be >= 1, got {self.max_aspect}")
        if not 0.0 <= self.max_translate < 1.0:
            raise ValueError(f"max_translate must be in [0, 1), got {self.max_translate}")
        if not 0.0 <= self.max_lighting < 1.0:
            raise ValueError(f"max_lighting must be in [0, 1), got {self.max_lighting}")
        for name in ("p_affine", "p_lighting"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)
