"""bench.ablation_photos builds the recipes its rows claim (each row changes only its technique,
the baseline stays chapter 7 whatever recipes/imagenette.toml's defaults become) and its photo
folders (real JPEGs, upscaled, in Imagenette's train/ + val/ layout, cached)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.ablation_photos import (
    RECIPE,
    ROWS,
    TTA_ROW,
    build_photos,
    default_recipe,
    parse_args,
    row_recipe,
    run_row,
    table,
    translate_overrides,
)
from service.imaging import check_views_fit
from training.config import Recipe, eval_spec, load_recipe, tta_spec
from training.photo_recipe import CPU_PLAN


def flat(recipe: Recipe) -> dict[str, Any]:
    """The recipe as dotted key -> value (stages by index), to diff two rows."""
    out: dict[str, Any] = {}
    for section, values in recipe.to_dict().items():
        if section == "stages":
            for i, stage in enumerate(values):
                out.update({f"stages.{i}.{k}": v for k, v in stage.items()})
        elif isinstance(values, dict):
            out.update({f"{section}.{k}": v for k, v in values.items()})
    return out


def recipes(tmp_path: Path) -> list[Recipe]:
    args = parse_args(["--work", str(tmp_path), "--sgd-lr", "7.0"])
    return [row_recipe(i, 1, tmp_path / "photos", tmp_path / "run", args)
            for i in range(len(ROWS))]


def changed(a: Recipe, b: Recipe) -> set[str]:
    fa, fb = flat(a), flat(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def test_baseline_is_chapter_7_at_bench_scale(tmp_path):
    base = recipes(tmp_path)[0]
    t = base.train
    assert (t.optimizer, t.schedule, t.lookahead_every) == ("adamw", "stage", 0)
    assert (t.weight_decay, t.label_smoothing, t.mixup) == (0.01, 0.1, 0.4)
    assert [(s.size, s.epochs, s.lr) for s in base.stages] == [(64, 3, 3e-3), (96, 2, 1e-3)]
    assert base.model.arch == "xresnet18" and base.data.presize == 112
    assert tta_spec(base).views == ("center", "hflip", "top_left", "top_right",
                                    "bottom_left", "bottom_right")
    assert base.data.path == str(tmp_path / "photos") and t.seed == 1


def test_each_row_switches_on_only_its_technique(tmp_path):
    rows = recipes(tmp_path)
    assert changed(rows[0], rows[1]) == {"train.schedule"}
    assert rows[1].train.schedule == "run"
    sgd = rows[2]
    assert changed(rows[1], sgd) == {"train.optimizer", "train.weight_decay", "train.schedule",
                                     "train.pct_start", "stages.0.lr", "stages.1.lr"}
    assert (sgd.train.optimizer, sgd.train.schedule, sgd.train.momentum) == ("sgd", "triangular",
                                                                             0.85)
    assert [s.lr for s in sgd.stages] == [7.0, 7.0] and sgd.train.weight_decay == 0.0153
    assert changed(sgd, rows[3]) == {"train.lookahead_every"}
    assert rows[3].train.lookahead_every == 5


def test_translate_row_changes_only_the_views(tmp_path):
    args = parse_args(["--work", str(tmp_path), "--shift", "3"])
    last = len(ROWS) - 1
    plain = row_recipe(last, 1, tmp_path, tmp_path / "run", args)
    shifted = row_recipe(last, 1, tmp_path, tmp_path / "run", args,
                         tuple(translate_overrides(3)))
    assert changed(plain, shifted) == {"tta.views", "tta.beta"}
    spec = tta_spec(shifted)
    assert spec.views == ("center", "hflip", "shift:+3,+3", "hflip_shift:+3,+3",
                          "shift:-3,-3", "hflip_shift:-3,-3")
    assert spec.beta is None  # all six weigh the same
    check_views_fit(eval_spec(shifted, shifted.stages[-1].size), spec)


def write_cifar_like(root: Path, classes: int = 3, per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i:04d}.jpg", quality=75)
    return root


def test_build_photos_upscales_into_train_and_val_and_caches(tmp_path):
    source = write_cifar_like(tmp_path / "cifar")
    dest = build_photos(tmp_path / "work", n_train=3, n_val=2, side=48, source=source)
    for c in range(3):
        train = sorted(p.name for p in (dest / "train" / f"class{c}").iterdir())
        val = sorted(p.name for p in (dest / "val" / f"class{c}").iterdir())
        assert train == ["0000.jpg", "0001.jpg", "0002.jpg"] and val == ["0003.jpg", "0004.jpg"]
    photo = dest / "val" / "class2" / "0004.jpg"
    with Image.open(photo) as img:
        assert (img.format, img.size, img.mode) == ("JPEG", (48, 48), "RGB")
    stamp = photo.stat().st_mtime_ns
    assert build_photos(tmp_path / "work", 3, 2, 48, source=source) == dest
    assert photo.stat().st_mtime_ns == stamp  # cached, not rewritten


def test_table_gives_mean_spread_and_the_translate_row():
    results = [{"row": ROWS[0][0], "seed": s, "accuracy": a, "tta_accuracy": t,
                "cpu_seconds": 100.0} for s, a, t in ((1, 0.5, 0.52), (2, 0.54, 0.56))]
    results.append({**results[0], "row": TTA_ROW, "tta_accuracy": 0.6})
    text = table(results, [1, 2])
    assert f"| {ROWS[0][0]} | 52.0 | 56.0 | 54.0 | 4.0 | 52.0 | 100 |" in text
    assert f"| {TTA_ROW} | 60.0 | - | 60.0 | 0.0 | 50.0 | 100 |" in text


def test_default_recipe_row_is_the_folder_default_from_scratch(tmp_path):
    args = parse_args(["--work", str(tmp_path)])
    plain = default_recipe(1, tmp_path / "photos", tmp_path / "run", args)
    assert plain.model.arch == "resnet18" and plain.model.pretrained == ""  # no weights here
    assert (plain.train.freeze_epochs, plain.train.lr_mult, plain.train.optimizer) == (1, 100.0,
                                                                                      "adamw")
    assert [(s.size, s.epochs) for s in plain.stages] == [(96, CPU_PLAN.epochs)]
    shifted = default_recipe(1, tmp_path / "photos", tmp_path / "run", args,
                             tuple(translate_overrides(3)))
    assert changed(plain, shifted) == {"tta.views", "tta.beta"}


def test_the_photo_recipe_trains_the_ablations_best_row(tmp_path):
    """recipes/imagenette.toml's defaults were set by this bench (docs/ablation.md, "Photo
    folders"): every option a row switched on is the recipe's own; TTA stays chapter 7's crops."""
    rows = recipes(tmp_path)
    best = flat(rows[-1])
    own = flat(load_recipe(RECIPE))
    assert {k: own[k] for k in changed(rows[0], rows[-1])} == {
        "train.optimizer": "sgd", "train.weight_decay": 0.0153, "train.schedule": "triangular",
        "train.pct_start": 0.23, "train.lookahead_every": 5, "stages.0.lr": 11.5,
        "stages.1.lr": 11.5}
    assert all(own[k] == best[k] for k in changed(rows[0], rows[-1]) if not k.startswith("stages"))
    assert own["train.momentum"] == best["train.momentum"]
    assert own["tta.views"] == best["tta.views"] and own["tta.beta"] == 0.25


def test_a_row_trains_and_scores_both_tta_view_sets(tmp_path):
    """One row end to end at toy scale: it reads what training returns (a typed summary)."""
    data = build_photos(tmp_path / "work", n_train=4, n_val=2, side=32,
                        source=write_cifar_like(tmp_path / "cifar", per_class=6))
    args = parse_args(["--work", str(tmp_path / "work"), "--presize", "32", "--sizes", "16",
                       "16", "--epochs", "1", "1", "--batch-size", "4",
                       "--threads", "1", "--shift", "1"])
    result = run_row(0, 1, data, tmp_path / "run", args)
    assert result["row"] == ROWS[0][0] and result["seed"] == 1
    for key in ("accuracy", "tta_accuracy", "translate_tta_accuracy"):
        assert 0.0 <= result[key] <= 1.0, (key, result[key])
    assert result["cpu_seconds"] > 0 and result["translate_eval_cpu_seconds"] > 0
