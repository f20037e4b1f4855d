"""The checkpoint format: docs/architecture.md's table is the dataclass and the saved files, old
files still load (or say which format they are), and bad files fail in one line."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from service.imaging import TTASpec
from training.checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from training.config import load_recipe
from training.errors import ConfigError, ExportError
from training.models import build_model
from training.phases import fit

ROOT = Path(__file__).parents[2]
RECIPE = ROOT / "recipes" / "digits.toml"


def documented_keys() -> list[str]:
    """The keys in the first column of the "Checkpoint format" section's table."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## Checkpoint format"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"^\| `(\w+)` \|", section, flags=re.M)


@pytest.fixture(scope="module")
def run(digits_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    recipe = load_recipe(RECIPE, [f'data.path="{digits_dir}"', f'train.output="{out}"',
                                  "stages.0.epochs=1", "stages.1.epochs=0", "stages.0.size=12"])
    fit(recipe, progress=False)
    return out


def test_the_documented_keys_are_the_dataclass_and_the_saved_files(run):
    fields = [f.name for f in dataclasses.fields(Checkpoint)]
    assert documented_keys() == fields
    for name in ("best.pt", "last.pt"):
        raw = torch.load(run / name, map_location="cpu", weights_only=False)
        assert list(raw) == fields, name
        assert raw["format"] == CHECKPOINT_FORMAT
    last = load_checkpoint(run / "last.pt")
    best = load_checkpoint(run / "best.pt")
    assert last.progress == {"phase": 0, "epoch": 1} and len(last.history) == 1
    assert last.optimizer is not None and last.scheduler is not None
    assert best.optimizer is None and best.scheduler is None and best.ema is None
    assert best.world_size == 1 and best.best_metric == best.metrics["accuracy"]


def old_checkpoint(path: Path, **extra) -> dict:
    """A best.pt as the previous code wrote it: a plain dict, no run-level keys, an "rng"."""
    model = build_model("xresnet_tiny", 3, mean=[0.5] * 3, std=[0.25] * 3)
    raw = {"arch": "xresnet_tiny", "classes": ["a", "b", "c"], "mean": [0.5] * 3,
           "std": [0.25] * 3, "eval_spec": {"size": 16, "resize_ratio": 1.0,
                                            "interpolation": "bilinear"},
           "model": model.state_dict(), "recipe": {}, "metrics": {"accuracy": 0.5},
           "rng": {"torch": torch.get_rng_state()}, **extra}
    torch.save(raw, path)
    return raw


def test_an_older_checkpoint_loads_with_the_same_weights(tmp_path):
    raw = old_checkpoint(tmp_path / "old.pt")  # no "format" key: read as this format
    model, ckpt = load_model(tmp_path / "old.pt", torch.device("cpu"))
    assert ckpt.format == CHECKPOINT_FORMAT and ckpt.tta_spec == TTASpec()
    assert ckpt.history == [] and ckpt.world_size == 1
    for k, v in raw["model"].items():
        assert torch.equal(model.state_dict()[k], v), k
    save_checkpoint(ckpt, tmp_path / "again.pt")  # and it is written in today's layout
    assert list(torch.load(tmp_path / "again.pt", weights_only=False)) == [
        f.name for f in dataclasses.fields(Checkpoint)]


def test_an_old_last_pt_cannot_resume_and_says_why(digits_dir, tmp_path):
    old_checkpoint(tmp_path / "last.pt", progress={"stage": 0, "epoch": 1})
    recipe = load_recipe(RECIPE, [f'data.path="{digits_dir}"', f'train.output="{tmp_path}"',
                                  'model.arch="xresnet_tiny"', "stages.1.epochs=0"])
    with pytest.raises(ConfigError, match=rf"records no phase progress.*{CHECKPOINT_FORMAT}"):
        fit(recipe, resume=True, progress=False)


def test_another_format_or_a_foreign_file_is_one_clear_error(tmp_path):
    old_checkpoint(tmp_path / "v9.pt", format="tta-serve-checkpoint/9")
    with pytest.raises(ConfigError, match=r"format 'tta-serve-checkpoint/9'; this version reads "
                                          r"'tta-serve-checkpoint/1'"):
        load_checkpoint(tmp_path / "v9.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ExportError, match=r"not a tta-serve training checkpoint \(a list\)"):
        load_checkpoint(tmp_path / "list.pt", error=ExportError)
    (tmp_path / "text.pt").write_text("not a pickle")
    with pytest.raises(ConfigError, match="is not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
