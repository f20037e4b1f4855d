"""training.data on real files: sources, splits, bad data, loaders, stats, and the CLI commands."""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.imaging import (
    EvalSpec,
    TTASpec,
    decode_image,
    eval_view,
    resize_center_crop,
    stack_views,
    to_model_input,
)
from training.augment import to_float_nchw
from training.commands import data_summary, make_digits, show_batch
from training.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataSplit,
    EpochShuffleSampler,
    Items,
    build_dataloaders,
    compute_stats,
    format_summary,
    load_items,
    make_eval_loader,
)
from training.errors import DataError

DIGIT_CLASSES = [str(i) for i in range(10)]


# --- make_digits -------------------------------------------------------------------------------


def test_make_digits_writes_1797_grayscale_pngs_in_10_classes(digits_dir: Path) -> None:
    from sklearn.datasets import load_digits

    files = sorted(digits_dir.glob("*/*.png"))
    assert len(files) == 1797
    assert sorted(d.name for d in digits_dir.iterdir()) == DIGIT_CLASSES
    digits = load_digits()
    for i in (0, 17, 1796):
        target = digits.target[i]
        img = Image.open(digits_dir / str(target) / f"{i}.png")
        assert img.mode == "L" and img.size == (8, 8)
        expected = np.rint(digits.images[i] * 255 / 16).astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(img), expected)


# --- sources -----------------------------------------------------------------------------------


def test_random_split_is_deterministic_disjoint_and_complete(digits_dir: Path) -> None:
    a = load_items(digits_dir, valid_pct=0.2, seed=42)
    b = load_items(digits_dir, valid_pct=0.2, seed=42, check_images=False)
    c = load_items(digits_dir, valid_pct=0.2, seed=7, check_images=False)
    assert a.classes == DIGIT_CLASSES
    assert a.train == b.train and a.valid == b.valid  # checking images does not move files
    assert set(a.valid.paths) != set(c.valid.paths)
    assert not set(a.train.paths) & set(a.valid.paths)
    assert len(a.train) + len(a.valid) == 1797
    assert len(a.valid) == round(0.2 * 1797)
    assert a.source == "folder split 20% seed 42"
    assert a.problems == []
    for items in (a.train, a.valid):
        assert all(a.classes[y] == p.parent.name for p, y in zip(items.paths, items.labels,
                                                                 strict=True))
    assert len(a.image_sizes) == 1797 and set(a.image_sizes) == {(8, 8)}


@pytest.mark.parametrize("valid_name", ["valid", "val"])
def test_train_valid_folders(tmp_path: Path, make_class_tree, valid_name: str) -> None:
    make_class_tree(tmp_path / "train", {"dog": 3, "cat": 4})
    make_class_tree(tmp_path / valid_name, {"dog": 1, "cat": 2})
    split = load_items(tmp_path)
    assert split.classes == ["cat", "dog"]
    assert split.source == f"folder with train/{valid_name}"
    assert sorted(split.train.labels) == [0, 0, 0, 0, 1, 1, 1]
    assert sorted(split.valid.labels) == [0, 0, 1]
    assert all(p.is_relative_to(tmp_path / valid_name) for p in split.valid.paths)


def test_numeric_class_names_sort_numerically(tmp_path: Path, make_class_tree) -> None:
    make_class_tree(tmp_path, {"2": 3, "10": 3, "1": 3})
    assert load_items(tmp_path, valid_pct=0.34).classes == ["1", "2", "10"]


def test_both_valid_and_val_is_an_error(tmp_path: Path, make_class_tree) -> None:
    for name in ("train", "valid", "val"):
        make_class_tree(tmp_path / name, {"a": 1, "b": 1})
    with pytest.raises(DataError, match="both valid/ and val/"):
        load_items(tmp_path)


def test_valid_class_missing_from_train_is_an_error(tmp_path: Path, make_class_tree) -> None:
    make_class_tree(tmp_path / "train", {"a": 2, "b": 2})
    make_class_tree(tmp_path / "valid", {"a": 1, "c": 1})
    with pytest.raises(DataError, match=r"\['c'\]"):
        load_items(tmp_path)


def test_csv_with_is_valid_column(tmp_path: Path, write_image) -> None:
    images = tmp_path / "images"
    rows = ["image_id,label,is_val"]
    for i in range(6):
        write_image(images / f"{i}.png")
        rows.append(f"{i}.png,{'ab'[i % 2]},{'True' if i >= 4 else 'False'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    split = load_items(images, csv=tmp_path / "labels.csv")  # paths relative to --data
    assert split.classes == ["a", "b"]
    assert split.source == "csv labels.csv"
    assert split.train.paths == [images / f"{i}.png" for i in range(4)]
    assert split.train.labels == [0, 1, 0, 1]
    assert split.valid.paths == [images / "4.png", images / "5.png"]


def test_csv_without_split_column_is_split_at_random(tmp_path: Path, write_image) -> None:
    rows = ["path,label"]
    for i in range(10):
        write_image(tmp_path / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{'xy'[i % 2]}")  # relative to the CSV's folder
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    split = load_items(tmp_path, csv="labels.csv", valid_pct=0.3, seed=1)
    again = load_items(tmp_path, csv="labels.csv", valid_pct=0.3, seed=1)
    assert len(split.valid) == 3 and len(split.train) == 7
    assert split.valid == again.valid
    assert split.source == "csv labels.csv split 30% seed 1"


def test_csv_naming_missing_files_lists_them(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "ok.png")
    rows = ["path,label,is_valid", "ok.png,a,0"] + [f"gone{i}.png,b,1" for i in range(8)]
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    with pytest.raises(DataError) as e:
        load_items(tmp_path, csv=tmp_path / "labels.csv")
    msg = str(e.value)
    assert "8 file(s) that do not exist" in msg and "gone0.png" in msg and "gone4.png" in msg
    assert "gone7.png" not in msg  # only the first few are listed


def test_csv_bad_is_valid_value_names_the_line(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "a.png")
    (tmp_path / "l.csv").write_text("path,label,is_valid\na.png,x,maybe\n")
    with pytest.raises(DataError, match="line 2"):
        load_items(tmp_path, csv=tmp_path / "l.csv")


def test_missing_csv_and_empty_csv(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_items(tmp_path, csv=tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("path,label,is_valid\n")
    with pytest.raises(DataError, match="no readable images"):
        load_items(tmp_path, csv=tmp_path / "empty.csv")


# --- bad data ----------------------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_items(tmp_path / "nowhere")


def test_folder_without_class_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no class folders"):
        load_items(tmp_path)


def test_empty_class_folder_is_named(tmp_path: Path, make_class_tree) -> None:
    make_class_tree(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"class folder .*c has no images"):
        load_items(tmp_path)


def test_single_class(tmp_path: Path, make_class_tree) -> None:
    make_class_tree(tmp_path / "train", {"a": 5, "b": 5})  # no valid/: "train" looks like a class
    with pytest.raises(DataError, match="only one class .*'train'.*valid/"):
        load_items(tmp_path)


def test_bad_valid_pct(digits_dir: Path) -> None:
    with pytest.raises(DataError, match="valid_pct"):
        load_items(digits_dir, valid_pct=1.0)


def test_valid_pct_zero_puts_everything_in_train(digits_dir: Path) -> None:
    split = load_items(digits_dir, valid_pct=0.0, check_images=False)
    assert len(split.train) == 1797 and len(split.valid) == 0


def test_corrupt_images_are_skipped_with_a_warning_and_counted(
    tmp_path: Path, make_class_tree, caplog: pytest.LogCaptureFixture
) -> None:
    make_class_tree(tmp_path, {"a": 5, "b": 5})
    (tmp_path / "a" / "garbage.png").write_bytes(b"this is not a png")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, "JPEG")
    (tmp_path / "b" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "b" / "empty.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="training.data.sources"):
        split = load_items(tmp_path, valid_pct=0.3)
    bad = {"garbage.png", "truncated.jpg", "empty.jpg"}
    assert len(split.problems) == 3
    assert {Path(p.split(":")[0]).name for p in split.problems} == bad
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert all(name in warned for name in bad)
    kept = {p.name for p in split.train.paths + split.valid.paths}
    assert len(kept) == 10 and not kept & bad
    summary = format_summary(split)
    assert "problems (3):" in summary and "truncated.jpg" in summary


def test_unchecked_corrupt_image_fails_loading_with_its_name(
    tmp_path: Path, make_class_tree
) -> None:
    make_class_tree(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "a" / "bad.png").write_bytes(b"nope")
    split = load_items(tmp_path, valid_pct=0.4, check_images=False)
    items = Items(split.train.paths + split.valid.paths, split.train.labels + split.valid.labels)
    with pytest.raises(DataError, match="bad.png"):
        list(make_eval_loader(items, eval_spec=EvalSpec(8), batch_size=8))


def _exif_rotated_jpeg(path: Path) -> None:
    """32 wide x 16 tall, left half red, right half blue, EXIF orientation 6 (rotate 90 CW)."""
    arr = np.zeros((16, 32, 3), np.uint8)
    arr[:, :16] = (255, 0, 0)
    arr[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(path, "JPEG", quality=95, exif=exif)


def test_image_modes_decode_to_rgb_and_upright(tmp_path: Path) -> None:
    d = tmp_path / "data"
    (d / "a").mkdir(parents=True)
    (d / "b").mkdir()
    Image.new("L", (16, 16), 100).save(d / "a" / "gray.png")
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # fully transparent -> white
    rgba.paste((0, 255, 0, 255), (0, 0, 16, 8))  # opaque green top half
    rgba.save(d / "a" / "rgba.png")
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(d / "b" / "cmyk.tiff")
    _exif_rotated_jpeg(d / "b" / "rotated.jpg")

    split = load_items(d, valid_pct=0.5, seed=0)
    paths = split.train.paths + split.valid.paths
    sizes = dict(zip(paths, split.image_sizes, strict=True))
    assert sizes[d / "b" / "rotated.jpg"] == (16, 32)  # upright width x height

    items = Items(paths, [0] * len(paths))
    x, _ = next(iter(make_eval_loader(items, eval_spec=EvalSpec(16), batch_size=8)))
    got = {p.name: x[i].numpy().astype(int) for i, p in enumerate(paths)}
    assert x.dtype == torch.uint8 and x.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(got["gray.png"], np.full((16, 16, 3), 100))
    np.testing.assert_array_equal(got["rgba.png"][:8], np.broadcast_to([0, 255, 0], (8, 16, 3)))
    np.testing.assert_array_equal(got["rgba.png"][8:], np.full((8, 16, 3), 255))
    np.testing.assert_array_equal(got["cmyk.tiff"], np.broadcast_to([255, 0, 0], (16, 16, 3)))
    # Rotated 90 degrees clockwise, the left (red) half is on top; the crop keeps rows 8..23.
    rot = got["rotated.jpg"]
    assert (np.abs(rot[2, 8] - [255, 0, 0]) < 40).all()
    assert (np.abs(rot[13, 8] - [0, 0, 255]) < 40).all()

    # The training item stage decodes the same way.
    train_split = DataSplit(["a"], items, items, [], "test")
    dls = build_dataloaders(train_split, size=16, batch_size=4, presize=16,
                            eval_spec=EvalSpec(16), drop_last=False)
    xt, _ = next(iter(dls.train))
    order = list(EpochShuffleSampler(4, seed=42))  # the loader's epoch-0 order
    for row, i in enumerate(order):
        np.testing.assert_array_equal(xt[row].numpy(), x[i].numpy())


# --- loaders -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_split(digits_dir: Path) -> DataSplit:
    return load_items(digits_dir, check_images=False)


def test_valid_batches_equal_the_service_path_exactly(digits_split: DataSplit) -> None:
    spec = EvalSpec(size=20, resize_ratio=1.15)
    dls = build_dataloaders(digits_split, size=20, batch_size=16, presize=24, eval_spec=spec)
    x, y = next(iter(dls.valid))
    assert x.dtype == torch.uint8 and x.shape == (32, 20, 20, 3)
    assert y.dtype == torch.int64 and y.tolist() == digits_split.valid.labels[:32]
    paths = digits_split.valid.paths[:32]
    expected = to_model_input(np.stack([eval_view(decode_image(p), spec) for p in paths]))
    got = to_float_nchw(x).numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_tta_valid_batches_equal_stack_views(digits_split: DataSplit) -> None:
    spec, tta = EvalSpec(size=16), TTASpec()
    loader = make_eval_loader(digits_split.valid, eval_spec=spec, tta=tta, batch_size=5)
    x, _ = next(iter(loader))
    assert x.shape == (5, len(tta.views), 16, 16, 3)
    images = [decode_image(p) for p in digits_split.valid.paths[:5]]
    np.testing.assert_array_equal(to_float_nchw(x).numpy(), stack_views(images, spec, tta))


def test_train_batches_are_presized_items(digits_split: DataSplit) -> None:
    dls = build_dataloaders(digits_split, size=32, batch_size=64, presize=40,
                            eval_spec=EvalSpec(32))
    assert dls.classes == DIGIT_CLASSES
    assert len(dls.train) == len(digits_split.train) // 64  # drop_last
    dls.train.sampler.set_epoch(0)
    x, y = next(iter(dls.train))
    assert x.dtype == torch.uint8 and x.shape == (64, 40, 40, 3) and y.dtype == torch.int64
    dls.train.sampler.set_epoch(0)
    first = list(dls.train.sampler)[:64]
    for row in (0, 63):
        i = first[row]
        expected = resize_center_crop(decode_image(digits_split.train.paths[i]), 40, 40)
        np.testing.assert_array_equal(x[row].numpy(), expected)
        assert y[row] == digits_split.train.labels[i]


def test_shuffle_is_seeded_per_epoch_so_resume_sees_the_same_order(
    digits_split: DataSplit,
) -> None:
    def orders(seed: int, epochs: list[int]) -> list[list[int]]:
        sampler = build_dataloaders(digits_split, size=8, batch_size=8, presize=8,
                                    eval_spec=EvalSpec(8), seed=seed).train.sampler
        out = []
        for e in epochs:
            sampler.set_epoch(e)
            out.append(list(sampler))
        return out

    run = orders(42, [0, 1, 2, 3])
    resumed = orders(42, [3])
    assert resumed[0] == run[3]
    assert run[0] != run[1]
    assert sorted(run[0]) == list(range(len(digits_split.train)))
    assert orders(43, [0])[0] != run[0]


def test_small_training_set_keeps_its_partial_batch(tmp_path: Path, make_class_tree) -> None:
    make_class_tree(tmp_path, {"a": 3, "b": 3})
    split = load_items(tmp_path, valid_pct=0.34)
    dls = build_dataloaders(split, size=8, batch_size=64, presize=8, eval_spec=EvalSpec(8))
    assert len(dls.train) == 1


def test_compute_stats_matches_numpy(digits_split: DataSplit) -> None:
    mean, std = compute_stats(digits_split, presize=8)
    pixels = np.stack([resize_center_crop(decode_image(p), 8, 8)
                       for p in digits_split.train.paths]).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-6)
    assert mean[0] == mean[1] == mean[2]  # grayscale
    sub_mean, _ = compute_stats(digits_split, presize=8, max_images=200)
    assert abs(sub_mean[0] - mean[0]) < 0.05
    assert len(IMAGENET_MEAN) == len(IMAGENET_STD) == 3


# --- commands ----------------------------------------------------------------------------------


def _run(command, argv: list[str]) -> int:
    """A command module on its own (what training.cli does for it, minus the other commands)."""
    parser = argparse.ArgumentParser()
    command.register(parser)
    assert command.__doc__.strip().splitlines()[0]  # the CLI's help line
    return command.run(parser.parse_args(argv))


def test_data_summary_command(digits_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run(data_summary, ["--data", str(digits_dir), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "folder split 20% seed 1" in out
    assert "1438 train, 359 valid, 0 skipped" in out
    assert "min 8x8, median 8x8, max 8x8" in out
    assert "problems: none" in out


def test_data_summary_command_raises_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        _run(data_summary, ["--data", str(tmp_path / "missing")])


def test_show_batch_command_writes_a_png(digits_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    argv = ["--data", str(digits_dir), "--size", "24", "--presize", "32", "--n", "9",
            "--output", str(out)]
    assert _run(show_batch, argv) == 0
    img = Image.open(out)
    assert img.format == "PNG" and img.size[0] > 100


RECIPE = Path(__file__).parents[2] / "recipes" / "digits.toml"


def _show_batch_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    show_batch.register(parser)
    return parser.parse_args(argv)


def test_show_batch_uses_the_recipes_augmentation_size_and_presize(
    digits_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from training.config import load_recipe

    recipe = load_recipe(RECIPE)
    out = tmp_path / "grid.png"
    argv = ["--config", str(RECIPE), "--data", str(digits_dir), "--n", "4", "--output", str(out)]
    view = show_batch.resolve(_show_batch_args(argv))
    assert view.augment == recipe.augment and view.augment.flip is False  # digits: no flips
    assert (view.size, view.presize) == (recipe.stages[0].size, recipe.presize) == (16, 40)
    assert (view.valid_pct, view.seed, view.data) == (0.2, 42, digits_dir)
    assert _run(show_batch, argv) == 0
    assert "wrote 4 augmented training images (16x16, presize 40)" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.format == "PNG"
    # --set overrides the recipe, flags given on the command line win over both
    argv += ["--set", "stages.0.size=12", "--set", "augment.max_rotate=0.0", "--min-scale", "0.5"]
    view = show_batch.resolve(_show_batch_args(argv))
    assert view.size == 12 and view.presize == 40
    assert view.augment.max_rotate == 0.0 and view.augment.min_scale == 0.5
    assert view.augment.flip is False
    assert _run(show_batch, argv) == 0
    assert "(12x12, presize 40)" in capsys.readouterr().out


def test_show_batch_without_a_recipe_keeps_the_built_in_defaults(digits_dir: Path) -> None:
    from training.augment import AugmentConfig
    from training.errors import ConfigError

    view = show_batch.resolve(_show_batch_args(["--data", str(digits_dir), "--output", "x.png"]))
    assert view.augment == AugmentConfig() and (view.size, view.presize) == (32, 48)
    with pytest.raises(ConfigError, match="--data DIR or --config RECIPE"):
        show_batch.resolve(_show_batch_args(["--output", "x.png"]))
    with pytest.raises(ConfigError, match="give --config"):
        show_batch.resolve(_show_batch_args(["--data", str(digits_dir), "--output", "x.png",
                                             "--set", "stages.0.size=12"]))


def test_make_digits_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run(make_digits, [str(tmp_path / "d")]) == 0
    assert len(list((tmp_path / "d").glob("*/*.png"))) == 1797
    assert "wrote 1797 images" in capsys.readouterr().out
