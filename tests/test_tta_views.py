"""service.imaging's translate TTA views ("shift:DX,DY", "hflip_shift:DX,DY"): pixel-exact on
tiny arrays, the same as PyTorch's reflect padding (airbench's multi-crop TTA), and refused with
a message naming the view wherever a view list is read (TTASpec, model.json, a recipe)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from service.imaging import (
    EvalSpec,
    TTASpec,
    decode_side,
    eval_view,
    shift_reflect,
    tta_views,
)
from service.model_repository import InvalidModelError, ModelCard, validate_version_dir

GRID = np.arange(12).reshape(3, 4)  # rows [0 1 2 3], [4 5 6 7], [8 9 10 11]
BUNDLED = Path(__file__).parents[1] / "models" / "cifar10" / "1"


def test_shift_right_fills_the_left_column_by_reflection():
    # Reflect does not repeat the edge: left of column 0 comes column 1.
    assert shift_reflect(GRID, 1, 0).tolist() == [[1, 0, 1, 2], [5, 4, 5, 6], [9, 8, 9, 10]]


def test_shift_left_and_down_reflect_at_both_borders():
    assert shift_reflect(GRID, -2, 1).tolist() == [[6, 7, 6, 5], [2, 3, 2, 1], [6, 7, 6, 5]]
    assert shift_reflect(GRID, 0, -1).tolist() == [[4, 5, 6, 7], [8, 9, 10, 11], [4, 5, 6, 7]]
    assert shift_reflect(GRID, 0, 0).tolist() == GRID.tolist()


def test_shift_keeps_channels_and_dtype():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    out = shift_reflect(rgb, 2, -1)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert (out[:-1, 2:] == rgb[1:, :-2]).all()  # 2 px right, 1 px up: the moved pixels


def test_shifts_equal_torch_reflect_pad_crops_as_airbench_takes_them():
    """airbench pads by 1 with F.pad(..., 'reflect') and crops [0:H, 0:W] and [2:, 2:]."""
    rgb = np.random.default_rng(1).integers(0, 256, (7, 7, 3), dtype=np.uint8)
    padded = F.pad(torch.from_numpy(rgb).permute(2, 0, 1)[None].float(), (1, 1, 1, 1),
                   mode="reflect")[0].permute(1, 2, 0).numpy().astype(np.uint8)
    assert (shift_reflect(rgb, 1, 1) == padded[0:7, 0:7]).all()
    assert (shift_reflect(rgb, -1, -1) == padded[2:9, 2:9]).all()


def test_shift_by_the_whole_view_is_refused():
    with pytest.raises(ValueError, match="smaller than the 4x3 view"):
        shift_reflect(GRID, 4, 0)


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(2)
    return Image.fromarray(rng.integers(0, 256, (20, 26, 3), dtype=np.uint8))


def test_tta_views_computes_shift_views_from_the_plain_view(photo):
    spec = EvalSpec(size=16)
    tta = TTASpec(views=("center", "hflip", "shift:+2,+0", "hflip_shift:+2,+0", "shift:-1,+3",
                         "shift:0,0"), beta=None)
    views = tta_views(photo, spec, tta)
    center = eval_view(photo, spec)
    assert views.shape == (6, 16, 16, 3) and views.dtype == np.uint8
    assert (views[0] == center).all() and (views[1] == center[:, ::-1]).all()
    assert (views[2] == shift_reflect(center, 2, 0)).all()
    assert (views[3] == shift_reflect(center, 2, 0)[:, ::-1]).all()  # the mirror of the shift
    assert (views[4] == shift_reflect(center, -1, 3)).all()
    assert (views[5] == center).all()
    assert not (views[2] == center).all()


def test_shift_views_decode_as_the_plain_view_does():
    spec = EvalSpec(size=32, resize_ratio=1.14)
    plain = decode_side(spec, TTASpec(views=("center", "hflip")))
    assert decode_side(spec, TTASpec(views=("center", "shift:+4,-4", "hflip_shift:-4,+4"))) \
        == plain
    assert decode_side(spec, TTASpec(views=("center", "shift:+1,+1", "top_left"))) > plain


@pytest.mark.parametrize("view", ["shift:1", "shift:+1.5,0", "shift: 1,0", "vflip_shift:1,1",
                                  "SHIFT:1,1", "shift:1,1,", "spin"])
def test_an_unknown_view_is_named_with_the_grammar(view):
    with pytest.raises(ValueError, match="unknown TTA view") as e:
        TTASpec(views=("center", view))
    assert repr(view) in str(e.value) and "hflip_shift:DX,DY" in str(e.value)


def test_a_shift_the_input_size_cannot_hold_is_refused_by_the_model_card():
    card = ModelCard.from_dict(json.loads((BUNDLED / "model.json").read_text()))
    tta = TTASpec(views=("center", "shift:+32,+0"))
    with pytest.raises(ValueError, match=r"'shift:\+32,\+0'.*< 32"):
        ModelCard(card.name, card.version, card.classes, card.eval_spec, tta, card.sha256)


def test_model_json_with_an_unknown_view_is_an_invalid_model_naming_it(tmp_path):
    version = tmp_path / "cifar10" / "1"
    shutil.copytree(BUNDLED, version)
    card = json.loads((version / "model.json").read_text())
    card["tta"]["views"] = ["center", "hflip", "shift:+1,+1", "shfit:-1,-1"]
    (version / "model.json").write_text(json.dumps(card))
    with pytest.raises(InvalidModelError, match=r"model.json is not valid.*'shfit:-1,-1'"):
        validate_version_dir(version)
    card["tta"]["views"] = ["center", "hflip", "shift:+1,+1", "hflip_shift:-1,-1"]
    (version / "model.json").write_text(json.dumps(card))
    assert validate_version_dir(version).tta.views[2:] == ("shift:+1,+1", "hflip_shift:-1,-1")


def test_recipe_view_errors_name_the_view(tmp_path):
    from training.config import ConfigError, load_recipe, tta_spec

    recipe = Path(__file__).parents[1] / "recipes" / "cifar10.toml"
    with pytest.raises(ConfigError, match=r"\[tta\].*'shift:\+2'"):
        load_recipe(recipe, ["tta.views=['center','shift:+2']"])
    with pytest.raises(ConfigError, match=r"'shift:\+24,\+0'.*24 px"):  # stage 1 is 24 px
        load_recipe(recipe, ["tta.views=['center','shift:+24,+0']"])
    ok = load_recipe(recipe, ["tta.views=['center','hflip','shift:+2,+0','hflip_shift:+2,+0']"])
    assert tta_spec(ok).views == ("center", "hflip", "shift:+2,+0", "hflip_shift:+2,+0")
