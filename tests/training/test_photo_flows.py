"""A folder of photos with no recipe, and the seeds' labelling flows, on real image files:
the default photo recipe (fit / lr-find / recipe without --config), labels from file names by a
regex (seed 003's pets), a CSV with an is_val column (seed 002's cassava), and data-summary's
class counts, split and small-class warnings for each."""

from __future__ import annotations

import csv
import os
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from training.checkpoint import load_checkpoint
from training.cli import build_parser, main
from training.commands._recipe_args import recipe_from_args
from training.config import recipe_from_dict
from training.data import load_items
from training.errors import DataError
from training.photo_recipe import CPU_PLAN, machine_plan

RECIPE = Path(__file__).parents[2] / "recipes" / "digits.toml"
PETS_REGEX = r"(.+)_\d+.jpg$"
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TINY = ["--set", "stages.0.size=32", "--set", "data.presize=48", "--set", "stages.0.batch_size=8"]


def write_photo(path: Path, cls: int, seed: int) -> Path:
    """A real JPEG (64x48, noise around a class colour): what a phone folder holds, small."""
    rng = np.random.default_rng(seed)
    base = np.array([[200, 60, 40], [40, 90, 200], [60, 180, 60]][cls % 3], dtype=np.int16)
    pixels = np.clip(base + rng.integers(-40, 40, (48, 64, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)
    return path


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """ants/ and bees/, 12 JPEGs each."""
    for cls, name in enumerate(("ants", "bees")):
        for i in range(12):
            write_photo(tmp_path / "photos" / name / f"{name}{i}.jpg", cls, seed=100 * cls + i)
    return tmp_path / "photos"


@pytest.fixture
def no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty caches under tmp_path and every download refused at once (a closed local port)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    return tmp_path


def test_recipe_prints_the_toml_that_fit_trains_without_config(photo_folder: Path,
                                                                 tmp_path: Path, capsys):
    assert main(["recipe", "--data", str(photo_folder), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# The default photo recipe")
    saved = tmp_path / "my.toml"
    saved.write_text(text)
    raw = tomllib.loads(text)
    recipe = recipe_from_dict(raw)
    assert (recipe.model.arch, recipe.model.pretrained) == ("resnet34", "auto")
    assert (recipe.data.presize, recipe.stages[0].size) == (CPU_PLAN.presize, CPU_PLAN.size)
    assert (recipe.train.freeze_epochs, recipe.train.lr_mult, recipe.augment.min_scale) == (
        1, 100.0, 0.75)
    assert recipe.train.output == "runs/photos"
    parse = build_parser().parse_args
    without = recipe_from_args(parse(["fit", "--data", str(photo_folder), "--device", "cpu"]))
    from_file = recipe_from_args(parse(["fit", "--config", str(saved)]))
    assert without == from_file
    assert machine_plan("cpu") == CPU_PLAN


def test_fit_without_config_or_data_says_what_to_give(capsys):
    assert main(["fit"]) == 2
    err = capsys.readouterr().err
    assert "give --config RECIPE, or --data PHOTOS" in err and "training recipe" in err


def test_a_photo_folder_trains_with_one_command_and_published_weights(
        photo_folder: Path, no_network: Path, caplog: pytest.LogCaptureFixture):
    tv_file = os.path.basename(torchvision.models.get_model_weights("resnet18").DEFAULT.url)
    cached = no_network / "torch" / "hub" / "checkpoints" / tv_file
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    out = no_network / "run"
    caplog.set_level("INFO")
    assert main(["fit", "--data", str(photo_folder), "--arch", "resnet18", "--device", "cpu",
                 "--output", str(out), "--epochs", "1", *TINY]) == 0
    assert any(tv_file in r.getMessage() and "torch.hub cache" in r.getMessage()
               for r in caplog.records)
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt.classes == ["ants", "bees"]
    assert ckpt.mean == [0.485, 0.456, 0.406]  # the weights' statistics, into model.json
    assert [h["phase"] for h in ckpt.history] == ["stage1-frozen", "stage1"]
    assert ckpt.metrics["tta_accuracy"] is not None  # TTA at the end
    assert ckpt.recipe["train"]["select"] == "last"


def test_lr_find_without_config_warns_once_and_trains_from_scratch_when_offline(
        photo_folder: Path, no_network: Path, caplog: pytest.LogCaptureFixture, capsys):
    out = no_network / "lr"
    assert main(["lr-find", "--data", str(photo_folder), "--arch", "resnet18", "--device",
                 "cpu", "--output", str(out), "--num-it", "12", *TINY]) == 0
    assert (out / "lr_find.png").is_file()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "training from scratch" in warnings[0]
    assert "\n" not in warnings[0]
    assert "valley" in capsys.readouterr().out


def pets_folder(root: Path) -> Path:
    """Photos named as the Oxford pets are: <breed>_<n>.jpg, all in one folder."""
    for cls, breed in enumerate(("Abyssinian", "great_pyrenees", "yorkshire_terrier")):
        for i in range(1, 7 + 3 * cls):
            write_photo(root / f"{breed}_{i}.jpg", cls, seed=10 * cls + i)
    return root


def test_labels_from_file_names_by_regex(tmp_path: Path):
    images = pets_folder(tmp_path / "images")
    split = load_items(images, label_regex=PETS_REGEX, valid_pct=0.25, seed=3)
    assert split.classes == ["Abyssinian", "great_pyrenees", "yorkshire_terrier"]
    counts = [a + b for a, b in zip(split.train.class_counts(3), split.valid.class_counts(3),
                                    strict=True)]
    assert counts == [6, 9, 12]
    assert len(split.valid) == round(0.25 * 27)
    assert split.source == "file names by regex '(.+)_\\d+.jpg$', split 25% seed 3"
    for path, label in zip(split.train.paths, split.train.labels, strict=True):
        assert path.name.startswith(split.classes[label] + "_")


def test_files_the_regex_does_not_match_are_listed_with_their_count(tmp_path: Path):
    images = pets_folder(tmp_path / "images")
    write_photo(images / "IMG_0001.jpeg", 0, seed=1)  # .jpeg: the pattern wants .jpg
    write_photo(images / "sub" / "beagle.jpg", 1, seed=2)  # no _<n>
    with pytest.raises(DataError) as e:
        load_items(images, label_regex=PETS_REGEX)
    message = str(e.value)
    assert message.startswith(f"2 of 29 images under {images} do not match data.label_regex")
    assert "IMG_0001.jpeg" in message and str(Path("sub") / "beagle.jpg") in message
    with pytest.raises(DataError, match="not a valid regular expression"):
        load_items(images, label_regex="(.+")


def test_fit_with_labels_from_file_names(digits_dir: Path, tmp_path: Path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for png in sorted(digits_dir.glob("*/*.png"))[::3]:  # 7/123.png -> seven_123.png
        name = NUMBERS[int(png.parent.name)]
        (flat / f"{name}_{png.stem}.png").symlink_to(png)
    out = tmp_path / "run"
    assert main(["fit", "--config", str(RECIPE), "--data", str(flat), "--label-regex",
                 r"^([a-z]+)_\d+\.png$", "--output", str(out), "--epochs", "1", "--no-tta",
                 "--set", "stages=[{size = 16, batch_size = 64, epochs = 1, lr = 1e-2}]"]) == 0
    ckpt = load_checkpoint(out / "best.pt")
    assert sorted(ckpt.classes) == sorted(NUMBERS)
    assert ckpt.recipe["data"]["label_regex"] == r"^([a-z]+)_\d+\.png$"
    assert ckpt.metrics["n_valid"] == round(0.2 * len(list(flat.iterdir())))


def cassava_like(root: Path, digits_dir: Path) -> tuple[Path, Path, int]:
    """train_images/ of real images and train.csv with image_id,label,is_val (as seed 002 adds
    is_val to Kaggle's cassava train.csv): (images folder, CSV, number of is_val rows)."""
    images = root / "train_images"
    images.mkdir(parents=True)
    rows, n_val = [], 0
    for i, png in enumerate(sorted(digits_dir.glob("*/*.png"))[::3]):
        (images / f"{i}.png").symlink_to(png)
        is_val = i % 5 == 0
        n_val += is_val
        rows.append({"image_id": f"{i}.png", "label": png.parent.name, "is_val": is_val})
    with open(root / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image_id", "label", "is_val"])
        writer.writeheader()
        writer.writerows(rows)
    return images, root / "train.csv", n_val


def test_fit_with_a_csv_and_its_is_val_column_end_to_end(digits_dir: Path, tmp_path: Path):
    images, table, n_val = cassava_like(tmp_path / "cassava", digits_dir)
    out = tmp_path / "run"
    assert main(["fit", "--config", str(RECIPE), "--data", str(images), "--csv", str(table),
                 "--output", str(out), "--epochs", "1",
                 "--set", "stages=[{size = 16, batch_size = 64, epochs = 1, lr = 1e-2}]"]) == 0
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt.classes == [str(d) for d in range(10)]  # numeric labels sort as numbers
    assert ckpt.metrics["n_valid"] == n_val  # exactly the is_val rows
    assert ckpt.metrics["valid_set"] == "csv train.csv"
    assert ckpt.metrics["tta_accuracy"] is not None


def test_data_summary_shows_counts_split_and_small_class_warnings_for_each_flow(
        digits_dir: Path, tmp_path: Path, capsys):
    images, table, n_val = cassava_like(tmp_path / "cassava", digits_dir)
    assert main(["data-summary", "--data", str(images), "--csv", str(table)]) == 0
    out = capsys.readouterr().out
    assert "source:  csv train.csv" in out
    n_rows = len(list(images.iterdir()))
    assert f"{n_rows - n_val} train, {n_val} valid" in out
    assert "warnings" not in out

    pets = pets_folder(tmp_path / "pets")
    split = load_items(pets, label_regex=PETS_REGEX, valid_pct=0.25, seed=3)
    train_counts = dict(zip(split.classes, split.train.class_counts(3), strict=True))
    for minimum in (10, 5):
        assert main(["data-summary", "--data", str(pets), "--label-regex", PETS_REGEX,
                     "--valid-pct", "0.25", "--seed", "3", "--min-per-class", str(minimum)]) == 0
        out = capsys.readouterr().out
        assert "source:  file names by regex '(.+)_\\d+.jpg$', split 25% seed 3" in out
        assert f"images:  {len(split.train)} train, {len(split.valid)} valid" in out
        for name, n in train_counts.items():  # the class table: name, train, valid
            assert f"{name:<17}  {n:>7}" in out
        small = [c for c, n in train_counts.items() if n < minimum]
        assert [c for c in train_counts if f"class '{c}' has only" in out] == small
        assert (f"warnings ({len(small)}):" in out) == bool(small)
    assert [c for c, n in train_counts.items() if n < 10]  # the warning was shown at least once


def test_show_batch_takes_labels_from_file_names(tmp_path: Path, capsys):
    pets = pets_folder(tmp_path / "pets")
    png = tmp_path / "batch.png"
    assert main(["show-batch", "--data", str(pets), "--label-regex", PETS_REGEX, "--n", "4",
                 "--output", str(png)]) == 0
    assert Image.open(png).size[0] > 0 and "wrote 4 augmented" in capsys.readouterr().out
