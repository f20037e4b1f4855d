"""Flags shared by the commands that take a recipe (fit, lr-find, ablation; show-batch takes
--config and --set only)."""

from __future__ import annotations

import argparse

from training.config import Recipe, apply_override, read_recipe_file, recipe_from_dict


def add_config_arg(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="recipe TOML file (see recipes/)")


def add_set_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe key, e.g. --set train.mixup=0.4 "
                             "--set stages.0.size=16 (repeatable)")


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    add_config_arg(parser)
    parser.add_argument("--data", help="image folder; overrides data.path")
    parser.add_argument("--csv", help="CSV of path,label[,is_valid] (paths relative to it); "
                                      "overrides data.csv")
    parser.add_argument("--arch", help="architecture (xresnet18, resnet50, timm/resnet50d, ...); "
                                       "overrides model.arch")
    parser.add_argument("--pretrained", metavar="PATH",
                        help="local weights file for the body (a torchvision or timm state dict, "
                             "or a tta-serve checkpoint; nothing is downloaded); overrides "
                             "model.pretrained")
    parser.add_argument("--output", help="run folder; overrides train.output")
    parser.add_argument("--epochs", type=int, help="epochs of every stage")
    parser.add_argument("--lr", type=float, help="peak learning rate of every stage")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device")
    add_set_arg(parser)


def load_with_overrides(config: str, overrides: list[str]) -> Recipe:
    """The recipe file with ``key=value`` overrides; ConfigError (never a traceback) for a
    missing file, invalid TOML, or a bad key or value."""
    d = read_recipe_file(config)
    for item in overrides:
        apply_override(d, item)
    return recipe_from_dict(d)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """Recipe file, then --set overrides, then the named flags (the command line wins)."""
    overrides = list(args.set)
    for flag, key in (("data", "data.path"), ("csv", "data.csv"), ("arch", "model.arch"),
                      ("pretrained", "model.pretrained"), ("output", "train.output"),
                      ("device", "train.device")):
        if getattr(args, flag, None):
            overrides.append(f"{key}={_q(getattr(args, flag))}")
    stages = read_recipe_file(args.config).get("stages", [])
    for i in range(len(stages) if isinstance(stages, list) else 0):
        if args.epochs is not None:
            overrides.append(f"stages.{i}.epochs={args.epochs}")
        if args.lr is not None:
            overrides.append(f"stages.{i}.lr={args.lr}")
    return load_with_overrides(args.config, overrides)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
