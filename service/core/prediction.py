"""What the core answers for one image: the top-k classes and the full probability vector."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClassScore:
    label: str
    index: int
    probability: float


@dataclass(frozen=True, eq=False)
class Prediction:
    """One image's answer: top-k classes, the full probability vector, and who answered."""

    model: str
    version: int
    tta: bool
    tta_views: int  # views combined (1 without TTA)
    top: tuple[ClassScore, ...]  # most probable first
    probabilities: np.ndarray  # float32 (n_classes,), in the model's class order

    @property
    def label(self) -> str:
        return self.top[0].label


def make_prediction(model: str, version: int, classes: tuple[str, ...], probs: np.ndarray, *,
                    tta: bool, views: int, top_k: int) -> Prediction:
    """The ``top_k`` most probable of ``classes`` (ties in class order) and the whole vector."""
    k = min(top_k, len(classes))
    order = np.argsort(-probs, kind="stable")[:k]
    top = tuple(ClassScore(classes[i], int(i), float(probs[i])) for i in order)
    return Prediction(model=model, version=version, tta=tta, tta_views=views, top=top,
                      probabilities=np.asarray(probs, dtype=np.float32))
