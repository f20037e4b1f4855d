"""Our side's recipe in ``bench.recipe_vs_fastai``: fastai's chapter-7 recipe, matched, or the
airbench94 techniques of ``recipes/cifar10.toml`` v2 adapted to the subset (issue 23).

``chapter7`` trains the very recipe fastai trains (xresnet18, AdamW, one one-cycle per size,
MixUp, label smoothing, aug_transforms' values): a like-for-like test of the two loops.

``techniques`` keeps fastai on chapter 7 and trains ours as recipes/cifar10.toml v2 does: its
``[model]``, ``[augment]`` and ``[train]`` tables read from the file (Nesterov SGD in airbench's
units, whitened frozen stem, dirac init, BatchNorm bias-only with 64x bias LR, logit scale,
one triangular schedule over both sizes, lookahead, alternating flip, +-2 px translate, label
smoothing 0.2, no MixUp), its stage LR, and airbench94's multi-crop TTA (the photo, +-1 px
translates with reflect padding, and their mirrors). The network defaults to airbench_small
(airbench94's network at half widths, what bench/ablation.py measures the techniques on): the
techniques were made for that network (whitening needs its 2x2 patch stem; dirac needs plain,
non-residual convolutions), and the full-width airbench costs ~5x the CPU. What the subset
changes: the data (the bench's split), the sizes, epochs and batch size (the command line's).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.vs_fastai import ROOT

OURS_RECIPES = ("chapter7", "techniques")
V2_RECIPE = ROOT / "recipes" / "cifar10.toml"
# airbench94's multi-crop TTA (docs/architecture.md): the photo, 1 px translates, their mirrors
TRANSLATE_TTA = ["center", "hflip", "shift:+1,+1", "hflip_shift:+1,+1", "shift:-1,-1",
                 "hflip_shift:-1,-1"]


def add_ours_recipe_args(p: argparse.ArgumentParser) -> None:
    """The command-line options that choose our side's recipe."""
    p.add_argument("--ours-recipe", choices=OURS_RECIPES, default="chapter7",
                   help="ours: fastai's chapter-7 recipe (same as fastai) or the airbench94 "
                   "techniques of recipes/cifar10.toml v2; fastai always trains chapter 7")
    p.add_argument("--ours-arch", default="airbench_small",
                   help="ours with --ours-recipe techniques (airbench, airbench_small)")
    p.add_argument("--ours-epochs", type=int, nargs="+", default=None,
                   help="ours with --ours-recipe techniques: epochs per size (default: --epochs)")
    p.add_argument("--ours-batch-size", type=int, default=None,
                   help="ours with --ours-recipe techniques (default: --batch-size)")


def ours_overrides(args: argparse.Namespace, stage_sizes: list[int],
                   stage_epochs: list[int]) -> dict[str, Any]:
    """What our worker's spec changes from the shared one: nothing for chapter 7; the network,
    stages (the v2 recipe's LR) and TTA views for the techniques."""
    if args.ours_recipe == "chapter7":
        return {"ours_recipe": "chapter7"}
    from training.config import read_recipe_file

    epochs = args.ours_epochs if args.ours_epochs is not None else stage_epochs
    if len(epochs) != len(stage_sizes):
        raise SystemExit("--ours-epochs gives one count per size (--sizes)")
    lr = read_recipe_file(V2_RECIPE)["stages"][-1]["lr"]
    batch = args.ours_batch_size or args.batch_size
    return {"ours_recipe": "techniques", "arch": args.ours_arch,
            "stages": [{"size": s, "batch_size": batch, "epochs": e, "lr": lr}
                       for s, e in zip(stage_sizes, epochs, strict=True)],
            "tta_views": list(TRANSLATE_TTA), "tta_beta": -1.0}


def ours_recipe_dict(spec: dict[str, Any], work: Path, csv_path: Path) -> dict[str, Any]:
    """The recipe (as ``training.config.recipe_from_dict`` reads it) our worker trains."""
    data = {"path": str(work), "csv": str(csv_path), "seed": spec["split_seed"],
            "presize": spec["presize"], "normalize": "dataset", "cache": "auto"}
    run = {"seed": spec["seed"], "output": str(work / "run"), "device": "cpu",
           "threads": spec["threads"], "channels_last": spec["channels_last"], "select": "last"}
    tta = {"views": spec["tta_views"], "combine": "mean", "beta": spec["tta_beta"]}
    stages = [dict(s) for s in spec["stages"]]
    if spec.get("ours_recipe", "chapter7") == "techniques":
        from training.config import read_recipe_file

        v2 = read_recipe_file(V2_RECIPE)
        return {"data": data, "model": {**v2["model"], "arch": spec["arch"]},
                "augment": dict(v2["augment"]),
                "train": {**{k: v for k, v in v2["train"].items() if k != "output"}, **run},
                "stages": stages, "tta": tta}
    aug = spec["augment"]
    return {
        "data": data, "model": {"arch": spec["arch"]},
        "augment": {"min_scale": aug["min_scale"], "max_aspect": 1.0,  # fastai: ratio=(1, 1)
                    "flip": True, "max_rotate": aug["max_rotate"], "max_zoom": aug["max_zoom"],
                    "max_warp": aug["max_warp"], "max_lighting": aug["max_lighting"],
                    "p_affine": aug["p_affine"], "p_lighting": aug["p_lighting"],
                    "max_translate": 0.0},
        "train": {**run, "weight_decay": spec["weight_decay"],
                  "label_smoothing": spec["label_smoothing"], "mixup": spec["mixup"],
                  "pct_start": spec["pct_start"]},
        "stages": stages, "tta": tta,
    }
