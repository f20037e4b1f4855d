"""The LR finder is reproducible (seeded by train.seed) and says which suggestion to use."""

from __future__ import annotations

import json
from pathlib import Path

from training.cli import main

RECIPE = Path(__file__).parents[2] / "recipes" / "digits.toml"


def _lr_find(digits_dir: Path, out: Path, capsys, *extra: str) -> tuple[str, dict]:
    argv = ["lr-find", "--config", str(RECIPE), "--data", str(digits_dir), "--output", str(out),
            "--set", "stages.0.size=12", "--num-it", "25", "--start-lr", "1e-5", "--end-lr", "1",
            *extra]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    return printed, json.loads((out / "lr_find.json").read_text())


def test_same_seed_same_curve_and_suggestions_other_seed_another_curve(digits_dir, tmp_path,
                                                                         capsys):
    out_a, curve_a = _lr_find(digits_dir, tmp_path / "a", capsys)
    out_b, curve_b = _lr_find(digits_dir, tmp_path / "b", capsys)
    assert curve_a == curve_b  # bit for bit: model init, shuffling and augmentation are seeded
    assert out_a.split("plot:")[0] == out_b.split("plot:")[0]
    _, curve_c = _lr_find(digits_dir, tmp_path / "c", capsys, "--set", "train.seed=7")
    assert curve_c["losses"] != curve_a["losses"]


def test_the_used_suggestion_is_named_and_given_as_a_set(digits_dir, tmp_path, capsys):
    printed, curve = _lr_find(digits_dir, tmp_path, capsys, "--suggestion", "steep")
    steep = curve["suggestions"]["steep"]
    assert f"   steep: {steep:.3e}  <- used" in printed
    assert f"--set stages.0.lr={steep:.3g}" in printed
    assert "\r" not in printed  # no progress-bar frames when the output is not a terminal
    assert (tmp_path / "lr_find.png").stat().st_size > 10_000
