"""Which TTA views to serve, and with what weights: greedy forward selection on held-out photos.

Start from the plain view. At each step try every candidate view not yet chosen, mixed into the
current combination with weight a (p = (1 - a) * p_current + a * p_view, a on a small grid), and
score each mixture by its NLL after its own fitted temperature: a proper score that moves with
every image, where accuracy on a few thousand photos moves in steps of 1/N and is noisy to
select on. The best step is taken only when it lowers that NLL by at least ``min_gain`` (relative)
and does not lower accuracy; otherwise selection stops. A view that does not help is not served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from service.calibration import apply_temperature, nll
from training.calibration.temperature import fit_temperature
from training.calibration.views import ViewProbabilities

log = logging.getLogger(__name__)

MIX_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5)  # weight of the new view in the mixture
MIN_GAIN = 0.005  # a step must lower the calibrated NLL by 0.5% at least
MAX_VIEWS = 8


@dataclass(frozen=True)
class Step:
    """One row of the report's table: a candidate view tried at a step, and what it did."""

    step: int
    view: str
    weight: float  # its weight in the mixture when added
    accuracy: float
    nll: float  # after temperature scaling
    gain_accuracy: float  # vs the combination before the step
    gain_nll: float  # relative decrease of the calibrated NLL
    chosen: bool


@dataclass(frozen=True)
class Selection:
    views: tuple[str, ...]  # "center" first
    weights: tuple[float, ...]  # sum to 1
    table: tuple[Step, ...]


def _score(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    t = fit_temperature(probs, labels)
    return float((probs.argmax(1) == labels).mean()), nll(apply_temperature(probs, t), labels)


def select_views(vp: ViewProbabilities, *, min_gain: float = MIN_GAIN,
                 max_views: int = MAX_VIEWS) -> Selection:
    """Greedy forward selection from the plain view ("center" must be among ``vp.views``)."""
    labels = vp.labels
    chosen, weights = ["center"], [1.0]
    current = vp.of(["center"])[:, 0].astype(np.float64)
    accuracy, score = _score(current, labels)
    table = [Step(0, "center", 1.0, accuracy, score, 0.0, 0.0, True)]
    while len(chosen) < max_views:
        tried = []
        for view in (v for v in vp.views if v not in chosen):
            p_view = vp.of([view])[:, 0]
            best = None
            for a in MIX_WEIGHTS:
                mix = (1 - a) * current + a * p_view
                acc, s = _score(mix, labels)
                if best is None or s < best[2]:
                    best = (a, acc, s)
            a, acc, s = best
            tried.append(Step(len(chosen), view, a, acc, s, acc - accuracy,
                              (score - s) / score, False))
        if not tried:
            break
        top = min(tried, key=lambda step: step.nll)
        take = top.gain_nll >= min_gain and top.gain_accuracy >= 0
        table += [Step(**{**step.__dict__, "chosen": take and step is top}) for step in tried]
        if not take:
            break
        log.info("view selection: + %s (weight %.2f): accuracy %.4f, calibrated NLL %.4f",
                 top.view, top.weight, top.accuracy, top.nll)
        weights = [w * (1 - top.weight) for w in weights] + [top.weight]
        chosen.append(top.view)
        current = (1 - top.weight) * current + top.weight * vp.of([top.view])[:, 0]
        accuracy, score = top.accuracy, top.nll
    return Selection(tuple(chosen), tuple(round(w, 6) for w in weights), tuple(table))
