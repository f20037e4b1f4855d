"""`training`: one sub-command per module in training/commands (each has register() and run())."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from service.model_repository import ModelRepositoryError
from training.errors import TrainingError

# sub-command name -> module in training.commands; imported lazily so `training --help` is fast.
COMMANDS = {
    "make-digits": "make_digits",
    "data-summary": "data_summary",
    "show-batch": "show_batch",
    "recipe": "recipe",
    "fit": "fit",
    "lr-find": "lr_find",
    "evaluate": "evaluate",
    "export": "export",
    "calibrate": "calibrate",
    "ablation": "ablation",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="training", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f"training.commands.{module}")
        mod.register(sub.add_parser(name, help=mod.__doc__.strip().splitlines()[0]))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command as given: fit's Ctrl-C hint repeats it with --resume
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    mod = importlib.import_module(f"training.commands.{COMMANDS[args.command]}")
    try:
        return mod.run(args) or 0
    except (TrainingError, ModelRepositoryError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
