"""An Albumentations pipeline named by the recipe runs per image before the batch augmentation."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from training.augment import AugmentConfig, BatchAugment
from training.cli import main
from training.config import load_recipe
from training.errors import ConfigError

RECIPE = Path(__file__).parents[2] / "recipes" / "digits.toml"
PLAIN = dict(min_scale=1.0, flip=False, max_rotate=0.0, max_zoom=1.0, max_warp=0.0,
             max_lighting=0.0, p_affine=0.0, p_lighting=0.0)
PIPELINES = '''
import albumentations as A

def mirror():
    return A.Compose([A.HorizontalFlip(p=1.0)])

def dropout():
    return A.Compose([A.CoarseDropout(num_holes_range=(1, 2), hole_height_range=(4, 8),
                                      hole_width_range=(4, 8), fill=0, p=1.0)])

def varying_crop():
    return A.Compose([A.RandomSizedCrop(min_max_height=(10, 20), size=(12, 12), p=1.0),
                      A.OneOf([A.Resize(12, 12), A.Resize(14, 14)], p=1.0)])

def not_a_pipeline():
    return 42
'''


@pytest.fixture
def pipelines(tmp_path, monkeypatch) -> str:
    (tmp_path / "user_pipelines.py").write_text(textwrap.dedent(PIPELINES))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_pipelines"


def _batch(n: int = 8, size: int = 20) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(1, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)


def test_the_named_pipeline_runs_on_every_image_before_the_batch_stage(pipelines):
    x = _batch()
    mirrored = BatchAugment(AugmentConfig(**PLAIN, item_transform=f"{pipelines}:mirror"), 20)(x)
    plain = BatchAugment(AugmentConfig(**PLAIN), 20)(x)
    assert torch.allclose(mirrored, plain.flip(-1), atol=1e-6)


def test_random_pipelines_follow_the_learners_generator(pipelines):
    aug = BatchAugment(AugmentConfig(**PLAIN, item_transform=f"{pipelines}:dropout"), 20)
    x = _batch()
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert ((a == 0).all(dim=1)).flatten(1).any(dim=1).all()  # every image got a black hole


def test_mistakes_are_config_errors_that_say_what_to_do(pipelines):
    with pytest.raises(ConfigError, match="must look like 'module:function'"):
        load_recipe(RECIPE, ['augment.item_transform="user_pipelines"'])
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        load_recipe(RECIPE, ['augment.item_transform="no_such_module:f"'])
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        load_recipe(RECIPE, [f'augment.item_transform="{pipelines}:nope"'])
    with pytest.raises(ConfigError, match="returned int, not a pipeline"):
        load_recipe(RECIPE, [f'augment.item_transform="{pipelines}:not_a_pipeline"'])
    aug = BatchAugment(AugmentConfig(**PLAIN, item_transform=f"{pipelines}:varying_crop"), 12)
    with pytest.raises(ConfigError, match="one \\(H, W, 3\\) size"):
        for seed in range(20):  # some seed mixes 12 and 14 px images in one batch
            aug(_batch(16), torch.Generator().manual_seed(seed))


def test_show_batch_with_the_recipe_shows_the_pipelines_output(pipelines, digits_dir, tmp_path,
                                                              capsys):
    out = tmp_path / "batch.png"
    assert main(["show-batch", "--config", str(RECIPE), "--data", str(digits_dir),
                 "--set", f'augment.item_transform="{pipelines}:mirror"',
                 "--output", str(out)]) == 0
    assert out.stat().st_size > 1000
