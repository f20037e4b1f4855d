"""The newcomer's README path: every mistake on it is a one-line error that says what to do,
and the README's commands and flags are the ones the CLI accepts."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import shlex
import typing
from pathlib import Path

import pytest

from training.cli import build_parser, main
from training.config import BOUNDS, Recipe, load_recipe, recipe_from_dict
from training.errors import ConfigError

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
RECIPE = ROOT / "recipes" / "digits.toml"
OTHER_TOOLS_FLAGS = {"--nproc-per-node", "--nnodes", "--rdzv-id", "--rdzv-backend",
                     "--rdzv-endpoint", "--standalone",  # torchrun
                     "--logdir", "--backend-store-uri"}  # tensorboard, mlflow ui


def _training_commands(text: str) -> list[list[str]]:
    """argv of every `training ...` command in the README's bash blocks and inline code."""
    commands = []
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [ln for b in blocks for ln in b.replace("\\\n", " ").splitlines()]
    # inline commands with options in the training sections (`training fit` alone names the
    # command, it is no example; the serving sections mention flags in prose)
    training_part = text[text.index("## The recipe"):]
    lines += [c for c in re.findall(r"`((?:\.venv/bin/)?training [^`\[]+)`", training_part)
              if " -" in c]
    for line in lines:
        line = line.split(" #")[0]
        m = re.search(r"(?:^|\s|/|-m )training (\S.*)$", line)
        if m and "training/" not in line:
            commands.append(shlex.split(m.group(1)))
    return commands


def test_every_training_command_in_the_readme_parses():
    commands = _training_commands(README.read_text())
    assert len(commands) >= 10, commands  # the quickstart, export, ablation, torchrun ...
    parser = build_parser()
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit as e:  # argparse's "unrecognized arguments" / "invalid choice"
            raise AssertionError(f"README command `training {shlex.join(argv)}` does not "
                                 "parse") from e


def _all_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = set()
    for action in parser._actions:
        flags.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _all_flags(sub)
    return flags


def test_every_flag_the_readmes_training_sections_name_exists():
    text = README.read_text()
    training_part = text[text.index("## The recipe"):]
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", training_part))
    missing = named - _all_flags(build_parser()) - OTHER_TOOLS_FLAGS
    assert not missing, f"README names flags the training CLI does not have: {sorted(missing)}"


def test_named_flags_set_the_recipe_keys_they_say():
    from training.commands._recipe_args import recipe_from_args

    args = build_parser().parse_args([
        "fit", "--config", str(RECIPE), "--pretrained", "w.pt", "--csv", "labels.csv",
        "--arch", "resnet18", "--data", "imgs", "--output", "runs/x", "--device", "cpu"])
    recipe = recipe_from_args(args)
    assert (recipe.model.pretrained, recipe.data.csv, recipe.model.arch) == (
        "w.pt", "labels.csv", "resnet18")
    assert (recipe.data.path, recipe.train.output, recipe.train.device) == (
        "imgs", "runs/x", "cpu")


def test_fit_with_a_missing_pretrained_file_is_one_line(digits_dir, tmp_path, capsys):
    code = main(["fit", "--config", str(RECIPE), "--data", str(digits_dir), "--output",
                 str(tmp_path), "--pretrained", str(tmp_path / "nope.pt")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: pretrained weights file")
    assert "--pretrained without a path" in err
    assert "Traceback" not in err


def test_evaluate_given_a_recipe_says_it_wants_a_checkpoint(capsys):
    assert main(["evaluate", str(RECIPE)]) == 2
    err = capsys.readouterr().err
    assert "is not a PyTorch checkpoint" in err and "training fit --config" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_evaluate_given_a_plain_state_dict_says_what_it_is(tmp_path, capsys):
    import torch

    torch.save({"weight": torch.zeros(2)}, tmp_path / "weights.pt")
    assert main(["evaluate", str(tmp_path / "weights.pt")]) == 2
    assert "not a tta-serve training checkpoint" in capsys.readouterr().err


def test_negative_mixup_is_refused_with_its_range(capsys):
    assert main(["fit", "--config", str(RECIPE), "--set", "train.mixup=-1"]) == 2
    err = capsys.readouterr().err
    assert "train.mixup must be >= 0, got -1.0" in err


def _numeric_keys(cls: type, prefix: str = "") -> list[tuple[str, type]]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _numeric_keys(tp, f.name)
        elif tp in (int, float) and prefix:
            out.append((f"{prefix}.{f.name}", tp))
    return out


NUMERIC_KEYS = _numeric_keys(Recipe)
NEGATIVE_ALLOWED = {"tta.beta"}  # negative: every TTA view weighs the same


@pytest.mark.parametrize("key,tp", NUMERIC_KEYS, ids=[k for k, _ in NUMERIC_KEYS])
def test_every_numeric_key_is_range_checked(key, tp):
    """A new numeric recipe key without bounds fails here: add it to config.BOUNDS."""
    section, name = key.split(".")
    bad = -1 if tp is int else (-1.0 if key not in NEGATIVE_ALLOWED else 2.0)
    low = BOUNDS.get(key, (None,))[0]
    if low is not None and bad >= low:  # -1 is allowed ("every epoch"): one below the bound
        bad = low - 1
    d = {"stages": [{"size": 16, "batch_size": 8, "epochs": 1, "lr": 1e-3}],
         section: {name: bad}}
    with pytest.raises(ConfigError, match=re.escape(key.split(".")[1])):
        recipe_from_dict(d)


def test_nan_learning_rate_is_refused():
    with pytest.raises(ConfigError, match=r"stages\[0\].lr must be > 0"):
        load_recipe(RECIPE, ["stages.0.lr=nan"])


def test_make_digits_says_what_it_wrote_once(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    assert main(["make-digits", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    logged = [r for r in caplog.records if r.levelno >= logging.INFO and "wrote" in r.getMessage()]
    assert out.count("wrote 1797 images") == 1 and not logged


def test_ctrl_c_names_last_pt_and_the_resume_command_then_resume_finishes(
        digits_dir, tmp_path, capsys, ctrl_c_in_second_epoch):
    """A fit interrupted in its second epoch (as Ctrl-C would: KeyboardInterrupt) exits 130,
    names last.pt and the exact command that continues; that command finishes the run.
    Its output (not a terminal here) has one line per epoch and no progress-bar frames."""
    out_dir = tmp_path / "run"
    argv = ["fit", "--config", str(RECIPE), "--data", str(digits_dir), "--output", str(out_dir),
            "--set", "stages.0.epochs=2", "--set", "stages.1.epochs=0", "--no-tta"]
    assert main(argv) == 130
    captured = capsys.readouterr()
    assert f"saved in {out_dir / 'last.pt'}" in captured.err
    assert "Traceback" not in captured.err
    resume = captured.err.strip().splitlines()[-1].strip()
    assert resume.startswith("training fit ") and resume.endswith("--resume")
    assert "\r" not in captured.out + captured.err

    ctrl_c_in_second_epoch()  # validate as it is, for the resumed run
    assert main(shlex.split(resume)[1:]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    epoch_lines = [ln for ln in captured.out.splitlines() if ln.startswith("stage1 ")]
    assert len(epoch_lines) == 1  # only the epoch that was left: epoch 2
    history = json.loads((out_dir / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_init_from_a_path_with_a_quote_and_a_backslash_is_taken_as_typed(digits_dir, tmp_path,
                                                                         capsys):
    """Named flags reach the recipe as values, never through TOML text a path could break."""
    from training.commands._recipe_args import recipe_from_args

    weird = tmp_path / 'run "best" \\ v2' / "best.pt"
    args = build_parser().parse_args(["fit", "--config", str(RECIPE), "--init-from", str(weird),
                                      "--log", "csv", "--epochs", "0"])
    recipe = recipe_from_args(args)
    assert recipe.model.init_from == str(weird)
    assert recipe.log.loggers == ["csv"] and [s.epochs for s in recipe.stages] == [0, 0]
    code = main(["fit", "--config", str(RECIPE), "--data", str(digits_dir), "--output",
                 str(tmp_path / "out"), "--init-from", str(weird)])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"error: checkpoint {weird} not found"


def test_named_flags_are_validated_like_the_recipe(capsys):
    assert main(["fit", "--config", str(RECIPE), "--epochs", "-1"]) == 2
    assert "stages[0].epochs must be >= 0, got -1" in capsys.readouterr().err
