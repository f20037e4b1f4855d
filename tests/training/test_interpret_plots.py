"""The report's plots: top losses readable (title clear of the first row, right and wrong in two
colours) and the TTA confusion matrix saying TTA."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgba

import service.evaluation_report as evaluation_report
import training.interpret as interpret
from service.imaging import EvalSpec
from training.data import Items, load_items
from training.evaluate import Predictions


@pytest.fixture
def preds_and_items(digits_dir):
    split = load_items(digits_dir, valid_pct=0.2, seed=42)
    n = 12
    items = Items(list(split.valid.paths[:n]), list(split.valid.labels[:n]))
    targets = np.array(items.labels)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=n).astype(np.float32)
    probs[::2, :] = 0.01  # even rows: right but unsure; odd rows: whatever the draw says
    probs[np.arange(0, n, 2), targets[::2]] = 0.6
    losses = -np.log(probs[np.arange(n), targets])
    return Predictions(targets, probs, probs.copy(), losses), items


def test_top_losses_title_clear_of_the_first_row_and_right_wrong_coloured(preds_and_items):
    preds, items = preds_and_items
    classes = [str(i) for i in range(10)]
    fig = interpret.top_losses_figure(preds, items, classes, eval_spec=EvalSpec(16), k=12)
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    suptitle = fig._suptitle.get_window_extent(renderer)
    for ax in fig.axes:
        title = ax.title.get_window_extent(renderer)
        assert title.y1 + 2 <= suptitle.y0, "the figure title touches a subplot title"
    colours = {}
    order = np.argsort(-preds.losses)[:12]
    for ax, i in zip(fig.axes, order, strict=False):
        right = preds.probs[i].argmax() == preds.targets[i]
        colours.setdefault(right, set()).add(to_rgba(ax.title.get_color()))
    assert colours[True] == {to_rgba("tab:green")} and colours[False] == {to_rgba("tab:red")}


def test_tta_confusion_matrices_say_tta_in_their_titles(preds_and_items, tmp_path, monkeypatch):
    preds, items = preds_and_items
    titles = []
    real = evaluation_report.confusion_png

    def recording(report, *, normalize=False, title=None):
        png = real(report, normalize=normalize, title=title)
        titles.append(title)
        return png

    monkeypatch.setattr(interpret, "confusion_png", recording)
    interpret.write_interpretation(preds, items, [str(i) for i in range(10)], tmp_path,
                                   eval_spec=EvalSpec(16))
    assert len(titles) == 2 and all(t.startswith("Confusion matrix with TTA") for t in titles)
    written = (tmp_path / "tta_confusion_matrix.png").read_bytes()
    assert written[:8] == b"\x89PNG\r\n\x1a\n"
