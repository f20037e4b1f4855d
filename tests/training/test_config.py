"""Recipes: unknown keys and wrong types are errors naming the key; overrides win."""

from pathlib import Path

import pytest

from training.config import load_recipe, save_recipe
from training.errors import ConfigError

GOOD = """
[data]
path = "somewhere"
[train]
output = "runs/x"
mixup = 0.4
[[stages]]
size = 16
batch_size = 32
epochs = 2
lr = 3e-3
[[stages]]
size = 24
batch_size = 32
epochs = 1
lr = 1e-3
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


def test_good_recipe_loads_and_round_trips(tmp_path):
    r = load_recipe(write(tmp_path, GOOD))
    assert [s.size for s in r.stages] == [16, 24]
    assert r.train.mixup == 0.4 and r.presize == 30
    save_recipe(r, tmp_path / "resolved.toml")
    assert load_recipe(tmp_path / "resolved.toml") == r


@pytest.mark.parametrize("text, key", [
    (GOOD.replace("mixup = 0.4", "mixupp = 0.4"), "mixupp"),
    (GOOD.replace("lr = 3e-3", 'lr = "fast"'), "stages[0].lr"),
    (GOOD.replace("epochs = 2", "epochs = 2.5"), "stages[0].epochs"),
    (GOOD.replace('path = "somewhere"', "path = 3"), "data.path"),
    (GOOD + "\n[nonsense]\nx = 1\n", "nonsense"),
])
def test_bad_recipes_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_recipe(write(tmp_path, text))


def test_choice_and_range_errors(tmp_path):
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        load_recipe(write(tmp_path, GOOD), ["train.mixed_precision='fp8'"])
    with pytest.raises(ConfigError, match="presize"):
        load_recipe(write(tmp_path, GOOD), ["data.presize=20"])
    with pytest.raises(ConfigError, match="TTA view"):
        load_recipe(write(tmp_path, GOOD), ["tta.views=['center','spin']"])


def test_overrides_set_nested_and_stage_keys(tmp_path):
    r = load_recipe(write(tmp_path, GOOD), ["train.mixup=0.0", "stages.1.lr=5e-4",
                                            "data.path=other/folder"])
    assert r.train.mixup == 0.0 and r.stages[1].lr == 5e-4 and r.data.path == "other/folder"
    with pytest.raises(ConfigError, match="key=value"):
        load_recipe(write(tmp_path, GOOD), ["train.mixup"])


@pytest.mark.parametrize("command", ["fit", "lr-find", "ablation", "show-batch"])
def test_invalid_toml_given_to_config_is_a_clear_cli_error(tmp_path, capsys, command):
    from training.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nmixup = 0.4\n")
    extra = ["--output", str(tmp_path / "grid.png")] if command == "show-batch" else []
    assert main([command, "--config", str(bad), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: recipe ") and str(bad) in err
    assert "is not valid TOML" in err and "line 1" in err
    assert "Traceback" not in err


def test_missing_config_file_is_a_clear_cli_error(tmp_path, capsys):
    from training.cli import main

    assert main(["fit", "--config", str(tmp_path / "nope.toml"), "--epochs", "1"]) == 2
    assert f"recipe {tmp_path / 'nope.toml'} not found" in capsys.readouterr().err


def test_tta_defaults_are_the_services(tmp_path):
    """A recipe without [tta] records exactly the TTA the service applies by default."""
    from service.imaging import TTASpec
    from training.config import tta_spec

    assert tta_spec(load_recipe(write(tmp_path, GOOD))) == TTASpec()
