"""Calibrate one exported graph on held-out photos and return its card with the result.

Steps: every candidate view's probabilities (``views``), the views to serve and their weights
(``selection``), a temperature for plain and one for TTA answers (``temperature``), the
``tta=auto`` and abstention thresholds (``thresholds``), then the report files (reliability
diagram, risk-coverage curve, the view table, calibration.json). Nothing here changes the graph:
the card it returns records what ``service.calibration`` applies to the graph's output.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.calibration import (
    Calibration,
    apply_temperature,
    expected_calibration_error,
    nll,
)
from service.imaging import TTASpec, combine_tta, decode_side
from service.model_repository import ModelCard
from training.calibration import views as view_probs
from training.calibration.plots import reliability_png, risk_coverage_png
from training.calibration.selection import Selection, select_views
from training.calibration.temperature import fit_temperature
from training.calibration.thresholds import (
    AbstainChoice,
    AutoChoice,
    choose_abstain_threshold,
    choose_auto_threshold,
)

log = logging.getLogger(__name__)

REPORT_FOLDER = "calibration"  # under the version's report/


@dataclass(frozen=True)
class Paths:
    """The calibrated (N, C) answers of each path on the held-out photos."""

    plain: np.ndarray
    tta: np.ndarray
    auto: np.ndarray  # the plain answer, or the TTA one under the auto threshold
    extended: np.ndarray  # bool (N,): auto ran the other views


def _served_tta(selection: Selection, zoom_ratio: float) -> TTASpec:
    return TTASpec(views=selection.views, zoom_ratio=zoom_ratio, combine="mean", beta=None,
                   weights=selection.weights)


def _final_views(vp: view_probs.ViewProbabilities, card: ModelCard, tta: TTASpec,
                 onnx_path: Path, items: Sequence[tuple[Path, int]]) -> np.ndarray:
    """(N, V, C) of the served views, decoded exactly as the service will decode them."""
    candidates = TTASpec(views=vp.views, weights=(1.0,) * len(vp.views), beta=None,
                         zoom_ratio=tta.zoom_ratio)
    if decode_side(card.eval_spec, tta) == decode_side(card.eval_spec, candidates):
        return vp.of(tta.views)
    log.info("the served views decode large JPEGs at another scale: running them again")
    return view_probs.view_probabilities(onnx_path, items, card.eval_spec, tta.views,
                                         tta.zoom_ratio, input_name=card.input_name,
                                         decode_tta=tta).probs


def _auto(plain: np.ndarray, tta: np.ndarray, labels: np.ndarray,
          spec: TTASpec) -> tuple[AutoChoice | None, Paths]:
    if len(spec.views) < 2:  # no view helps: nothing to add, auto is plain
        return None, Paths(plain, tta, plain, np.zeros(len(labels), dtype=bool))
    choice = choose_auto_threshold(plain, tta, labels, len(spec.views))
    extended = (np.ones(len(labels), dtype=bool) if choice.threshold is None
                else plain.max(1) < choice.threshold)
    return choice, Paths(plain, tta, np.where(extended[:, None], tta, plain), extended)


def _figures(before: dict[str, np.ndarray], after: Paths, labels: np.ndarray) -> dict[str, Any]:
    def both(measure: Any, key: str, path: str) -> dict[str, float]:
        return {"before": measure(before[key], labels), "after": measure(getattr(after, path),
                                                                         labels)}

    return {
        "ece": {"plain": both(expected_calibration_error, "plain", "plain"),
                "tta": both(expected_calibration_error, "tta", "tta"),
                "auto": {"after": expected_calibration_error(after.auto, labels)}},
        "nll": {"plain": both(nll, "plain", "plain"), "tta": both(nll, "tta", "tta"),
                "auto": {"after": nll(after.auto, labels)}},
        "accuracy": {p: float((getattr(after, p).argmax(1) == labels).mean())
                     for p in ("plain", "tta", "auto")}
        | {"tta_before": float((before["tta"].argmax(1) == labels).mean())},
    }


def calibrate_card(card: ModelCard, onnx_path: Path, items: Sequence[tuple[Path, int]], *,
                   source: str, report_dir: Path, abstain_at: float | None = None,
                   candidates: Sequence[str] = (), probs_cache: Path | None = None) -> ModelCard:
    """``card`` with the served TTA views/weights and its calibration; the report files are
    written into ``report_dir``/calibration. ``probs_cache``: per-view probabilities saved
    before for the same graph and photos (read when present, else written)."""
    views = view_probs.candidate_views(card.eval_spec, card.tta, candidates)
    if probs_cache is not None and probs_cache.is_file():
        vp = view_probs.load(probs_cache)
    else:
        vp = view_probs.view_probabilities(onnx_path, items, card.eval_spec, views,
                                           card.tta.zoom_ratio, input_name=card.input_name)
        if probs_cache is not None:
            view_probs.save(vp, probs_cache)
    labels = vp.labels
    selection = select_views(vp)
    tta = _served_tta(selection, card.tta.zoom_ratio)
    served = _final_views(vp, card, tta, onnx_path, items)
    raw_plain, raw_tta = served[:, tta.views.index("center")], combine_tta(served, tta)
    t_plain, t_tta = fit_temperature(raw_plain, labels), fit_temperature(raw_tta, labels)
    plain, combined = apply_temperature(raw_plain, t_plain), apply_temperature(raw_tta, t_tta)
    auto, paths = _auto(plain, combined, labels, tta)
    default_mode = "auto" if auto is not None else "off"
    answers = paths.auto if auto is not None else paths.plain
    abstain = choose_abstain_threshold(answers, labels, abstain_at) if abstain_at else None
    if abstain_at and abstain is None:
        log.warning("no confidence threshold reaches accuracy %.4f on the held-out photos; "
                    "no default abstention", abstain_at)
    before = {"plain": raw_plain, "tta": combine_tta(vp.of(card.tta.views), card.tta)}
    evidence = {"fitted_on": source, "n_images": int(len(labels)), "ece_bins": 15,
                **_figures(before, paths, labels),
                "auto": None if auto is None else auto.to_dict(),
                "abstain": _abstain_evidence(abstain, abstain_at, answers, labels),
                "views": {"served": list(tta.views), "weights": list(tta.weights or ()),
                          "before": list(card.tta.views), "candidates": list(vp.views),
                          "selection": "greedy forward, calibrated NLL (training calibrate)"},
                "report": f"report/{REPORT_FOLDER}/"}
    calibration = Calibration(temperature=t_plain, tta_temperature=t_tta,
                              default_tta=default_mode,
                              auto_threshold=None if auto is None else auto.threshold,
                              min_confidence=0.0 if abstain is None else abstain.min_confidence,
                              evidence=evidence)
    out = dataclasses.replace(card, tta=tta, calibration=calibration)
    write_report(report_dir / REPORT_FOLDER, out, selection, before, paths, labels, abstain)
    return out


def _abstain_evidence(abstain: AbstainChoice | None, target: float | None, answers: np.ndarray,
                      labels: np.ndarray) -> dict[str, Any] | None:
    if not target:
        return None
    if abstain is None:
        return {"target_accuracy": target, "reached": False}
    return {**abstain.to_dict(), "reached": True}


def write_report(folder: Path, card: ModelCard, selection: Selection,
                 before: dict[str, np.ndarray], paths: Paths, labels: np.ndarray,
                 abstain: AbstainChoice | None) -> None:
    """reliability.png, risk_coverage.png, views.md (the selection table), calibration.json."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{card.name} v{card.version}"
    (folder / "reliability.png").write_bytes(reliability_png(
        {"plain": {"before (T=1)": before["plain"], "after": paths.plain},
         "TTA": {"before (T=1, views as before)": before["tta"], "after": paths.tta}},
        labels, f"{name}: reliability on {len(labels)} held-out photos"))
    (folder / "risk_coverage.png").write_bytes(risk_coverage_png(
        {"plain": paths.plain, "TTA": paths.tta, "auto": paths.auto}, labels,
        f"{name}: risk-coverage on {len(labels)} held-out photos",
        None if abstain is None else (abstain.coverage, abstain.accuracy)))
    (folder / "views.md").write_text(views_table(selection))
    (folder / "calibration.json").write_text(json.dumps(card.calibration.to_dict(), indent=2)
                                             + "\n")


def views_table(selection: Selection) -> str:
    """The greedy selection as a Markdown table: every candidate at every step."""
    lines = ["| step | view | weight | accuracy | calibrated NLL | accuracy gain | NLL gain | "
             "chosen |", "|---:|---|---:|---:|---:|---:|---:|:---:|"]
    for s in selection.table:
        lines.append(f"| {s.step} | {s.view} | {s.weight:.2f} | {100 * s.accuracy:.2f}% | "
                     f"{s.nll:.4f} | {100 * s.gain_accuracy:+.2f} | {100 * s.gain_nll:+.2f}% | "
                     f"{'yes' if s.chosen else ''} |")
    served = ", ".join(f"{v} ({w:.3f})" for v, w in zip(selection.views, selection.weights,
                                                        strict=True))
    return "\n".join(["# TTA views chosen by greedy forward selection", "",
                      f"Served: {served}", "", *lines]) + "\n"
