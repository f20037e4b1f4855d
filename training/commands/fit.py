"""Train a recipe (stages, fine-tune, checkpoints), then evaluate the best epoch with TTA.

The same command runs under torchrun for several GPUs or machines (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from training.commands._recipe_args import add_recipe_args, recipe_from_args


def register(parser: argparse.ArgumentParser) -> None:
    add_recipe_args(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from OUTPUT/last.pt")
    parser.add_argument("--init-from", help="start from an earlier run's checkpoint (retraining)")
    parser.add_argument("--no-tta", action="store_true", help="skip the final TTA evaluation")
    parser.add_argument("--log", action="append", default=[], metavar="LOGGER",
                        choices=["tensorboard", "mlflow", "csv"],
                        help="experiment tracker: tensorboard, mlflow or csv (repeatable; "
                             "replaces the recipe's log.loggers)")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default: a local mlruns/); "
                                             "overrides log.mlflow_uri")


def run(args: argparse.Namespace) -> int:
    from training.distributed import distributed_session
    from training.run import fit_and_report

    recipe = recipe_from_args(args)
    # Under torchrun (docs/distributed.md) every process runs this; rank 0 writes and prints.
    try:
        with distributed_session(recipe.train.device) as dist:
            summary = fit_and_report(recipe, resume=args.resume, tta=not args.no_tta, dist=dist)
    except KeyboardInterrupt:
        print(interrupted_hint(Path(recipe.train.output), getattr(args, "argv", None)),
              file=sys.stderr)
        return 130  # the shell's code for SIGINT
    if dist is not None and not dist.is_main:
        return 0
    tta = summary.tta_accuracy
    print(f"best valid accuracy {summary.accuracy:.4f}"
          + (f" (TTA {tta:.4f})" if tta is not None else "")
          + f"; best checkpoint: {summary.checkpoint}")
    return 0


def interrupted_hint(output: Path, argv: list[str] | None) -> str:
    """What Ctrl-C leaves behind and the command that continues it (not a traceback)."""
    last = output / "last.pt"
    if not last.is_file():
        return (f"interrupted before the first epoch finished: nothing saved in {output}; "
                "run the same command again to start over")
    command = "training " + shlex.join(argv or ["fit", "..."])
    if "--resume" not in (argv or []):
        command += " --resume"
    return (f"interrupted: the last finished epoch is saved in {last}\n"
            f"continue exactly where it stopped with:\n  {command}")
