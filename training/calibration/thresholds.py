"""The two thresholds export chooses on held-out photos.

- ``tta=auto``: extending the k least confident images (calibrated plain top-1) with the other
  views costs 1 + (k/N)(V - 1) images through the network per request. The threshold is the
  lowest-cost one whose accuracy is within ``tolerance`` (0.1 point) of always-TTA.
- Abstention: the lowest calibrated top-1 at which the answers at least that confident reach the
  target accuracy (the largest coverage that does); below it the service says "unsure".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from service.calibration import risk_coverage

AUTO_TOLERANCE = 0.001  # accuracy within 0.1 point of always-TTA


@dataclass(frozen=True)
class AutoChoice:
    threshold: float | None  # extend images whose calibrated plain top-1 is below it;
    # None: every image
    extended_share: float  # share of the held-out images extended
    images_per_request: float  # 1 + share * (V - 1)
    accuracy: float
    tta_accuracy: float
    plain_accuracy: float
    views: int

    def to_dict(self) -> dict:
        return asdict(self)


def choose_auto_threshold(plain: np.ndarray, tta: np.ndarray, labels: np.ndarray, views: int,
                          tolerance: float = AUTO_TOLERANCE) -> AutoChoice:
    """``plain``/``tta``: calibrated (N, C) probabilities of the two paths."""
    conf = plain.max(1)
    order = np.argsort(conf, kind="stable")  # least confident first: extended first
    plain_right = (plain.argmax(1) == labels)[order]
    tta_right = (tta.argmax(1) == labels)[order]
    n = len(labels)
    # accuracy when the k least confident take the TTA answer, k = 0..N
    acc = (np.r_[0, np.cumsum(tta_right)] + np.r_[np.cumsum(plain_right[::-1])[::-1], 0]) / n
    tta_accuracy = float(tta_right.mean())
    s = conf[order]
    # only cut between distinct confidences: a threshold cannot split tied images
    cuttable = np.r_[True, s[1:] != s[:-1], True]
    ok = np.flatnonzero(cuttable & (acc >= tta_accuracy - tolerance - 1e-12))
    k = int(ok[0])
    # k == n: every image needs the views (None: auto is always-TTA); else cut halfway
    threshold = None if k == n else 0.0 if k == 0 else float((s[k - 1] + s[k]) / 2)
    share = k / n
    return AutoChoice(threshold=threshold, extended_share=share,
                      images_per_request=1 + share * (views - 1), accuracy=float(acc[k]),
                      tta_accuracy=tta_accuracy, plain_accuracy=float(plain_right.mean()),
                      views=views)


@dataclass(frozen=True)
class AbstainChoice:
    min_confidence: float
    target_accuracy: float
    coverage: float  # share of the held-out images answered (not unsure)
    accuracy: float  # of the answered ones

    def to_dict(self) -> dict:
        return asdict(self)


def choose_abstain_threshold(probs: np.ndarray, labels: np.ndarray,
                             target: float) -> AbstainChoice | None:
    """None when no threshold reaches ``target`` (not even the single most confident answer)."""
    thresholds, coverage, accuracy = risk_coverage(probs.max(1), probs.argmax(1) == labels)
    ok = np.flatnonzero(accuracy >= target)
    if not len(ok):
        return None
    i = int(ok[-1])  # the largest coverage that reaches the target
    return AbstainChoice(min_confidence=float(thresholds[i]), target_accuracy=target,
                         coverage=float(coverage[i]), accuracy=float(accuracy[i]))
