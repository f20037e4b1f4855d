"""service.evaluation_report: counts add up, metrics equal scikit-learn's, files are readable."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from service.evaluation_report import (
    build_report,
    classification_text,
    confusion_png,
    save_report,
)

CLASSES = ["cat", "dog", "fox", "owl"]


def _random_labels(seed: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, n)
    # a mostly-right classifier, so every kind of cell (tp, fp, fn) occurs
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, n))
    return y_true, y_pred


def test_counts_add_up() -> None:
    y_true, y_pred = _random_labels(0, 500, len(CLASSES))
    r = build_report(y_true, y_pred, CLASSES)
    assert r.confusion.dtype == np.int64
    assert r.confusion.sum() == r.n == 500
    np.testing.assert_array_equal(r.confusion.sum(axis=1), [m.support for m in r.per_class])
    np.testing.assert_array_equal(r.confusion.sum(axis=1), np.bincount(y_true, minlength=4))
    np.testing.assert_array_equal(r.confusion.sum(axis=0), np.bincount(y_pred, minlength=4))
    assert r.accuracy == pytest.approx(np.mean(y_true == y_pred))
    np.testing.assert_allclose(r.normalized().sum(axis=1), 1.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_metrics_equal_sklearn(seed: int) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    k = 7
    y_true, y_pred = _random_labels(seed, 300, k)
    names = [f"c{i}" for i in range(k)]
    r = build_report(y_true.tolist(), y_pred.tolist(), names)
    labels = list(range(k))
    np.testing.assert_array_equal(r.confusion, metrics.confusion_matrix(y_true, y_pred,
                                                                        labels=labels))
    p, rec, f1, support = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    np.testing.assert_allclose([m.precision for m in r.per_class], p)
    np.testing.assert_allclose([m.recall for m in r.per_class], rec)
    np.testing.assert_allclose([m.f1 for m in r.per_class], f1)
    np.testing.assert_array_equal([m.support for m in r.per_class], support)
    for avg, ours in (("macro", r.macro_avg()), ("weighted", r.weighted_avg())):
        sp, sr, sf, _ = metrics.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=avg, zero_division=0)
        assert ours == pytest.approx({"precision": sp, "recall": sr, "f1": sf})


def test_zero_support_and_never_predicted_class() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    # class 2 ("fox") never occurs and is never predicted; class 3 ("owl") is predicted, never true
    y_true = [0, 0, 1, 1, 1, 0]
    y_pred = [0, 3, 1, 1, 0, 0]
    r = build_report(y_true, y_pred, CLASSES)
    fox, owl = r.per_class[2], r.per_class[3]
    assert (fox.support, fox.precision, fox.recall, fox.f1) == (0, 0.0, 0.0, 0.0)
    assert (owl.support, owl.precision, owl.recall, owl.f1) == (0, 0.0, 0.0, 0.0)
    np.testing.assert_array_equal(r.normalized()[2], 0.0)
    assert np.isfinite(r.normalized()).all()
    macro = metrics.precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2, 3],
                                                     average="macro", zero_division=0)
    assert r.macro_avg()["f1"] == pytest.approx(macro[2])
    json.dumps(r.to_dict())  # no NaN/numpy types leak into JSON


def test_most_confused_order_and_min_filter() -> None:
    # dog->cat x3, fox->cat x2, cat->dog x2, owl->fox x1
    y_true = [1, 1, 1, 2, 2, 0, 0, 3, 0, 1]
    y_pred = [0, 0, 0, 0, 0, 1, 1, 2, 0, 1]
    r = build_report(y_true, y_pred, CLASSES)
    assert r.most_confused == [("dog", "cat", 3), ("cat", "dog", 2), ("fox", "cat", 2),
                               ("owl", "fox", 1)]
    r2 = build_report(y_true, y_pred, CLASSES, min_confused=2)
    assert r2.most_confused == [("dog", "cat", 3), ("cat", "dog", 2), ("fox", "cat", 2)]
    assert build_report(y_true, y_pred, CLASSES, min_confused=4).most_confused == []
    assert all(a != p for a, p, _ in r.most_confused)


def test_perfect_predictions_have_no_confusions() -> None:
    r = build_report([0, 1, 2, 3], [0, 1, 2, 3], CLASSES)
    assert r.accuracy == 1.0 and r.most_confused == []
    assert all(m.f1 == 1.0 for m in r.per_class)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([0, 1, 4], [0, 1, 1], r"y_true\[2\] = 4 is out of range for 4 classes"),
        ([0, 1, 2], [0, -1, 1], r"y_pred\[1\] = -1 is out of range"),
        ([0, 1], [0, 1, 1], "y_true has 2 labels but y_pred has 3"),
        ([], [], "no samples"),
        ([0, 1.5], [0, 1], r"y_true\[1\] = 1.5 is not an integer"),
        ([[0, 1]], [[0, 1]], "1-D"),
    ],
)
def test_invalid_labels_raise(y_true, y_pred, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_report(y_true, y_pred, CLASSES)


def test_invalid_classes_and_min_confused() -> None:
    with pytest.raises(ValueError, match="repeated"):
        build_report([0], [0], ["a", "a"])
    with pytest.raises(ValueError, match="empty"):
        build_report([0], [0], [])
    with pytest.raises(ValueError, match="min_confused"):
        build_report([0], [0], ["a"], min_confused=0)


def test_integral_floats_and_numpy_inputs_accepted() -> None:
    r = build_report(np.array([0.0, 1.0, 2.0]), np.array([0, 1, 1], dtype=np.uint8), CLASSES)
    assert r.n == 3 and r.confusion[2, 1] == 1


def test_to_dict_is_json_ready() -> None:
    y_true, y_pred = _random_labels(5, 60, 4)
    d = build_report(y_true, y_pred, CLASSES).to_dict()
    again = json.loads(json.dumps(d))
    assert set(again) >= {"accuracy", "n", "classes", "confusion", "normalized", "per_class",
                          "most_confused", "macro_avg"}
    assert again["n"] == 60 and sum(map(sum, again["confusion"])) == 60
    assert again["per_class"][0]["name"] == "cat"
    assert set(again["most_confused"][0]) == {"actual", "predicted", "count"}


@pytest.mark.parametrize(("k", "normalize"), [(3, False), (3, True), (30, False), (45, True)])
def test_png_decodes(k: int, normalize: bool) -> None:
    y_true, y_pred = _random_labels(k, 20 * k, k)
    r = build_report(y_true, y_pred, [f"class_{i}" for i in range(k)])
    png = confusion_png(r, normalize=normalize, title="t")
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG"
        im.load()
        assert min(im.size) >= 400


def test_save_report_writes_readable_files(tmp_path) -> None:
    y_true, y_pred = _random_labels(9, 80, 4)
    r = build_report(y_true, y_pred, CLASSES)
    paths = save_report(r, tmp_path / "report", prefix="valid_")
    assert all(p.is_file() and p.name.startswith("valid_") for p in paths.values())
    assert paths["confusion_png"].name == "valid_confusion_matrix.png"
    assert json.loads(paths["report_json"].read_text())["accuracy"] == pytest.approx(r.accuracy)
    matrix = json.loads(paths["confusion_json"].read_text())
    assert matrix["confusion"] == r.confusion.tolist() and matrix["classes"] == CLASSES
    for key in ("confusion_png", "confusion_normalized_png"):
        with Image.open(paths[key]) as im:
            im.load()
    assert "macro avg" in paths["report_txt"].read_text()
    assert "accuracy" in classification_text(r)


def test_module_is_torch_free() -> None:
    code = ("import sys, service.evaluation_report as m; "
            "m.confusion_png(m.build_report([0, 1], [1, 1], ['a', 'b'])); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
