"""torchvision v2 auto-augment policies and RandomErasing as recipe options of the batch stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.augment import AugmentConfig, BatchAugment
from training.auto_augment import POLICIES, BatchPolicy
from training.config import load_recipe
from training.errors import ConfigError

RECIPE = Path(__file__).parents[2] / "recipes" / "digits.toml"
PLAIN = dict(min_scale=1.0, flip=False, max_rotate=0.0, max_zoom=1.0, max_warp=0.0,
             max_lighting=0.0, p_affine=0.0, p_lighting=0.0)  # BatchAugment = a plain resize


def _batch(n: int = 16, size: int = 24) -> torch.Tensor:
    """n copies of one structured uint8 image (N, H, W, 3): any difference is the policy's."""
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (1, size, size, 3), dtype=torch.uint8, generator=g)
    return img.expand(n, -1, -1, -1).contiguous()


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "none"])
def test_each_image_gets_its_own_draw_and_a_seed_repeats_it(policy):
    aug = BatchAugment(AugmentConfig(**PLAIN, auto_augment=policy), 24)
    plain = BatchAugment(AugmentConfig(**PLAIN), 24)(_batch())
    torch.manual_seed(3)
    out = aug(_batch())
    assert out.shape == plain.shape and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    changed = [not torch.equal(o, p) for o, p in zip(out, plain, strict=True)]
    assert sum(changed) >= 4  # most images changed (an op can be the identity)
    distinct = {tuple(o.flatten()[:64].tolist()) for o in out}
    assert len(distinct) >= 4  # not one op for the whole batch
    torch.manual_seed(3)
    assert torch.equal(aug(_batch()), out)


def test_random_erasing_erases_one_rectangle_per_image_at_different_places():
    aug = BatchAugment(AugmentConfig(**PLAIN, random_erasing=1.0), 24)
    plain = BatchAugment(AugmentConfig(**PLAIN), 24)(_batch())
    torch.manual_seed(0)
    out = aug(_batch())
    masks = (out != plain).any(dim=1)  # (N, H, W): pixels erased
    assert masks.flatten(1).any(dim=1).all()  # every image (p=1)
    for m in masks:
        rows, cols = m.any(dim=1).nonzero(), m.any(dim=0).nonzero()
        box = m[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.float().mean() > 0.9  # one filled rectangle (noise may equal a pixel)
    assert len({tuple(m.nonzero()[0].tolist()) for m in masks}) > 1


def test_off_by_default_and_no_policy_object_when_off():
    assert BatchAugment(AugmentConfig(), 16).policy is None
    assert not BatchPolicy("none").active


def test_recipe_keys_are_checked():
    recipe = load_recipe(RECIPE, ['augment.auto_augment="trivialaugment"',
                                  "augment.random_erasing=0.25"])
    assert BatchAugment(recipe.augment, 16).policy is not None
    with pytest.raises(ConfigError, match=r"augment.auto_augment is 'randaug'; choose one of"):
        load_recipe(RECIPE, ['augment.auto_augment="randaug"'])
    with pytest.raises(ConfigError, match=r"augment.random_erasing must be in \[0, 1\]"):
        load_recipe(RECIPE, ["augment.random_erasing=1.5"])
    with pytest.raises(ConfigError, match=r"augment.auto_augment_magnitude must be in \[0, 30\]"):
        load_recipe(RECIPE, ["augment.auto_augment_magnitude=31"])
