"""Flags shared by the commands that take a recipe (fit, lr-find, ablation; show-batch takes
--config and --set only), and the one way they become a Recipe: the file, then ``--set``, then
the named flags as typed values (the command line wins)."""

from __future__ import annotations

import argparse

from training.config import DEVICES, Recipe, load_recipe, with_values

# named flag (argparse dest) -> the recipe key it sets; a flag a command lacks is skipped
FLAG_KEYS = {
    "data": "data.path",
    "csv": "data.csv",
    "arch": "model.arch",
    "pretrained": "model.pretrained",
    "init_from": "model.init_from",
    "output": "train.output",
    "device": "train.device",
    "log": "log.loggers",
    "mlflow_uri": "log.mlflow_uri",
}
STAGE_FLAGS = ("epochs", "lr")  # set on every stage


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
    parser.add_argument("--device", choices=DEVICES, help="overrides train.device")
    add_set_arg(parser)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """Recipe file, then --set overrides, then the named flags (the command line wins);
    ConfigError (never a traceback) for a missing file, invalid TOML, or a bad key or value."""
    recipe = load_recipe(args.config, list(args.set))
    values = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items()
              if getattr(args, flag, None)}
    stage_values = {flag: getattr(args, flag) for flag in STAGE_FLAGS
                    if getattr(args, flag, None) is not None}
    if not values and not stage_values:
        return recipe
    return with_values(recipe, values, stage_values)
