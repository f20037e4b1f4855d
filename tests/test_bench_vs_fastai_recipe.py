"""bench.recipe_vs_fastai --ours-recipe: from the command line to the Recipe our worker trains.

chapter7 must stay fastai's recipe (the like-for-like comparison); techniques must be
recipes/cifar10.toml v2's techniques on the bench's data, while fastai's spec is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.recipe_vs_fastai import case_spec, library_spec, parse_args
from bench.vs_fastai.ours_recipe import TRANSLATE_TTA, ours_recipe_dict
from training.config import Recipe, load_recipe, recipe_from_dict
from training.models import build_model
from training.techniques import shape_model

V2 = Path(__file__).resolve().parents[1] / "recipes" / "cifar10.toml"
SPLIT = {"classes": ["cat", "dog"], "rows": [], "n_train": 8, "n_valid": 2}


def ours_recipe(argv: list[str], tmp_path: Path) -> tuple[Recipe, dict, dict]:
    """(our Recipe, our worker's spec, fastai's worker's spec) for ``argv``."""
    args = parse_args(["data", "--case", "cifar", *argv])
    spec = case_spec("cifar10-subset", SPLIT, ([0.5] * 3, [0.25] * 3), args.sizes, args.epochs,
                     args.presize, args)
    ours, fastai = library_spec(spec, "ours", 1), library_spec(spec, "fastai", 1)
    return recipe_from_dict(ours_recipe_dict(ours, tmp_path, tmp_path / "items.csv")), ours, fastai


def test_techniques_trains_the_v2_recipe_on_the_bench_data(tmp_path: Path) -> None:
    recipe, ours, fastai = ours_recipe(
        ["--ours-recipe", "techniques", "--ours-epochs", "2", "3", "--ours-batch-size", "128"],
        tmp_path)
    v2 = load_recipe(V2)
    t, m = recipe.train, recipe.model
    assert (m.arch, m.whiten, m.dirac, m.bn_weight) == ("airbench_small", True, True, False)
    assert m.logit_scale == v2.model.logit_scale
    assert (t.optimizer, t.schedule, t.momentum) == ("sgd", "triangular", v2.train.momentum)
    assert t.lr_mults == {"bn_bias": 64.0}
    assert (t.lookahead_every, t.whiten_bias_epochs) == (5, v2.train.whiten_bias_epochs)
    assert (t.weight_decay, t.label_smoothing, t.mixup) == (0.0153, 0.2, 0.0)
    assert recipe.augment.alternate_flip and recipe.augment.max_translate == 0.0625
    assert [(s.size, s.epochs, s.batch_size, s.lr) for s in recipe.stages] == [
        (24, 2, 128, v2.stages[-1].lr), (32, 3, 128, v2.stages[-1].lr)]
    assert recipe.tta.views == TRANSLATE_TTA and recipe.tta.beta < 0
    # the bench's own data, seed and thread count, not the recipe file's
    assert recipe.data.csv == str(tmp_path / "items.csv") and recipe.data.cache == "auto"
    assert (t.seed, t.threads, t.device, t.select) == (1, 1, "cpu", "last")
    assert t.output == str(tmp_path / "run")
    # fastai keeps chapter 7: xresnet18, 3 + 3 epochs at batch 64, AdamW's LR
    assert fastai["arch"] == "xresnet18" and fastai["mixup"] == 0.2
    assert [(s["epochs"], s["batch_size"], s["lr"]) for s in fastai["stages"]] == [
        (3, 64, 3e-3), (3, 64, 3e-3)]
    assert ours["ours_recipe"] == "techniques" and "ours_recipe" not in fastai


def test_techniques_model_has_bias_only_batchnorm(tmp_path: Path) -> None:
    recipe, _, _ = ours_recipe(["--ours-recipe", "techniques"], tmp_path)
    model = shape_model(build_model(recipe.model.arch, 10), recipe)
    bns = [m for m in model.modules() if type(m).__name__ == "BatchNorm2d"]
    assert bns and all(not bn.weight.requires_grad for bn in bns)
    assert all(bn.bias.requires_grad for bn in bns)


def test_chapter7_is_fastais_recipe(tmp_path: Path) -> None:
    recipe, ours, fastai = ours_recipe([], tmp_path)
    assert ours == {**fastai, "ours_recipe": "chapter7"}
    t = recipe.train
    assert (recipe.model.arch, t.optimizer, t.schedule) == ("xresnet18", "adamw", "stage")
    assert (t.weight_decay, t.label_smoothing, t.mixup, t.pct_start) == (0.01, 0.1, 0.2, 0.25)
    assert not recipe.model.whiten and t.lookahead_every == 0
    assert [(s.size, s.epochs, s.batch_size, s.lr) for s in recipe.stages] == [
        (24, 3, 64, 3e-3), (32, 3, 64, 3e-3)]
    assert recipe.tta.views == ["center", "hflip", "zoom_center", "top_left", "bottom_right"]


def test_techniques_needs_the_cifar_case() -> None:
    from bench.recipe_vs_fastai import main

    with pytest.raises(SystemExit, match="--case cifar"):
        main(["data", "--case", "both", "--ours-recipe", "techniques"])
