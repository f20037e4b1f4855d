"""What a classifier gets wrong: confusion matrix, per-class P/R/F1, most-confused pairs.

One implementation for every place that evaluates: the servers' Evaluate call, training's
interpretation step and the export check, so a number in a report means the same thing
wherever it was produced. Torch-free (numpy + matplotlib's Agg canvas, no pyplot state), so the
serving image can import it.

Conventions (the same as scikit-learn's ``confusion_matrix`` / ``precision_recall_fscore_support``
with ``zero_division=0``): rows are actual classes, columns predicted; a class never predicted has
precision 0, a class with no support has recall 0; macro averages are over *all* classes.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Above this many classes the PNG drops the per-cell numbers: they no longer fit legibly.
MAX_ANNOTATED_CLASSES = 30


@dataclass(frozen=True)
class ClassMetrics:
    """Precision, recall and F1 of one class; support = how many samples actually are that class."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class EvaluationReport:
    """The evaluation of one model on one labelled set.

    confusion: int64 (n_classes, n_classes) counts, rows = actual, cols = predicted.
    most_confused: (actual, predicted, count) off-diagonal pairs, count >= min_confused,
        largest count first (ties in class order), as fastai's ``most_confused``.
    """

    classes: list[str]
    confusion: np.ndarray
    accuracy: float
    n: int
    per_class: list[ClassMetrics]
    most_confused: list[tuple[str, str, int]]

    def normalized(self) -> np.ndarray:
        """Row-normalised confusion (each row = recall distribution); empty rows stay zeros."""
        counts = self.confusion.astype(np.float64)
        support = counts.sum(axis=1, keepdims=True)
        return np.divide(counts, support, out=np.zeros_like(counts), where=support > 0)

    def macro_avg(self) -> dict[str, float]:
        """Unweighted mean over all classes (zero-support classes included, as sklearn does)."""
        return {
            "precision": float(np.mean([m.precision for m in self.per_class])),
            "recall": float(np.mean([m.recall for m in self.per_class])),
            "f1": float(np.mean([m.f1 for m in self.per_class])),
        }

    def weighted_avg(self) -> dict[str, float]:
        """Mean over classes weighted by support."""
        support = np.array([m.support for m in self.per_class], dtype=np.float64)
        weights = support / support.sum() if support.sum() > 0 else support
        values = {key: np.array([getattr(m, key) for m in self.per_class])
                  for key in ("precision", "recall", "f1")}
        return {key: float(np.dot(weights, v)) for key, v in values.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain Python ints, floats, strings and lists only."""
        return {
            "accuracy": float(self.accuracy),
            "n": int(self.n),
            "classes": list(self.classes),
            "confusion": self.confusion.astype(np.int64).tolist(),
            "normalized": [[round(float(v), 6) for v in row] for row in self.normalized()],
            "per_class": [
                {"name": m.name, "precision": m.precision, "recall": m.recall, "f1": m.f1,
                 "support": m.support}
                for m in self.per_class
            ],
            "most_confused": [
                {"actual": a, "predicted": p, "count": c} for a, p, c in self.most_confused
            ],
            "macro_avg": self.macro_avg(),
            "weighted_avg": self.weighted_avg(),
        }


def _as_labels(values: Sequence[int], what: str, n_classes: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of class indices, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        for i, v in enumerate(arr.tolist()):
            if isinstance(v, bool) or not isinstance(v, int | float) or not float(v).is_integer():
                raise ValueError(f"{what}[{i}] = {v!r} is not an integer class index")
    arr = arr.astype(np.int64)
    arr = arr.astype(np.int64)
    out_of_range = np.flatnonzero((arr < 0) | (arr >= n_classes))
    if out_of_range.size:
        i = int(out_of_range[0])
        raise ValueError(
            f"{what}[{i}] = {int(arr[i])} is out of range for {n_classes} classes "
            f"(valid indices 0..{n_classes - 1}; {out_of_range.size} label(s) out of range)"
        )
    return arr


def build_report(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    classes: Sequence[str],
    *,
    min_confused: int = 1,
) -> EvaluationReport:
    """Evaluate predicted class indices against actual ones; ``classes[i]`` names index i."""
    classes = [str(c) for c in classes]
    k = len(classes)
    if k == 0:
        raise ValueError("classes is empty; a report needs at least one class name")
    if len(set(classes)) != k:
        dupes = sorted({c for c in classes if classes.count(c) > 1})
        raise ValueError(f"class names must be unique; repeated: {dupes}")
    if min_confused < 1:
        raise ValueError(f"min_confused must be >= 1, got {min_confused}")
    t = _as_labels(y_true, "y_true", k)
    p = _as_labels(y_pred, "y_pred", k)
    if t.size != p.size:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    if t.size == 0:
        raise ValueError("no samples to evaluate (y_true is empty)")

    confusion = np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    fp, fn = predicted - tp, support - tp
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    # F1 from counts, as sklearn computes it: identical to 2PR/(P+R) but exact at the edges.
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    per_class = [
        ClassMetrics(classes[i], float(precision[i]), float(recall[i]), float(f1[i]),
                     int(support[i]))
        for i in range(k)
    ]

    off = confusion.copy()
    np.fill_diagonal(off, 0)
    rows, cols = np.nonzero(off >= min_confused)
    pairs = sorted(zip(rows.tolist(), cols.tolist(), strict=True),
                   key=lambda rc: (-int(off[rc]), rc[0], rc[1]))
    most_confused = [(classes[r], classes[c], int(off[r, c])) for r, c in pairs]

    n = int(t.size)
    return EvaluationReport(
        classes=classes,
        confusion=confusion,
        accuracy=float(tp.sum() / n),
        n=n,
        per_class=per_class,
        most_confused=most_confused,
    )


def classification_text(report: EvaluationReport, *, top_confused: int = 10) -> str:
    """A fixed-width summary (sklearn's ``classification_report`` layout) for CLIs and logs."""
    width = max(12, *(len(c) for c in report.classes))
    lines = [f"{'':>{width}}  precision  recall      f1  support"]
    for m in report.per_class:
        lines.append(f"{m.name:>{width}}  {m.precision:9.3f}  {m.recall:6.3f}  {m.f1:6.3f}"
                     f"  {m.support:7d}")
    macro = report.macro_avg()
    lines += [
        "",
        f"{'accuracy':>{width}}  {'':9}  {'':6}  {report.accuracy:6.3f}  {report.n:7d}",
        f"{'macro avg':>{width}}  {macro['precision']:9.3f}  {macro['recall']:6.3f}"
        f"  {macro['f1']:6.3f}  {report.n:7d}",
    ]
    if report.most_confused:
        lines += ["", "most confused (actual -> predicted: count):"]
        lines += [f"  {a} -> {p}: {c}" for a, p, c in report.most_confused[:top_confused]]
    return "\n".join(lines)


def confusion_png(
    report: EvaluationReport, *, normalize: bool = False, title: str | None = None
) -> bytes:
    """The confusion matrix as PNG bytes: cells shaded by row fraction, numbers written in.

    Shading is always by the row-normalised value, so a large class does not wash out the
    others; ``normalize`` chooses whether the numbers are fractions or counts. Numbers are
    omitted above MAX_ANNOTATED_CLASSES classes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(report.classes)
    frac = report.normalized()
    side = min(max(4.5, 0.42 * k + 2.5), 24.0)  # inches; ~0.4 in per class keeps labels legible
    fig = Figure(figsize=(side, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ticks = np.arange(k)
    label_size = 10 if k <= 10 else 8 if k <= 40 else 6
    ax.set_xticks(ticks, labels=report.classes, rotation=90 if k > 8 else 45,
                  ha="center" if k > 8 else "right", fontsize=label_size)
    ax.set_yticks(ticks, labels=report.classes, fontsize=label_size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if title is None:
        kind = "normalized" if normalize else "counts"
        title = f"Confusion matrix ({kind}) - accuracy {report.accuracy:.3f}, n={report.n}"
    ax.set_title(title, fontsize=11)
    if k <= MAX_ANNOTATED_CLASSES:
        cell_size = 9 if k <= 10 else 7
        for r in range(k):
            for c in range(k):
                count = int(report.confusion[r, c])
                text = (f"{frac[r, c]:.2f}" if count else "0") if normalize else str(count)
                color = "white" if frac[r, c] > 0.5 else "black"
                ax.text(c, r, text, ha="center", va="center", color=color, fontsize=cell_size)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_report(report: EvaluationReport, out_dir: Path, *, prefix: str = "") -> dict[str, Path]:
    """Write the report's files into ``out_dir`` and return them by kind.

    Files (each name prefixed by ``prefix``): confusion_matrix.json (classes + counts +
    normalised), confusion_matrix.png (counts), confusion_matrix_normalized.png (fractions),
    classification_report.json (everything in ``to_dict``) and classification_report.txt.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    full = report.to_dict()
    paths = {
        "confusion_json": out_dir / f"{prefix}confusion_matrix.json",
        "confusion_png": out_dir / f"{prefix}confusion_matrix.png",
        "confusion_normalized_png": out_dir / f"{prefix}confusion_matrix_normalized.png",
        "report_json": out_dir / f"{prefix}classification_report.json",
        "report_txt": out_dir / f"{prefix}classification_report.txt",
    }
    matrix = {k: full[k] for k in ("classes", "confusion", "normalized", "n", "accuracy")}
    paths["confusion_json"].write_text(json.dumps(matrix, indent=2) + "\n")
    paths["confusion_png"].write_bytes(confusion_png(report))
    paths["confusion_normalized_png"].write_bytes(confusion_png(report, normalize=True))
    paths["report_json"].write_text(json.dumps(full, indent=2) + "\n")
    paths["report_txt"].write_text(classification_text(report) + "\n")
    log.info("wrote evaluation report (%d samples, accuracy %.4f) to %s",
             report.n, report.accuracy, out_dir)
    return paths
