"""Interpretation of a model's validation predictions: the shared evaluation report (confusion
matrix, per-class P/R/F1, most-confused pairs) plus a grid of the top losses."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from service.evaluation_report import build_report, confusion_png, save_report
from service.imaging import EvalSpec, decode_image, eval_view
from training.data import Items
from training.evaluate import Predictions
from training.evaluation_summary import EvaluationSummary

log = logging.getLogger(__name__)


def write_interpretation(preds: Predictions, items: Items, classes: list[str], out_dir: Path, *,
                         eval_spec: EvalSpec, min_confused: int = 1,
                         top_k: int = 16) -> EvaluationSummary:
    """Reports for the plain (and TTA) predictions and a top-losses PNG; returns the summary
    (also written as summary.json)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plain = build_report(preds.targets, preds.probs.argmax(1), classes, min_confused=min_confused)
    save_report(plain, out_dir)
    tta_accuracy = None
    if preds.tta_probs is not None:
        tta = build_report(preds.targets, preds.tta_probs.argmax(1), classes,
                           min_confused=min_confused)
        save_report(tta, out_dir, prefix="tta_")
        for normalize, name in ((False, "tta_confusion_matrix.png"),
                                (True, "tta_confusion_matrix_normalized.png")):
            kind = "normalized" if normalize else "counts"
            title = (f"Confusion matrix with TTA ({kind}) - accuracy {tta.accuracy:.3f}, "
                     f"n={tta.n}")
            (out_dir / name).write_bytes(confusion_png(tta, normalize=normalize, title=title))
        tta_accuracy = tta.accuracy
    summary = EvaluationSummary(n=plain.n, accuracy=plain.accuracy, tta_accuracy=tta_accuracy,
                                most_confused=tuple(map(tuple, plain.most_confused[:10])))
    plot_top_losses(preds, items, classes, out_dir / "top_losses.png", eval_spec=eval_spec, k=top_k)
    write_valid_items(items, classes, out_dir / "valid_items.json")
    (out_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


def write_valid_items(items: Items, classes: list[str], path: Path) -> None:
    """Which images the metrics were measured on (file names + labels), so anyone can re-check."""
    rows = [{"path": f"{Path(p).parent.name}/{Path(p).name}", "label": classes[y]}
            for p, y in zip(items.paths, items.labels, strict=True)]
    path.write_text(json.dumps(rows, indent=1) + "\n")


def plot_top_losses(preds: Predictions, items: Items, classes: list[str], path: Path, *,
                    eval_spec: EvalSpec, k: int = 16) -> Path:
    """The k images the model is most wrong about: predicted/actual/loss/probability, the title
    green when the prediction is right (a right but unsure one can rank high), red when wrong."""
    import matplotlib.pyplot as plt

    fig = top_losses_figure(preds, items, classes, eval_spec=eval_spec, k=k)
    fig.savefig(path)
    plt.close(fig)
    return path


def top_losses_figure(preds: Predictions, items: Items, classes: list[str], *,
                      eval_spec: EvalSpec, k: int = 16):
    """The figure plot_top_losses saves (a matplotlib Figure; the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-preds.losses)[:k]
    cols = min(4, len(order))
    rows = math.ceil(len(order) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order, strict=False):
        pred = int(preds.probs[i].argmax())
        right = pred == int(preds.targets[i])
        ax.imshow(eval_view(decode_image(items.paths[i]), eval_spec))
        ax.set_title(f"{classes[pred]}/{classes[preds.targets[i]]}\n"
                     f"{preds.losses[i]:.2f}/{preds.probs[i, pred]:.2f}", fontsize=9,
                     color="tab:green" if right else "tab:red")
    fig.suptitle("top losses: predicted/actual, loss/probability (green: right, red: wrong)")
    # leave the suptitle its own band: tight_layout alone lets it overlap the first row
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    return fig

