"""What evaluating a checkpoint answers: a typed record instead of a dict with optional keys.

``tta_accuracy`` is None when the evaluation ran without TTA (``--no-tta``, ``evaluate`` without
``--tta``); a dict left readers to guess between a missing key and a None. ``to_dict()`` is the
report's summary.json, unchanged: the TTA key only when TTA ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EvaluationSummary:
    """One checkpoint's evaluation on a labelled set (the validation split by default)."""

    n: int  # images evaluated
    accuracy: float  # plain (centre view)
    tta_accuracy: float | None = None  # the recorded TTA views combined; None: TTA not run
    # (actual, predicted, count), most frequent first; empty on the ranks that write no report
    most_confused: tuple[tuple[str, str, int], ...] = ()
    checkpoint: Path | None = None  # the checkpoint evaluated (not in summary.json)

    def final_metrics(self) -> dict[str, float]:
        """accuracy and, when TTA ran, tta_accuracy: the numbers trackers log at the end."""
        out = {"accuracy": self.accuracy}
        if self.tta_accuracy is not None:
            out["tta_accuracy"] = self.tta_accuracy
        return out

    def to_dict(self) -> dict[str, Any]:
        """summary.json: n, accuracy, most_confused (ten), and tta_accuracy when TTA ran."""
        out: dict[str, Any] = {"n": self.n, "accuracy": self.accuracy,
                               "most_confused": [list(p) for p in self.most_confused]}
        if self.tta_accuracy is not None:
            out["tta_accuracy"] = self.tta_accuracy
        return out
