"""From a request's choices and the network's outputs to one calibrated answer.

The rules of ``service.calibration`` as the core applies them, per image:

- ``tta`` off: the plain view; on: every TTA view of model.json, combined by its rule;
  auto: the plain view first, then the other views only when the calibrated plain top-1 is
  below the model's ``auto_threshold`` (a model without one: always). ``None`` = the model's
  default mode (``off`` for a model exported before calibration).
- The answer's temperature follows its path: plain answers ``temperature``, combined ones
  ``tta_temperature``.
- ``min_confidence`` (None = the model's default, 0 = never): a top-1 below it marks the answer
  ``unsure``; the top-k are still given (not an error).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.calibration import apply_temperature, tta_mode
from service.core.errors import InvalidRequest
from service.core.prediction import Prediction, make_prediction
from service.imaging import combine_tta
from service.model_repository import ModelCard

PLAIN_VIEWS = ("center",)


@dataclass(frozen=True)
class AnswerOptions:
    """One request's resolved choices: TTA mode, abstention threshold, top-k."""

    mode: str  # "off", "on", "auto"
    min_confidence: float
    top_k: int


def answer_options(card: ModelCard, tta: bool | str | None, min_confidence: float | None,
                   top_k: int) -> AnswerOptions:
    """The request's choices with the model's defaults filled in; InvalidRequest when bad."""
    calibration = card.calibration
    try:
        mode = tta_mode(tta, calibration.default_tta)
    except ValueError as e:
        raise InvalidRequest(str(e)) from e
    if min_confidence is None:
        min_confidence = calibration.min_confidence
    if not 0.0 <= float(min_confidence) <= 1.0:  # NaN fails too
        raise InvalidRequest(f"min_confidence must be in [0, 1] (0 = always answer); got "
                             f"{min_confidence}")
    return AnswerOptions(mode, float(min_confidence), top_k)


def first_views(card: ModelCard, mode: str) -> tuple[str, ...]:
    """The views of the first pass: all of them for "on" (and for "auto" when the views lack
    the plain one, so there is no plain answer to start from), else the plain view."""
    if mode == "on" or (mode == "auto" and "center" not in card.tta.views):
        return card.tta.views
    return PLAIN_VIEWS


def rest_views(card: ModelCard) -> tuple[str, ...]:
    """What ``tta=auto`` adds for an unsure image: every TTA view but the plain one."""
    return tuple(v for v in card.tta.views if v != "center")


def wants_more_views(card: ModelCard, mode: str, views: Sequence[str],
                     plain: np.ndarray) -> bool:
    """``tta=auto`` after the plain pass: is the calibrated plain top-1 below the threshold?"""
    if mode != "auto" or tuple(views) != PLAIN_VIEWS or not rest_views(card):
        return False
    threshold = card.calibration.auto_threshold
    if threshold is None:  # no threshold chosen at export: every image gets the views
        return True
    calibrated = apply_temperature(plain, card.calibration.temperature)
    return float(calibrated.max()) < threshold


def join_views(card: ModelCard, plain: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """(1, C) plain output + (V-1, C) other views' outputs -> (V, C) in model.json's order."""
    out = np.empty((len(card.tta.views), plain.shape[-1]), dtype=np.float32)
    center = card.tta.views.index("center")
    out[center] = plain[0]
    out[[i for i in range(len(card.tta.views)) if i != center]] = rest
    return out


def make_answer(name: str, version: int, card: ModelCard, out: np.ndarray,
                views: Sequence[str], options: AnswerOptions) -> Prediction:
    """The network's (V, C) outputs of ``views`` -> the calibrated Prediction."""
    combined = tuple(views) == card.tta.views and (
        options.mode == "on" or (options.mode == "auto" and len(views) > 1))
    probs = combine_tta(out[None], card.tta)[0] if combined else out[0]
    calibration = card.calibration
    temperature = calibration.temperature_for(combined)
    probs = apply_temperature(probs, temperature)
    confidence = float(probs.max())
    return make_prediction(
        name, version, card.classes, probs, tta=combined, views=len(views),
        top_k=options.top_k, tta_mode=options.mode, views_used=tuple(views),
        calibrated=calibration.calibrated, temperature=temperature,
        unsure=confidence < options.min_confidence, min_confidence=options.min_confidence)
