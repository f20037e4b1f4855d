"""Temperature scaling, ECE, risk-coverage and the export thresholds on numbers whose answers
are known; per-view TTA weights; model.json without calibration serves with temperature 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.calibration import (
    Calibration,
    apply_temperature,
    expected_calibration_error,
    reliability,
    risk_coverage,
    tta_mode,
)
from service.imaging import TTASpec, combine_tta, softmax
from service.model_repository import ModelCard
from training.calibration.temperature import fit_temperature
from training.calibration.thresholds import choose_abstain_threshold, choose_auto_threshold

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fitting_recovers_a_known_temperature(true_t: float) -> None:
    # Labels drawn from softmax(z / T): the graph answers softmax(z), so the NLL-optimal
    # temperature to apply to its output is T.
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(20000, 10))
    labels = np.array([rng.choice(10, p=p) for p in softmax(z / true_t)])
    fitted = fit_temperature(softmax(z).astype(np.float32), labels)
    assert fitted == pytest.approx(true_t, rel=0.05)
    calibrated = apply_temperature(softmax(z).astype(np.float32), fitted)
    assert expected_calibration_error(calibrated, labels) < 0.015


def test_temperature_one_is_the_identity_and_others_are_softmax_of_scaled_logits() -> None:
    p = softmax(np.array([[2.0, 0.0, -1.0], [0.1, 0.2, 0.3]])).astype(np.float32)
    assert np.array_equal(apply_temperature(p, 1.0), p)
    z = np.array([[2.0, 0.0, -1.0], [0.1, 0.2, 0.3]])
    np.testing.assert_allclose(apply_temperature(p, 2.0), softmax(z / 2.0), atol=1e-6)


def test_ece_by_hand() -> None:
    # bin (0.8667, 0.9333]: confidences 0.9, 0.9 -> one right: |0.5 - 0.9| = 0.4, weight 2/4;
    # bin (0.2667, 0.3333]: 0.3, 0.3 -> both wrong: |0 - 0.3| = 0.3, weight 2/4
    r = reliability(np.array([0.9, 0.9, 0.3, 0.3]), np.array([1, 0, 0, 0]))
    assert r.ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.3)
    assert r.counts.sum() == 4 and len(r.counts) == 15


def test_risk_coverage_most_confident_first() -> None:
    t, cov, acc = risk_coverage(np.array([0.9, 0.8, 0.8, 0.4]), np.array([1, 1, 0, 0]))
    np.testing.assert_allclose(t, [0.9, 0.8, 0.4])
    np.testing.assert_allclose(cov, [0.25, 0.75, 1.0])
    np.testing.assert_allclose(acc, [1.0, 2 / 3, 0.5])


def _brute_force_auto(plain, tta, labels, tolerance=0.001):
    conf = plain.max(1)
    target = (tta.argmax(1) == labels).mean() - tolerance
    best = None
    for t in sorted({0.0, *conf.tolist(), 2.0}):
        ext = conf < t
        acc = np.where(ext, tta.argmax(1), plain.argmax(1)) == labels
        if acc.mean() >= target - 1e-12 and (best is None or ext.mean() < best):
            best = ext.mean()
    return best


def test_auto_threshold_is_the_cheapest_within_a_tenth_of_a_point() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 3000)
    plain = softmax(rng.normal(0, 1, (3000, 5)) + 2.0 * np.eye(5)[labels])
    tta = softmax(rng.normal(0, 1, (3000, 5)) + 2.6 * np.eye(5)[labels])
    choice = choose_auto_threshold(plain, tta, labels, views=4)
    extended = plain.max(1) < choice.threshold
    assert extended.mean() == pytest.approx(choice.extended_share)
    assert choice.extended_share == pytest.approx(_brute_force_auto(plain, tta, labels))
    assert choice.accuracy >= choice.tta_accuracy - 0.001
    assert choice.images_per_request == pytest.approx(1 + 3 * choice.extended_share)
    assert 0 < choice.extended_share < 1


def test_abstain_threshold_reaches_the_target_with_the_largest_coverage() -> None:
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]])
    labels = np.array([0, 0, 0, 1, 0])  # the 0.6 one is wrong
    choice = choose_abstain_threshold(probs, labels, 0.99)
    assert (choice.min_confidence, choice.coverage, choice.accuracy) == (0.8, 0.6, 1.0)
    assert choose_abstain_threshold(np.array([[0.9, 0.1]]), np.array([1]), 0.5) is None


def test_tta_weights_combine_and_old_specs_are_unchanged() -> None:
    probs = np.array([[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]], dtype=np.float32)
    weighted = TTASpec(views=("center", "hflip", "vflip"), beta=None, weights=(2, 1, 1))
    np.testing.assert_allclose(combine_tta(probs, weighted), [[0.625, 0.375]])
    old = TTASpec(views=("center", "hflip", "vflip"), beta=0.5)
    assert "weights" not in old.to_dict()
    assert TTASpec.from_dict(old.to_dict()) == old
    assert TTASpec.from_dict(weighted.to_dict()) == weighted
    assert TTASpec(views=("center",), beta=None, weights=(1.0,)).views == ("center",)
    with pytest.raises(ValueError, match="2 given for 3 views"):
        TTASpec(views=("center", "hflip", "vflip"), beta=None, weights=(1, 1))
    with pytest.raises(ValueError, match="replace beta"):
        TTASpec(views=("center", "hflip"), beta=0.5, weights=(1, 1))


def test_a_model_json_from_before_calibration_serves_with_temperature_one() -> None:
    card = ModelCard.from_dict(json.loads((ROOT / "models/digits/1/model.json").read_text()))
    assert card.calibration == Calibration.uncalibrated()
    assert not card.calibration.calibrated
    assert card.calibration.temperature_for(True) == card.calibration.temperature_for(False) == 1
    assert (card.calibration.default_tta, card.calibration.min_confidence) == ("off", 0.0)
    assert "calibration" not in card.to_dict()  # written back as it was


def test_tta_mode_names_the_choices() -> None:
    assert [tta_mode(v, "auto") for v in (True, False, None, "AUTO", "on")] == \
        ["on", "off", "auto", "auto", "on"]
    with pytest.raises(ValueError, match="off.*on.*auto"):
        tta_mode("sometimes")
