"""Export a checkpoint to ONNX, verify it against PyTorch and publish it as a model version.

  training export runs/digits/best.pt --name digits [--version N] [--models-dir DIR] [--force]
                  [--data DIR | --random-inputs-only] [--fp16] [--int8]

--models-dir defaults to the repository tta-serve serves
(``service.process.serve_env.default_models_dir``): $TTA_SERVE_MODELS_DIR when it is set (the
Dockerfile's train target sets it to /models), else the models/ folder beside the package when there
is one, else models/ in the current directory.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from service.process.serve_env import MODELS_DIR_ENV, default_models_dir


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("checkpoint", type=Path, help="training checkpoint (e.g. runs/x/best.pt)")
    parser.add_argument("--name", required=True, help="model name in the repository")
    parser.add_argument("--version", type=int, default=None,
                        help="version number (default: the next integer)")
    parser.add_argument("--models-dir", type=Path, default=default_models_dir(),
                        help=f"model repository root (default: ${MODELS_DIR_ENV} when set, else "
                             "the repository's models/; here: %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="replace the version if it already exists")
    parser.add_argument("--data", type=Path, default=None,
                        help="labelled image folder for the check, read from its valid/ (or "
                             "val/) split when it has one (default: the run's validation "
                             "split, rebuilt from the recorded recipe)")
    parser.add_argument("--check-images", type=int, default=512, metavar="N",
                        help="at most N real images in the check (default: 512)")
    parser.add_argument("--random-inputs-only", action="store_true",
                        help="check parity on random inputs alone, when no labelled images of "
                             "the model's classes exist (recorded in model.json)")
    parser.add_argument("--fp16", action="store_true",
                        help="also write model.fp16.onnx (float32 in/out) and measure it")
    parser.add_argument("--int8", action="store_true",
                        help="also write model.int8.onnx (dynamic int8, for CPU) and measure it")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="serve the recipe's TTA views uncalibrated (default: choose the "
                             "views, fit temperatures and thresholds on the held-out photos, as "
                             "`training calibrate`)")
    parser.add_argument("--abstain-at", type=float, default=None, metavar="ACCURACY",
                        help="min_confidence for this accuracy on the held-out photos (default: "
                             "the recipe's [calibrate] abstain_target_accuracy)")


def run(args: argparse.Namespace) -> int:
    from training.export import export_checkpoint

    mv = export_checkpoint(args.checkpoint, name=args.name, models_dir=args.models_dir,
                           version=args.version, force=args.force, data=args.data,
                           fp16=args.fp16, int8=args.int8,
                           max_images=args.check_images,
                           random_inputs_only=args.random_inputs_only,
                           calibrate=not args.no_calibrate, abstain_at=args.abstain_at)
    from training.trackers.mlflow import log_exported_model

    if log_exported_model(args.checkpoint, mv.path, mv.name, mv.version):
        print("  added to the MLflow run that trained it (artifacts: model/)")
    card = mv.card
    check = (card.metrics or {}).get("export_check", {})
    print(f"published {mv.name} version {mv.version} at {mv.path}")
    print(f"  classes: {len(card.classes)}, input 3x{card.input_size}x{card.input_size}, "
          f"opset {card.opset}, sha256 {card.sha256[:12]}...")
    print(f"  parity: max |p_onnx - p_torch| = {check.get('max_abs_diff', float('nan')):.2e} "
          f"(tolerance {check.get('tolerance', float('nan')):.0e}) on "
          f"{check.get('n_random', 0)} random + {check.get('n_images', 0)} real images, "
          f"top-1 mismatches {check.get('top1_mismatches', 0)}")
    if check.get("accuracy_onnx") is not None:
        print(f"  accuracy on the {check['n_images']} check images "
              f"({check.get('images_source')}): {check['accuracy_onnx']:.4f}")
    for kind, v in card.variants.items():
        acc = "n/a" if v.accuracy is None else f"{v.accuracy:.4f}"
        delta = "" if v.delta_accuracy is None else f" ({v.delta_accuracy:+.4f})"
        diff = math.nan if v.max_abs_diff_vs_fp32 is None else v.max_abs_diff_vs_fp32
        print(f"  {kind}: {v.file} {(v.bytes or 0) / 1e6:.2f} MB, accuracy {acc}{delta}, "
              f"max |p - p_fp32| = {diff:.2e}")
    if card.calibration.calibrated:
        from training.commands.calibrate import print_summary

        print_summary(card)
    return 0
