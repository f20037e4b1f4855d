"""What the core answers for one image: the top-k classes and the full probability vector,
calibrated by the model's temperatures, and how the answer was reached (path, views, unsure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.class_score import ClassScore


@dataclass(frozen=True, eq=False)
class Prediction:
    """One image's answer: top-k classes, the full probability vector, and who answered.

    path: "plain" (the centre view alone) or "tta" (the TTA views combined); with
    ``tta_mode`` "auto" either happens, by the image's calibrated plain confidence.
    views_used: the views the network ran for this answer, in model.json's order.
    calibrated: the probabilities went through the model's fitted temperature (False: a model
    exported before calibration, served with temperature 1).
    unsure: the top-1 probability is below ``min_confidence``; the top-k are still given.

    The fields carry the wire's names (``classes``, ``model_version``), as the client's
    ``service.client.Prediction`` does; ``top`` and ``version`` are their older names here.
    The two types stay apart: this one holds the whole probability vector and the temperature,
    which no wire carries, and the client may not import the core.
    """

    model: str
    model_version: int
    tta: bool  # the answer combines TTA views (path == "tta")
    tta_views: int  # views combined (1 without TTA)
    classes: tuple[ClassScore, ...]  # the top-k, most probable first
    probabilities: np.ndarray  # float32 (n_classes,), in the model's class order
    tta_mode: str = "off"  # what was asked (or the model's default): "off", "on", "auto"
    views_used: tuple[str, ...] = ("center",)
    calibrated: bool = False
    temperature: float = 1.0
    unsure: bool = False
    min_confidence: float = 0.0

    @property
    def label(self) -> str:
        return self.classes[0].label

    @property
    def top(self) -> tuple[ClassScore, ...]:
        """The older name of ``classes``."""
        return self.classes

    @property
    def version(self) -> int:
        """The older name of ``model_version``."""
        return self.model_version

    @property
    def path(self) -> str:
        return "tta" if self.tta else "plain"

    @property
    def confidence(self) -> float:
        return self.classes[0].probability

    def wire_fields(self) -> dict[str, Any]:
        """The answer's fields that every wire carries under these names (gRPC's
        PredictResponse, the HTTP body), besides ``classes``, which each wire spells in its own
        type: one list, so a new field reaches both wires or neither."""
        return {"model": self.model, "model_version": self.model_version, "tta": self.tta,
                "tta_views": self.tta_views, "calibrated": self.calibrated,
                "unsure": self.unsure, "path": self.path, "views_used": list(self.views_used),
                "tta_mode": self.tta_mode, "min_confidence": self.min_confidence}


def make_prediction(model: str, version: int, classes: tuple[str, ...], probs: np.ndarray, *,
                    tta: bool, views: int, top_k: int, **answer: object) -> Prediction:
    """The ``top_k`` most probable of ``classes`` (ties in class order) and the whole vector;
    ``answer``: the Prediction's path fields (tta_mode, views_used, calibrated, ...)."""
    k = min(top_k, len(classes))
    order = np.argsort(-probs, kind="stable")[:k]
    top = tuple(ClassScore(classes[i], int(i), float(probs[i])) for i in order)
    return Prediction(model=model, model_version=version, tta=tta, tta_views=views, classes=top,
                      probabilities=np.asarray(probs, dtype=np.float32), **answer)
