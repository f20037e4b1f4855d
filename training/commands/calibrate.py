"""Calibrate a published model on its held-out photos and publish the result as a new version.

  training calibrate NAME [--version N] [--to-version M [--force] | --in-place] [--models-dir DIR]
                     [--data DIR | --heldout DIR] [--abstain-at 0.99] [--views V1,V2,...]

Fits, on the run's validation split (rebuilt from the recipe recorded in model.json): the TTA
views to serve and their weights (greedy forward selection), one temperature for plain and one
for TTA answers (NLL), the tta=auto threshold (lowest cost within 0.1 point of always-TTA) and,
with --abstain-at (or the recipe's [calibrate] abstain_target_accuracy), the min_confidence
below which answers say "unsure". The graph is unchanged; report/calibration/ gets the
reliability diagram, the risk-coverage curve and the view table. `training export` does the
same for a fresh export.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from service.process.serve_env import default_models_dir


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("name", help="model name in the repository")
    parser.add_argument("--version", type=int, default=None,
                        help="the version to calibrate (default: the latest)")
    parser.add_argument("--to-version", type=int, default=None,
                        help="publish as this version (default: the next free one)")
    parser.add_argument("--in-place", action="store_true",
                        help="replace the calibrated version itself (atomically)")
    parser.add_argument("--force", action="store_true",
                        help="replace --to-version when it exists")
    parser.add_argument("--models-dir", type=Path, default=default_models_dir(),
                        help="model repository root (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=None,
                        help="where the recipe's data folder is now (the validation split is "
                             "rebuilt from it with the recorded rule and seed)")
    parser.add_argument("--heldout", type=Path, default=None,
                        help="a labelled folder of photos the model never trained on, instead "
                             "of the validation split")
    parser.add_argument("--abstain-at", type=float, default=None, metavar="ACCURACY",
                        help="choose min_confidence so that the answered images reach this "
                             "accuracy on the held-out photos (e.g. 0.99)")
    parser.add_argument("--views", default="",
                        help="candidate views, comma-separated (default: the standard set)")
    parser.add_argument("--probs-cache", type=Path, default=None,
                        help="an .npz of the per-view probabilities: read when it exists, else "
                             "written (re-running the selection without re-running the views)")


def run(args: argparse.Namespace) -> int:
    from training.calibration.publish import recalibrate

    if args.abstain_at is not None and not 0 < args.abstain_at < 1:
        raise SystemExit(f"--abstain-at must be in (0, 1), got {args.abstain_at}")
    mv = recalibrate(args.models_dir, args.name, args.version, to_version=args.to_version,
                     in_place=args.in_place, data=args.data, heldout=args.heldout,
                     abstain_at=args.abstain_at,
                     candidates=[v.strip() for v in args.views.split(",") if v.strip()],
                     probs_cache=args.probs_cache, force=args.force)
    print(f"published {mv.name} version {mv.version} at {mv.path}")
    print_summary(mv.card)
    return 0


def print_summary(card) -> None:  # noqa: ANN001 - a ModelCard
    """The calibration figures of a published card (also `training export`'s output)."""
    c = card.calibration
    e = c.evidence
    print(f"  held-out photos: {e['n_images']} ({e['fitted_on']})")
    weights = card.tta.weights or (1.0,) * len(card.tta.views)
    served = ", ".join(f"{v} ({w:.3f})" for v, w in zip(card.tta.views, weights, strict=True))
    print(f"  views served: {served}")
    for path_name in ("plain", "tta"):
        ece, loss = e["ece"][path_name], e["nll"][path_name]
        t = c.temperature_for(path_name == "tta")
        print(f"  {path_name}: T = {t:.3f}, ECE {100 * ece['before']:.2f}% -> "
              f"{100 * ece['after']:.2f}%, NLL {loss['before']:.4f} -> {loss['after']:.4f}, "
              f"accuracy {100 * e['accuracy'][path_name]:.2f}%")
    if e.get("auto"):
        a = e["auto"]
        print(f"  tta=auto (default {c.default_tta}): threshold {a['threshold']}, extended "
              f"{100 * a['extended_share']:.1f}%, {a['images_per_request']:.2f} images/request, "
              f"accuracy {100 * a['accuracy']:.2f}% (always-TTA {100 * a['tta_accuracy']:.2f}%), "
              f"ECE {100 * e['ece']['auto']['after']:.2f}%")
    if e.get("abstain"):
        a = e["abstain"]
        if a.get("reached"):
            print(f"  abstain: min_confidence {a['min_confidence']:.4f} answers "
                  f"{100 * a['coverage']:.1f}% at accuracy {100 * a['accuracy']:.2f}% "
                  f"(target {100 * a['target_accuracy']:.2f}%)")
        else:
            print(f"  abstain: target {a['target_accuracy']} not reached; no default")
