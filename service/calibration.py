"""Calibrated answers, torch-free: temperature scaling, TTA modes, abstention, and the measures
(ECE, NLL, risk-coverage) that say whether a served probability can be read as a chance.

Export (``training calibrate``) fits the numbers on held-out photos and records them in
model.json's ``calibration`` section; the core applies them through this module, so the one
ONNX graph serves plain, TTA and ``tta=auto`` answers, each with its own temperature:

- plain answers (the centre view alone; also the first pass of ``tta=auto``): ``temperature``;
- answers that combine the TTA views (``tta=on``, and ``tta=auto`` for images whose calibrated
  plain top-1 is below ``auto_threshold``): ``tta_temperature``.

The graph ends in a softmax, so the temperature is applied to log-probabilities:
``softmax(log(p) / T)``. For a plain answer that *is* temperature scaling of the network's
logits, since ``log softmax(z) = z - logsumexp(z)`` and the constant cancels; for a TTA answer
it scales the log of the combined probabilities. Hand-written in numpy (a dozen lines) because
no well-kept library applies temperature scaling without torch.

A model.json without a ``calibration`` section (every model exported before it existed) is
served with temperature 1 (the probabilities exactly as the graph gives them), plain answers by
default and no abstention; ``Calibration.calibrated`` is False then, and the model's
ModelInfo/GetModel say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

TTA_MODES = ("off", "on", "auto")
ECE_BINS = 15  # equal-width confidence bins, top-1 (Guo et al. 2017), as the issue measures
_TINY = float(np.finfo(np.float32).tiny)  # log(0) guard: a float32 softmax can underflow to 0


def tta_mode(value: bool | str | None, default: str = "off") -> str:
    """A request's TTA choice as one of TTA_MODES: True = "on", False = "off", None or "" = the
    model's default; ValueError names the choices for anything else."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return "on" if value else "off"
    mode = str(value).strip().lower()
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {list(TTA_MODES)} (or true/false); got {value!r}")
    return mode


@dataclass(frozen=True)
class Calibration:
    """What the core applies (temperatures, default TTA mode, auto threshold, abstention) and the
    evidence export measured for them (``evidence``, recorded as is).

    auto_threshold: ``tta=auto`` runs the other views only for images whose calibrated plain
        top-1 probability is below it (None: every image, i.e. always TTA).
    min_confidence: answers whose calibrated top-1 is below it say ``unsure`` (0: never).
    """

    temperature: float = 1.0
    tta_temperature: float = 1.0
    default_tta: str = "off"
    auto_threshold: float | None = None
    min_confidence: float = 0.0
    calibrated: bool = True
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("temperature", "tta_temperature"):
            t = getattr(self, name)
            if not (np.isfinite(t) and t > 0):
                raise ValueError(f"calibration {name} must be a positive number, got {t!r}")
        if self.default_tta not in TTA_MODES:
            raise ValueError(f"calibration default_tta must be one of {list(TTA_MODES)}, "
                             f"got {self.default_tta!r}")
        for name in ("auto_threshold", "min_confidence"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"calibration {name} must be in [0, 1], got {v!r}")

    @classmethod
    def uncalibrated(cls) -> Calibration:
        """A model exported before calibration existed: served exactly as the graph answers."""
        return cls(calibrated=False)

    def temperature_for(self, tta: bool) -> float:
        return self.tta_temperature if tta else self.temperature

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": {"plain": self.temperature, "tta": self.tta_temperature},
                "default_tta": self.default_tta, "auto_threshold": self.auto_threshold,
                "min_confidence": self.min_confidence, **self.evidence}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Calibration:
        if not d:
            return cls.uncalibrated()
        t = d.get("temperature") or {}
        served = {"temperature", "default_tta", "auto_threshold", "min_confidence"}
        threshold = d.get("auto_threshold")
        return cls(temperature=float(t.get("plain", 1.0)), tta_temperature=float(t.get("tta", 1.0)),
                   default_tta=d.get("default_tta", "off"),
                   auto_threshold=None if threshold is None else float(threshold),
                   min_confidence=float(d.get("min_confidence") or 0.0),
                   evidence={k: v for k, v in d.items() if k not in served})


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` over the last axis, float32; T = 1 returns ``probs`` unchanged
    (bit for bit: an uncalibrated model serves exactly what it served before)."""
    probs = np.asarray(probs, dtype=np.float32)
    if temperature == 1.0:
        return probs
    z = np.log(np.maximum(probs.astype(np.float64), _TINY)) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (natural log)."""
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.maximum(p, _TINY)).mean())


@dataclass(frozen=True)
class Reliability:
    """Top-1 confidence against accuracy in equal-width bins: the reliability diagram's data."""

    edges: np.ndarray  # (B + 1,)
    counts: np.ndarray  # (B,) images per bin
    confidence: np.ndarray  # (B,) mean top-1 probability per bin (0 where empty)
    accuracy: np.ndarray  # (B,) share right per bin (0 where empty)

    @property
    def ece(self) -> float:
        """Expected calibration error: sum over bins of (share of images) x |accuracy - conf|."""
        n = self.counts.sum()
        return float(np.sum(self.counts / max(n, 1) * np.abs(self.accuracy - self.confidence)))


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """Bin (lo, hi] by top-1 confidence (the first bin also holds 0), as Guo et al.'s ECE."""
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=np.float64)
    index = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    sums = np.bincount(index, weights=conf, minlength=bins)
    hits = np.bincount(index, weights=right, minlength=bins)
    safe = np.maximum(counts, 1)
    return Reliability(edges=np.linspace(0.0, 1.0, bins + 1), counts=counts,
                       confidence=sums / safe, accuracy=hits / safe)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE (top-1, ``bins`` equal-width bins) of (N, C) probabilities against class indices."""
    probs = np.asarray(probs)
    return reliability(probs.max(axis=1), probs.argmax(axis=1) == np.asarray(labels), bins).ece


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                        np.ndarray]:
    """Answering only images at least this confident: (thresholds, coverage, accuracy), one point
    per distinct confidence, most confident first (coverage rising)."""
    conf = np.asarray(confidence, dtype=np.float64)
    order = np.argsort(-conf, kind="stable")
    conf, right = conf[order], np.asarray(correct, dtype=np.float64)[order]
    answered = np.arange(1, len(conf) + 1)
    accuracy = np.cumsum(right) / answered
    last = np.r_[conf[1:] != conf[:-1], True]  # the last image of each distinct confidence
    return conf[last], answered[last] / len(conf), accuracy[last]
