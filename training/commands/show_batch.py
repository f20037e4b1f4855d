"""Write a PNG grid of one augmented training batch, titled with the class labels.

Look before training: the grid shows exactly what the model will see after the item stage
(presize) and the batch augmentation (crop, flip, rotate, zoom, warp, lighting). With
``--config RECIPE`` (and ``--set`` overrides) it uses the recipe's data, augmentation, first
stage size and presize; the flags given on the command line still win.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from service.imaging import EvalSpec
from training.augment import AugmentConfig, BatchAugment
from training.commands._recipe_args import add_config_arg, add_set_arg
from training.commands.data_summary import add_data_arguments
from training.config import load_recipe
from training.data import build_dataloaders, load_items
from training.errors import ConfigError
from training.show import show_batch

# Without --config: the built-in defaults (fastai's aug_transforms).
DEFAULT_SIZE, DEFAULT_PRESIZE, DEFAULT_VALID_PCT, DEFAULT_SEED = 32, 48, 0.2, 42
NO_AUGMENT = AugmentConfig(min_scale=1.0, flip=False, max_rotate=0.0, max_zoom=1.0, max_warp=0.0,
                           max_lighting=0.0, p_affine=0.0, p_lighting=0.0)


def register(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser, from_recipe=True)
    add_config_arg(parser, required=False)
    add_set_arg(parser)
    parser.add_argument("--size", type=int, default=None,
                        help=f"training side, pixels (default: the recipe's first stage size, "
                             f"else {DEFAULT_SIZE})")
    parser.add_argument("--presize", type=int, default=None,
                        help="item-stage side before augmentation, pixels (default: the "
                             f"recipe's presize, else {DEFAULT_PRESIZE})")
    parser.add_argument("--n", type=int, default=16, help="images to show (default 16)")
    parser.add_argument("--min-scale", type=float, default=None,
                        help="smallest random crop area (default: the recipe's augment.min_scale, "
                             f"else {AugmentConfig.min_scale})")
    parser.add_argument("--no-augment", action="store_true",
                        help="show the batch resized only, without random augmentation")
    parser.add_argument("--output", type=Path, required=True, help="PNG file to write")


@dataclass(frozen=True)
class BatchView:
    """What the grid is made from, after the recipe (if any) and the flags are combined."""

    data: Path
    csv: Path | None
    label_regex: str | None
    valid_pct: float
    seed: int
    size: int
    presize: int
    augment: AugmentConfig


def resolve(args: argparse.Namespace) -> BatchView:
    """The flags given win; then the recipe (--config, --set); then the built-in defaults."""
    if args.config is None:
        if args.set:
            raise ConfigError("--set overrides a recipe: give --config RECIPE too")
        if args.data is None:
            raise ConfigError("show-batch needs --data DIR or --config RECIPE")
        view = BatchView(args.data, args.csv, None, DEFAULT_VALID_PCT, DEFAULT_SEED,
                         DEFAULT_SIZE, DEFAULT_PRESIZE, AugmentConfig())
    else:
        recipe = load_recipe(args.config, args.set)
        d = recipe.data
        view = BatchView(Path(d.path), Path(d.csv) if d.csv else None, d.label_regex,
                         d.valid_pct, d.seed, recipe.stages[0].size, recipe.presize,
                         recipe.augment)
    changes = {name: value for name, value in (
        ("data", args.data), ("csv", args.csv), ("label_regex", args.label_regex),
        ("valid_pct", args.valid_pct),
        ("seed", args.seed), ("size", args.size), ("presize", args.presize))
        if value is not None}
    augment = view.augment
    if args.no_augment:
        augment = NO_AUGMENT
    elif args.min_scale is not None:
        try:
            augment = dataclasses.replace(augment, min_scale=args.min_scale)
        except ValueError as e:
            raise ConfigError(f"--min-scale: {e}") from e
    return dataclasses.replace(view, augment=augment, **changes)


def run(args: argparse.Namespace) -> int:
    view = resolve(args)
    split = load_items(view.data, csv=view.csv, valid_pct=view.valid_pct, seed=view.seed,
                       label_regex=view.label_regex or "")
    dls = build_dataloaders(split, size=view.size, batch_size=args.n, presize=view.presize,
                            eval_spec=EvalSpec(view.size), seed=view.seed, drop_last=False)
    x, y = next(iter(dls.train))
    images = BatchAugment(view.augment, view.size)(x, torch.Generator().manual_seed(view.seed))
    out = show_batch(images, y, dls.classes, args.output)
    print(f"wrote {len(y)} augmented training images ({view.size}x{view.size}, presize "
          f"{view.presize}) to {out}")
    return 0
