"""Print the default photo recipe for a folder as TOML, to save, edit and train with --config.

``training recipe --data photos/ > my.toml`` writes exactly what ``training fit --data photos/``
trains without --config (training/photo_recipe.py says how each number was chosen).
"""

from __future__ import annotations

import argparse

from training.config import DEVICES, recipe_from_dict
from training.photo_recipe import DEFAULT_ARCH, photo_recipe_dict, photo_recipe_toml


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="image folder: <class>/ sub-folders, "
                                                      "train/ + valid/, or photos named by class")
    parser.add_argument("--csv", help="CSV of path,label[,is_valid] instead of class folders")
    parser.add_argument("--label-regex", default="", metavar="REGEX",
                        help=r"labels from file names, e.g. '(.+)_\d+.jpg$'")
    parser.add_argument("--arch", default=DEFAULT_ARCH,
                        help=f"torchvision or timm/NAME architecture (default {DEFAULT_ARCH}; "
                             "resnet18 is smaller and faster)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="the machine the sizes and epochs are chosen for (default: this "
                             "one's GPU if it has one, else its CPU)")


def run(args: argparse.Namespace) -> int:
    options = {"arch": args.arch, "device": args.device, "csv": args.csv,
               "label_regex": args.label_regex}
    recipe_from_dict(photo_recipe_dict(args.data, **options))  # a bad value fails here, not later
    print(photo_recipe_toml(args.data, **options), end="")
    return 0
