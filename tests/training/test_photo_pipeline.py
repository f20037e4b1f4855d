"""The photo pipeline: decode once per run, a reusable disk cache, DCT-domain decoding of large
JPEGs that keeps training's evaluation and the servers on identical tensors, and the CIFAR net.

Real photos: the 100 held-out CIFAR-10 JPEGs under tests/data, and phone-sized JPEGs made
from them (4000x3000, as a 12 MP camera writes).
"""

from __future__ import annotations

import functools
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.imaging import phone_jpeg as bench_phone_jpeg
from service.core.config import CoreConfig
from service.core.preprocess import image_rows
from service.imaging import (
    EvalSpec,
    TTASpec,
    decode_image,
    decode_side,
    eval_view,
    to_model_input,
    tta_views,
)
from service.model_repository import ModelRepository, validate_version_dir
from training.config import load_recipe
from training.data import load_items
from training.data.cache import DECODES, build_presized, cache_key, presize_one
from training.data.datasets import EvalDataset
from training.learner import Callback
from training.models import build_model
from training.phases import fit

PHOTOS = Path(__file__).resolve().parents[1] / "data" / "cifar10_heldout"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the 100 real photos (10 classes x 10)."""
    out = tmp_path_factory.mktemp("photos") / "train"
    shutil.copytree(PHOTOS, out, ignore=shutil.ignore_patterns("*.md"))
    return out


@functools.lru_cache(maxsize=1)
def phone_jpeg() -> bytes:
    """A 12 MP phone JPEG made from a real photo (bench.imaging's, so the benchmark and these
    tests read the same kind of file)."""
    return bench_phone_jpeg(None)


class DecodesPerEpoch(Callback):
    """Files decoded during each epoch (train + validation), from the pipeline's own counter."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def before_epoch(self, learn) -> None:
        self._start = DECODES.count

    def after_epoch(self, learn) -> None:
        self.counts.append(DECODES.count - self._start)


def test_second_and_later_epochs_decode_no_file(photos: Path, tmp_path: Path):
    recipe = load_recipe(REPO_ROOT / "recipes" / "cifar10.toml", [
        f"data.path={photos}", f"train.output={tmp_path / 'run'}", "data.valid_pct=0.2",
        "model.arch=airbench_small", "stages.0.epochs=2", "stages.1.epochs=2",
        "stages.0.batch_size=16", "stages.1.batch_size=16"])
    before = DECODES.count
    counter = DecodesPerEpoch()
    fit(recipe, progress=False, callbacks=[counter])
    # Presizing decoded the 80 training photos once, before the first epoch; each stage's
    # loader computed the 20 validation photos' views once when it was built; the epochs
    # themselves decode nothing.
    assert counter.counts == [0, 0, 0, 0]
    assert DECODES.count - before == 80 + 20 + 20


def test_disk_cache_is_reused_by_the_next_run_and_rebuilt_when_a_file_changes(
        photos: Path, tmp_path: Path):
    items = load_items(photos, valid_pct=0.0).train
    first = build_presized(items, 32, mode="disk", cache_dir=tmp_path, progress=False)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and first.where.startswith("disk")

    before = DECODES.count
    again = build_presized(items, 32, mode="disk", cache_dir=tmp_path, progress=False)
    assert DECODES.count == before  # nothing decoded: the file was memory-mapped
    assert torch.equal(again.images, first.images)
    expected = np.asarray(Image.open(items.paths[5]).convert("RGB"))
    assert np.array_equal(again.images[5].numpy(), expected)  # 32 px photos stay as they are

    touched = items.paths[0]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert cache_key(items, 32, "bilinear") != files[0].stem
    build_presized(items, 32, mode="disk", cache_dir=tmp_path, progress=False)
    assert DECODES.count == before + len(items)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    assert not list(tmp_path.glob("*.tmp*"))  # written under a temporary name, then renamed


def test_auto_cache_goes_to_disk_when_the_set_does_not_fit_the_memory_budget(
        photos: Path, tmp_path: Path):
    items = load_items(photos, valid_pct=0.0).train
    small = build_presized(items, 32, mode="auto", cache_dir=tmp_path, progress=False)
    assert small.where == "memory" and not list(tmp_path.glob("*.npy"))
    big = build_presized(items, 32, mode="auto", cache_dir=tmp_path, progress=False,
                         max_memory_bytes=1000)
    assert big.where.startswith("disk")
    assert torch.equal(big.images, small.images)


def test_a_12mp_jpeg_decodes_at_dct_scale_no_smaller_than_needed():
    data = phone_jpeg()
    spec, tta = EvalSpec(224, resize_ratio=1.14), TTASpec()
    side = decode_side(spec, tta)
    assert side == 294  # ceil(224 * 1.14 * 1.15): the zoomed TTA views need the most
    img = decode_image(data, min_side=side)
    assert img.size == (500, 375)  # libjpeg's 1/8 scale; 1/16 would be below 294
    assert min(decode_image(data, min_side=400).size) == 750  # 1/4: 375 would be too small
    assert decode_image(data).size == (4000, 3000)  # no min_side: the full image
    # PNG has no DCT: decoded in full whatever min_side says
    buf = io.BytesIO()
    Image.new("RGB", (800, 600), (1, 2, 3)).save(buf, "PNG")
    assert decode_image(buf.getvalue(), min_side=32).size == (800, 600)


def test_dct_decoding_stays_close_to_the_full_decode():
    data = phone_jpeg()
    spec = EvalSpec(32)
    fast = eval_view(decode_image(data, min_side=decode_side(spec)), spec).astype(np.int16)
    full = eval_view(decode_image(data), spec).astype(np.int16)
    assert np.abs(fast - full).mean() < 3.0  # grey levels of 255, on average


def test_training_evaluation_and_the_server_see_identical_tensors_for_a_phone_photo(
        tmp_path: Path):
    """One image path: the core's preprocessing and training's EvalDataset agree bit for bit
    on a 12 MP JPEG, with and without TTA, because both decode at the model's decode_side."""
    data = phone_jpeg()
    photo = tmp_path / "cls" / "phone.jpg"
    photo.parent.mkdir()
    photo.write_bytes(data)
    models = REPO_ROOT / "models"
    card = validate_version_dir(ModelRepository(models).resolve("digits").path)
    side = decode_side(card.eval_spec, card.tta)
    items = load_items(tmp_path, valid_pct=0.0, min_classes=1).train
    plain = EvalDataset(items, card.eval_spec, None, min_side=side)[0][0].numpy()
    views = EvalDataset(items, card.eval_spec, card.tta, min_side=side)[0][0].numpy()
    max_pixels = CoreConfig(models_dir=models).max_pixels  # what the core decodes with
    assert np.array_equal(image_rows(data, card, False, max_pixels), to_model_input(plain))
    assert np.array_equal(image_rows(data, card, True, max_pixels), to_model_input(views))
    assert np.array_equal(views[0], plain)  # TTA's center view is the plain view


def test_decoding_cost_of_a_12mp_jpeg_is_a_fraction_of_the_full_decode():
    """Not a timing goal (bench/imaging.py measures that): the DCT path must decode ~64x fewer
    pixels, which is where the time goes."""
    data = phone_jpeg()
    spec = EvalSpec(32)
    img = decode_image(data, min_side=decode_side(spec))
    assert img.size[0] * img.size[1] * 64 == 4000 * 3000
    assert tta_views(img, spec, TTASpec(views=("center", "hflip"), beta=None)).shape == \
        (2, 32, 32, 3)


@pytest.mark.parametrize("arch", ["airbench", "airbench_small"])
def test_small_photo_nets_classify_24_and_32_px_and_freeze_by_groups(arch: str):
    model = build_model(arch, 10)
    for size in (24, 32):
        assert model(torch.rand(2, 3, size, size)).shape == (2, 10)
    groups = model.layer_groups()
    assert len(groups) == 5  # stem, three blocks, head
    assert sum(len(g) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("fit", ["crop", "squish", "pad"])
def test_presize_fits_keep_what_they_promise_of_a_wide_photo(tmp_path: Path, fit: str):
    """A 4:3 photo with a red left edge and a blue right edge: "crop" loses both edges (the
    centre square), "squish" and "pad" keep the whole width."""
    arr = np.full((300, 400, 3), 128, np.uint8)
    arr[:, :40] = (255, 0, 0)
    arr[:, -40:] = (0, 0, 255)
    path = tmp_path / "wide.png"
    Image.fromarray(arr).save(path)
    out = presize_one(path, 60, "bilinear", fit)
    assert out.shape == (60, 60, 3) and out.dtype == np.uint8
    centre_row = out[30]
    has_red = (centre_row[:, 0] > 200).any()
    has_blue = (centre_row[:, 2] > 200).any()
    assert has_red == has_blue == (fit != "crop")
    if fit == "pad":  # 60x45 image, reflected into 7-8 rows above and below
        assert np.array_equal(out[7], out[8]) or np.array_equal(out[6], out[8])
