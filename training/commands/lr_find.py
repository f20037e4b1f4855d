"""Find a learning rate: LR-vs-loss plot (PNG) with the minimum/steep/valley/slide suggestions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.commands._recipe_args import add_recipe_args, recipe_from_args


def register(parser: argparse.ArgumentParser) -> None:
    add_recipe_args(parser)
    parser.add_argument("--num-it", type=int, default=100, help="mini-batches at most")
    parser.add_argument("--start-lr", type=float, default=1e-7)
    parser.add_argument("--end-lr", type=float, default=10.0)
    parser.add_argument("--suggestion", choices=["minimum", "steep", "valley", "slide"],
                        default="valley", help="the suggestion to use (marked on the plot and "
                                               "printed as a --set; default: valley, as fastai)")


def run(args: argparse.Namespace) -> int:
    from training.run import run_lr_find

    recipe = recipe_from_args(args)
    result, png = run_lr_find(recipe, num_it=args.num_it, start_lr=args.start_lr,
                              end_lr=args.end_lr, use=args.suggestion)
    for name, lr in result.suggestions.items():
        print(f"{name:>8}: {lr:.3e}" + ("  <- used" if name == args.suggestion else ""))
    used = result.suggestions[args.suggestion]
    print(f"the recipe's first stage has lr {recipe.stages[0].lr:.3e}; to use {args.suggestion}: "
          f"--set stages.0.lr={used:.3g}")
    out = Path(recipe.train.output) / "lr_find.json"
    out.write_text(json.dumps(result.to_dict(), indent=1))
    print(f"plot: {png}\ncurve: {out}")
    return 0
