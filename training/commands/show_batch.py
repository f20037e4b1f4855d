"""Write a PNG grid of one augmented training batch, titled with the class labels.

Look before training: the grid shows exactly what the model will see after the item stage
(presize) and the batch augmentation (crop, flip, rotate, zoom, warp, lighting).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from service.imaging import EvalSpec
from training.augment import AugmentConfig, BatchAugment
from training.commands.data_summary import add_data_arguments
from training.data import build_dataloaders, load_items
from training.show import show_batch


def register(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--size", type=int, default=32, help="training side, pixels (default 32)")
    parser.add_argument("--presize", type=int, default=48,
                        help="item-stage side before augmentation, pixels (default 48)")
    parser.add_argument("--n", type=int, default=16, help="images to show (default 16)")
    parser.add_argument("--min-scale", type=float, default=AugmentConfig.min_scale,
                        help=f"smallest random crop area (default {AugmentConfig.min_scale})")
    parser.add_argument("--no-augment", action="store_true",
                        help="show the batch resized only, without random augmentation")
    parser.add_argument("--output", type=Path, required=True, help="PNG file to write")


def run(args: argparse.Namespace) -> int:
    split = load_items(args.data, csv=args.csv, valid_pct=args.valid_pct, seed=args.seed)
    dls = build_dataloaders(split, size=args.size, batch_size=args.n, presize=args.presize,
                            eval_spec=EvalSpec(args.size), seed=args.seed, drop_last=False)
    x, y = next(iter(dls.train))
    if args.no_augment:
        cfg = AugmentConfig(min_scale=1.0, flip=False, max_rotate=0.0, max_zoom=1.0,
                            max_warp=0.0, max_lighting=0.0, p_affine=0.0, p_lighting=0.0)
    else:
        cfg = AugmentConfig(min_scale=args.min_scale)
    images = BatchAugment(cfg, args.size)(x, torch.Generator().manual_seed(args.seed))
    out = show_batch(images, y, dls.classes, args.output)
    print(f"wrote {len(y)} augmented training images ({args.size}x{args.size}) to {out}")
    return 0
