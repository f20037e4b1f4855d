"""Flags shared by the commands that take a recipe (fit, lr-find, ablation; show-batch takes
--config and --set only), and the one way they become a Recipe: the file (without --config, the
default photo recipe for --data: training.photo_recipe), then ``--set``, then the named flags as
typed values (the command line wins)."""

from __future__ import annotations

import argparse

from training.config import (
    DEVICES,
    Recipe,
    apply_override,
    read_recipe_file,
    recipe_from_dict,
    with_values,
)
from training.errors import ConfigError
from training.photo_recipe import DEFAULT_ARCH, photo_recipe_dict

# named flag (argparse dest) -> the recipe key it sets; a flag a command lacks is skipped
FLAG_KEYS = {
    "data": "data.path",
    "csv": "data.csv",
    "label_regex": "data.label_regex",
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
    parser.add_argument("--config", help="recipe TOML file (see recipes/); without it, the "
                                         "default photo recipe for --data (`training recipe "
                                         "--data DIR` prints it)")
    parser.add_argument("--data", help="image folder; overrides data.path")
    parser.add_argument("--csv", help="CSV of path,label[,is_valid] (paths relative to it); "
                                      "overrides data.csv")
    parser.add_argument("--label-regex", metavar="REGEX",
                        help="labels from file names: the regex's first group, e.g. "
                             r"'(.+)_\d+.jpg$'; overrides data.label_regex")
    parser.add_argument("--arch", help="architecture (xresnet18, resnet50, timm/resnet50d, ...); "
                                       "overrides model.arch")
    parser.add_argument("--pretrained", metavar="PATH", nargs="?", const="imagenet",
                        help="without PATH: the arch's published ImageNet weights (torchvision's "
                             "DEFAULT via torch.hub's cache, timm's via the Hugging Face cache; "
                             "downloaded once); with PATH: a local weights file (a torchvision "
                             "or timm state dict, or a tta-serve checkpoint); overrides "
                             "model.pretrained")
    parser.add_argument("--output", help="run folder; overrides train.output")
    parser.add_argument("--epochs", type=int, help="epochs of every stage")
    parser.add_argument("--lr", type=float, help="peak learning rate of every stage")
    parser.add_argument("--device", choices=DEVICES, help="overrides train.device")
    add_set_arg(parser)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """Recipe file, then --set overrides, then the named flags (the command line wins);
    ConfigError (never a traceback) for a missing file, invalid TOML, or a bad key or value."""
    if args.config:
        raw = read_recipe_file(args.config)
    elif getattr(args, "data", None):
        raw = photo_recipe_dict(args.data, arch=getattr(args, "arch", None) or DEFAULT_ARCH,
                                device=getattr(args, "device", None) or "auto")
    else:
        raise ConfigError("give --config RECIPE, or --data PHOTOS for the default photo recipe "
                          "(`training recipe --data PHOTOS > my.toml` prints it to edit)")
    for item in args.set:
        apply_override(raw, item)
    recipe = recipe_from_dict(raw)
    values = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items()
              if getattr(args, flag, None)}
    stage_values = {flag: getattr(args, flag) for flag in STAGE_FLAGS
                    if getattr(args, flag, None) is not None}
    if not values and not stage_values:
        return recipe
    return with_values(recipe, values, stage_values)
