"""Summarise a dataset before training: source, classes, counts per split, sizes, problems.

Finds what would stop or spoil training (missing files, empty or single classes, unreadable
images) in seconds, like fastai's DataBlock.summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.data import format_summary, load_items
from training.data.summary import MIN_PER_CLASS


def add_data_arguments(parser: argparse.ArgumentParser, *, from_recipe: bool = False) -> None:
    """--data / --csv / --valid-pct / --seed, shared with show-batch.

    ``from_recipe``: the command also takes --config, so every flag is optional and defaults to
    None (the caller falls back to the recipe's [data], else to the defaults named here).
    """
    where = "the recipe's, else " if from_recipe else ""
    parser.add_argument("--data", type=Path, required=not from_recipe,
                        help="image folder: <class>/ sub-folders, or train/ and valid/ (or val/)"
                             + ("; default: the recipe's data.path" if from_recipe else ""))
    parser.add_argument("--csv", type=Path, default=None,
                        help="CSV of path,label[,is_valid] (paths relative to the CSV or --data)")
    parser.add_argument("--label-regex", default=None, metavar="REGEX",
                        help=r"labels from file names: the regex's first group, e.g. "
                             r"'(.+)_\d+.jpg$'" + (" (default: the recipe's)" if from_recipe
                                                    else ""))
    parser.add_argument("--valid-pct", type=float, default=None if from_recipe else 0.2,
                        help=f"fraction held out when the data has no split (default {where}0.2)")
    parser.add_argument("--seed", type=int, default=None if from_recipe else 42,
                        help=f"random split seed (default {where}42)")


def register(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--min-per-class", type=int, default=MIN_PER_CLASS, metavar="N",
                        help=f"warn about classes with fewer than N training photos (default "
                             f"{MIN_PER_CLASS})")
    parser.add_argument("--no-check-images", action="store_true",
                        help="do not open every image (faster; no sizes, corrupt files not found)")


def run(args: argparse.Namespace) -> int:
    split = load_items(args.data, csv=args.csv, valid_pct=args.valid_pct, seed=args.seed,
                       check_images=not args.no_check_images, label_regex=args.label_regex or "")
    print(format_summary(split, min_per_class=args.min_per_class))
    return 0
