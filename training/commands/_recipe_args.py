"""Flags shared by the commands that take a recipe (fit, lr-find, ablation)."""

from __future__ import annotations

import argparse

from training.config import Recipe, load_recipe


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="recipe TOML file (see recipes/)")
    parser.add_argument("--data", help="image folder; overrides data.path")
    parser.add_argument("--output", help="run folder; overrides train.output")
    parser.add_argument("--epochs", type=int, help="epochs of every stage")
    parser.add_argument("--lr", type=float, help="peak learning rate of every stage")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe key, e.g. --set train.mixup=0.4 "
                             "--set stages.0.size=16 (repeatable)")


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """Recipe file, then --set overrides, then the named flags (the command line wins)."""
    import tomllib
    from pathlib import Path

    overrides = list(args.set)
    if args.data:
        overrides.append(f"data.path={_q(args.data)}")
    if args.output:
        overrides.append(f"train.output={_q(args.output)}")
    if args.device:
        overrides.append(f"train.device={_q(args.device)}")
    n_stages = len(tomllib.loads(Path(args.config).read_text()).get("stages", [])) \
        if Path(args.config).is_file() else 0
    for i in range(n_stages):
        if args.epochs is not None:
            overrides.append(f"stages.{i}.epochs={args.epochs}")
        if args.lr is not None:
            overrides.append(f"stages.{i}.lr={args.lr}")
    return load_recipe(args.config, overrides)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
