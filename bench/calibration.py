"""Calibrated answers, measured: ECE before/after (plain, TTA, auto), tta=auto's accuracy against
always-TTA and the images it sends through the network per request, on held-out photos.

The model (default: the bundled cifar10, uncalibrated) is calibrated by ``training calibrate``'s
code into a temporary repository; then both versions answer the held-out photos through the
serving core in this process (the served probabilities, not a re-computation):

- **served**: ECE (15 bins, top-1), accuracy and rows per request of each mode on every held-out
  photo. The calibration was fitted on these same photos, so its ECE is in-sample;
- **2-fold cross-fit** (out-of-sample): the held-out photos split in two seeded halves; views,
  temperatures and the auto threshold fitted on one half are measured on the other, both ways --
  an honest stand-in for photos the calibration never saw;
- **throughput** over gRPC at concurrency 32, tta=auto against always-TTA, interleaved rounds
  (bench.calibration_throughput).

    .venv/bin/python -m bench.calibration                      # cifar10, all 5,000 photos
    .venv/bin/python -m bench.calibration --limit 1000 --probs-cache /tmp/cifar10_views.npz
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ROOT, describe_machine, machine, markdown_table, write_results

MODES = ("off", "on", "auto")


def strip_calibration(version_dir: Path) -> None:
    """A calibrated version served as before calibration: the recipe's TTA views, T = 1."""
    card = json.loads((version_dir / "model.json").read_text())
    if "calibration" not in card:
        return
    tta = (card.get("recipe") or {}).get("tta") or {}
    beta = tta.get("beta", -1.0)
    card["tta"] = {"views": tta.get("views", ["center", "hflip"]),
                   "zoom_ratio": tta.get("zoom_ratio", 1.15), "combine": tta.get("combine", "mean"),
                   "beta": None if beta is None or beta < 0 else beta}
    del card["calibration"]
    (version_dir / "model.json").write_text(json.dumps(card, indent=2))


def build_repositories(args: argparse.Namespace, work: Path) -> tuple[Path, Path, Any]:
    """(before repository, after repository, the calibrated card)."""
    from service.model_repository import ModelRepository
    from training.calibration.publish import recalibrate

    source = ModelRepository(args.models_dir).resolve(args.model, args.version)
    before, after = work / "before", work / "after"
    shutil.copytree(source.path, before / args.model / "1")
    strip_calibration(before / args.model / "1")
    shutil.copytree(before / args.model / "1", after / args.model / "1")
    started = time.monotonic()
    published = recalibrate(after, args.model, 1, data=args.data, abstain_at=args.abstain_at,
                            probs_cache=args.probs_cache)
    print(f"calibrated {args.model} v{source.version} in {time.monotonic() - started:.0f} s",
          file=sys.stderr)
    return before, after, published.card


async def _serve_modes(repo: Path, name: str, version: int, items: list[tuple[bytes, str]],
                       modes: tuple[str, ...]) -> list[dict[str, Any]]:
    from service.core import CoreConfig, InferenceCore, VersionPolicy

    config = CoreConfig(models_dir=str(repo), default_model=name, device="cpu",
                        poll_interval_s=0, version_policy=VersionPolicy(pinned=version))
    core = await asyncio.to_thread(InferenceCore.create(config).start)
    rows = []
    try:
        for mode in modes:
            before = core.stats.snapshot()["models"].get(name, {}).get("rows", 0)
            started = time.monotonic()
            result = await core.evaluate(items, model=name, tta=mode)
            seconds = time.monotonic() - started
            ran = core.stats.snapshot()["models"][name]["rows"] - before
            rows.append({"mode": mode, "accuracy": result.report.accuracy, "ece": result.ece,
                         "tta_share": result.tta_answers / result.report.n,
                         "images_per_request": ran / result.report.n, "n": result.report.n,
                         "seconds": seconds, "calibrated": result.calibrated})
    finally:
        await asyncio.to_thread(core.stop)
    return rows


def served(before: Path, after: Path, name: str, items: list[tuple[bytes, str]]) -> dict:
    return {"before": asyncio.run(_serve_modes(before, name, 1, items, ("off", "on"))),
            "after": asyncio.run(_serve_modes(after, name, 2, items, MODES))}


def _fit_and_measure(vp: Any, fit: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Views, temperatures and auto threshold from ``fit``; ECE, accuracy, share on ``test``."""
    from service.calibration import apply_temperature, expected_calibration_error
    from service.imaging import TTASpec, combine_tta
    from training.calibration.selection import select_views
    from training.calibration.temperature import fit_temperature
    from training.calibration.thresholds import choose_auto_threshold
    from training.calibration.views import ViewProbabilities

    def part(index: np.ndarray) -> ViewProbabilities:
        return ViewProbabilities(vp.views, vp.probs[index], vp.labels[index])

    selection = select_views(part(fit))
    tta = TTASpec(views=selection.views, beta=None, weights=selection.weights)
    out: dict[str, float] = {"views": len(tta.views)}
    fitted: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for half, index in (("fit", fit), ("test", test)):
        p = part(index)
        fitted[half] = (p.of(["center"])[:, 0], combine_tta(p.of(tta.views), tta))
    y_fit, y_test = vp.labels[fit], vp.labels[test]
    t_plain = fit_temperature(fitted["fit"][0], y_fit)
    t_tta = fit_temperature(fitted["fit"][1], y_fit)
    plain = {h: apply_temperature(fitted[h][0], t_plain) for h in fitted}
    combined = {h: apply_temperature(fitted[h][1], t_tta) for h in fitted}
    choice = choose_auto_threshold(plain["fit"], combined["fit"], y_fit, len(tta.views))
    threshold = 2.0 if choice.threshold is None else choice.threshold
    extended = plain["test"].max(1) < threshold
    auto = np.where(extended[:, None], combined["test"], plain["test"])
    for key, probs in (("plain", plain["test"]), ("tta", combined["test"]), ("auto", auto)):
        out[f"ece_{key}"] = expected_calibration_error(probs, y_test)
        out[f"accuracy_{key}"] = float((probs.argmax(1) == y_test).mean())
    out["ece_plain_uncalibrated"] = expected_calibration_error(fitted["test"][0], y_test)
    out["auto_share"] = float(extended.mean())
    out["images_per_request"] = 1 + out["auto_share"] * (len(tta.views) - 1)
    return out


def cross_fit(probs_cache: Path, seeds: int = 3) -> dict[str, Any]:
    """2-fold cross-fit repeated over ``seeds`` random halvings (one split alone can be lucky or
    not: two halves of 5,000 photos differ by up to ~2 points of accuracy)."""
    from training.calibration.views import load

    vp = load(probs_cache)
    folds = []
    for seed in range(seeds):
        order = np.random.default_rng(seed).permutation(len(vp.labels))
        a, b = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
        folds += [_fit_and_measure(vp, a, b), _fit_and_measure(vp, b, a)]
    return {"folds": folds, "mean": {k: float(np.mean([f[k] for f in folds])) for k in folds[0]},
            "n": int(len(vp.labels))}


def report(result: dict[str, Any]) -> str:
    rows = [{"version": f"{side} ({'calibrated' if r['calibrated'] else 'T = 1'})", **r}
            for side in ("before", "after") for r in result["served"][side]]
    table = markdown_table(rows, [
        ("version", "model", ""), ("mode", "tta", ""), ("accuracy", "accuracy", ".4f"),
        ("ece", "ECE", ".4f"), ("tta_share", "TTA share", ".3f"),
        ("images_per_request", "images/request", ".2f"), ("n", "photos", "")])
    m = result["cross_fit"]["mean"]
    folds = len(result["cross_fit"]["folds"])
    lines = [table, "", f"cross-fit, {folds} folds (out-of-sample, {result['cross_fit']['n']} "
             "photos, mean): "
             f"ECE plain {100 * m['ece_plain_uncalibrated']:.2f}% -> {100 * m['ece_plain']:.2f}%, "
             f"TTA {100 * m['ece_tta']:.2f}%, auto {100 * m['ece_auto']:.2f}%; accuracy auto "
             f"{100 * m['accuracy_auto']:.2f}% vs always-TTA {100 * m['accuracy_tta']:.2f}%, "
             f"auto share {100 * m['auto_share']:.1f}%, {m['images_per_request']:.2f} "
             f"images/request"]
    if "throughput" in result:
        t = result["throughput"]
        rps = ", ".join(f"{k} {v:.1f}" for k, v in t["median_rps"].items())
        lines += ["", f"gRPC throughput at concurrency {t['concurrency']} (requests/s, median of "
                      f"{len(t['rounds'])} interleaved rounds): {rps}; auto / always-TTA = "
                      f"{t['auto_vs_always_tta']:.2f}x, auto / always-TTA before calibration = "
                      f"{t['auto_vs_always_tta_before']:.2f}x"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.calibration", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="cifar10")
    parser.add_argument("--version", type=int, default=None, help="default: the latest")
    parser.add_argument("--data", type=Path, default=None,
                        help="where the recipe's data folder is (default: as recorded)")
    parser.add_argument("--abstain-at", type=float, default=0.99)
    parser.add_argument("--limit", type=int, default=None,
                        help="serve only N held-out photos, a seeded sample (the fit uses all)")
    parser.add_argument("--probs-cache", type=Path, default=None,
                        help="per-view probabilities .npz (read if present, else written)")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (0: skip)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--measure-s", type=float, default=15.0)
    args = parser.parse_args(argv)
    from training.calibration.publish import heldout_items

    with tempfile.TemporaryDirectory(prefix="bench-calibration-") as tmp:
        work = Path(tmp)
        if args.probs_cache is None:
            args.probs_cache = work / "views.npz"
        before, after, card = build_repositories(args, work)
        paths, _ = heldout_items(card, args.data)
        if args.limit:  # a seeded sample: the split lists the photos class by class
            chosen = np.random.default_rng(0).permutation(len(paths))[: args.limit]
            paths = [paths[i] for i in sorted(chosen)]
        items = [(p.read_bytes(), card.classes[y]) for p, y in paths]
        result = {"model": args.model, "machine": machine(), "load_before": os.getloadavg(),
                  "calibration": card.calibration.to_dict(), "tta": card.tta.to_dict(),
                  "served": served(before, after, args.model, items),
                  "cross_fit": cross_fit(args.probs_cache)}
        if args.rounds:
            from bench.calibration_throughput import throughput

            result["throughput"] = throughput(before, after, args.model, rounds=args.rounds,
                                              concurrency=args.concurrency,
                                              measure_s=args.measure_s)
        result["load_after"] = os.getloadavg()
    path = write_results("calibration", json.loads(json.dumps(result, default=_plain)))
    print(report(result))
    print(f"\n{describe_machine(result['machine'])}; load average {result['load_before'][0]:.1f}"
          f" before, {result['load_after'][0]:.1f} after; {path}")
    return 0


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return str(obj)


if __name__ == "__main__":
    sys.exit(main())
