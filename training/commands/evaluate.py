"""Evaluate a checkpoint (plain and TTA): confusion matrix, P/R/F1, most confused, top losses."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.config import DEVICES


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--tta", action="store_true", help="also evaluate with the recorded TTA")
    parser.add_argument("--data", help="a labeled image folder (default: the run's validation set)")
    parser.add_argument("--output", type=Path,
                        help="report folder (default: CHECKPOINT_DIR/evaluation)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--min-confused", type=int, default=1)
    parser.add_argument("--device", choices=DEVICES, default="auto")


def run(args: argparse.Namespace) -> int:
    from training.distributed import require_single_process
    from training.run import evaluate_checkpoint

    require_single_process("evaluate", "every rank would write the same reports")
    out = args.output or args.checkpoint.parent / "evaluation"
    summary = evaluate_checkpoint(args.checkpoint, data=args.data, output=out, tta=args.tta,
                                  batch_size=args.batch_size, min_confused=args.min_confused,
                                  device_name=args.device)
    print(f"images: {summary.n}")
    print(f"accuracy: {summary.accuracy:.4f}")
    if summary.tta_accuracy is not None:
        print(f"TTA accuracy: {summary.tta_accuracy:.4f}")
    for actual, predicted, count in summary.most_confused[:5]:
        print(f"  most confused: {actual} -> {predicted} ({count})")
    print(f"report: {out}")
    return 0
