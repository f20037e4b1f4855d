"""Summarise a dataset before training: source, classes, counts per split, sizes, problems.

Finds what would stop or spoil training (missing files, empty or single classes, unreadable
images) in seconds, like fastai's DataBlock.summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.data import format_summary, load_items


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data / --csv / --valid-pct / --seed, shared with show-batch."""
    parser.add_argument("--data", type=Path, required=True,
                        help="image folder: <class>/ sub-folders, or train/ and valid/ (or val/)")
    parser.add_argument("--csv", type=Path, default=None,
                        help="CSV of path,label[,is_valid] (paths relative to the CSV or --data)")
    parser.add_argument("--valid-pct", type=float, default=0.2,
                        help="fraction held out when the data has no split (default 0.2)")
    parser.add_argument("--seed", type=int, default=42, help="random split seed (default 42)")


def register(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--no-check-images", action="store_true",
                        help="do not open every image (faster; no sizes, corrupt files not found)")


def run(args: argparse.Namespace) -> int:
    split = load_items(args.data, csv=args.csv, valid_pct=args.valid_pct, seed=args.seed,
                       check_images=not args.no_check_images)
    print(format_summary(split))
    return 0
