"""A calibrated model served: what the core answers is what calibration fitted, image by image.

The bundled digits v1 graph is calibrated on its own held-out photos (scikit-learn's digits as
PNGs, the recipe's seeded 20% split) by ``training calibrate``'s code into version 2 of a tmp
repository; the core serves it from there, and v1 (a model.json from before calibration) beside.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.calibration import apply_temperature
from service.core import CoreConfig, InferenceCore, InvalidRequest, VersionPolicy
from service.imaging import combine_tta
from training.calibration.publish import heldout_items, recalibrate
from training.calibration.views import view_probabilities
from training.data import make_digits

ROOT = Path(__file__).parents[2]
N_PHOTOS = 120


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> tuple[Path, list[tuple[Path, int]]]:
    """(repository with digits v1 and its calibrated v2, v2's held-out photos)."""
    work = tmp_path_factory.mktemp("calibrated")
    data = make_digits(work / "digits")
    repo = work / "models"
    shutil.copytree(ROOT / "models" / "digits" / "1", repo / "digits" / "1")
    published = recalibrate(repo, "digits", 1, data=data, abstain_at=0.99)
    assert published.version == 2
    items, _ = heldout_items(published.card, data)
    return repo, items[:N_PHOTOS]


def _core(repo: Path, **overrides) -> InferenceCore:
    config = CoreConfig(models_dir=str(repo), default_model="digits", device="cpu",
                        poll_interval_s=0, **overrides)
    return InferenceCore.create(config).start()


def _training_side(repo: Path, items: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated plain and TTA probabilities as calibration computes them (ONNX Runtime on the
    views of service.imaging, the recorded weights and temperatures)."""
    card = json.loads((repo / "digits" / "2" / "model.json").read_text())
    from service.model_repository import ModelCard

    card = ModelCard.from_dict(card)
    vp = view_probabilities(repo / "digits" / "2" / "model.onnx", items, card.eval_spec,
                            card.tta.views, card.tta.zoom_ratio, decode_tta=card.tta)
    plain = apply_temperature(vp.of(["center"])[:, 0], card.calibration.temperature)
    tta = apply_temperature(combine_tta(vp.probs, card.tta), card.calibration.tta_temperature)
    return plain, tta


def _predict_all(core: InferenceCore, images: list[bytes], **kw) -> list:
    async def run():
        return await asyncio.gather(*(core.predict(image, **kw) for image in images))

    return asyncio.run(run())


def test_served_probabilities_are_the_calibrated_ones(calibrated) -> None:
    repo, items = calibrated
    images = [path.read_bytes() for path, _ in items]
    plain, tta = _training_side(repo, items)
    core = _core(repo)
    try:
        served_plain = _predict_all(core, images, tta="off", top_k=1)
        served_tta = _predict_all(core, images, tta="on", top_k=1)
        info = core.get_model("digits")
    finally:
        core.stop()
    assert info.version == 2 and info.calibration.calibrated
    assert info.calibration.temperature != 1.0
    np.testing.assert_allclose([p.probabilities for p in served_plain], plain, atol=1e-5)
    np.testing.assert_allclose([p.probabilities for p in served_tta], tta, atol=1e-5)
    assert all(p.calibrated and p.path == "plain" for p in served_plain)
    assert all(p.calibrated and p.path == "tta" and p.views_used == info.tta.views
               for p in served_tta)


def test_auto_runs_the_other_views_exactly_for_images_under_the_threshold(calibrated) -> None:
    repo, items = calibrated
    images = [path.read_bytes() for path, _ in items]
    plain, tta = _training_side(repo, items)
    core = _core(repo)
    try:
        card = core.get_model("digits")
        threshold, views = card.calibration.auto_threshold, card.tta.views
        assert card.calibration.default_tta == "auto" and 0 < threshold <= 1 and len(views) > 1
        under = plain.max(1) < threshold
        assert 0 < under.sum() < len(images)  # both paths are exercised
        rows_before = core.stats.snapshot()["models"].get("digits", {}).get("rows", 0)
        answers = _predict_all(core, images, top_k=3)  # the model's default mode: auto
        rows = core.stats.snapshot()["models"]["digits"]["rows"] - rows_before
        counted = core.stats.answers("digits")
    finally:
        core.stop()
    assert [a.path == "tta" for a in answers] == under.tolist()
    assert all(a.tta_mode == "auto" for a in answers)
    assert all(a.views_used == (views if u else ("center",)) for a, u in zip(answers, under,
                                                                             strict=True))
    assert rows == len(images) + int(under.sum()) * (len(views) - 1)
    assert counted[("auto", "tta")] == under.sum()
    assert counted[("auto", "plain")] == len(images) - under.sum()
    expected = np.where(under[:, None], tta, plain)
    np.testing.assert_allclose([a.probabilities for a in answers], expected, atol=1e-5)


def test_unsure_answers_keep_their_top_k(calibrated) -> None:
    repo, items = calibrated
    image = items[0][0].read_bytes()
    core = _core(repo)
    try:
        default = core.get_model("digits").calibration.min_confidence
        sure = asyncio.run(core.predict(image, tta="off", top_k=3, min_confidence=0))
        unsure = asyncio.run(core.predict(image, tta="off", top_k=3, min_confidence=1.0))
        by_default = asyncio.run(core.predict(image, tta="off", top_k=3))
        with pytest.raises(InvalidRequest, match="min_confidence must be in"):
            asyncio.run(core.predict(image, min_confidence=1.5))
        with pytest.raises(InvalidRequest, match="tta must be one of"):
            asyncio.run(core.predict(image, tta="maybe"))
    finally:
        core.stop()
    assert not sure.unsure and unsure.unsure and len(unsure.classes) == 3
    assert unsure.classes == sure.classes and unsure.min_confidence == 1.0
    assert default > 0 and by_default.min_confidence == default
    assert by_default.unsure == (by_default.confidence < default)


def test_a_model_from_before_calibration_serves_as_before(calibrated) -> None:
    repo, items = calibrated
    import onnxruntime as ort

    from service.imaging import decode_image, eval_view, to_model_input

    session = ort.InferenceSession(str(ROOT / "models/digits/1/model.onnx"),
                                   providers=["CPUExecutionProvider"])
    core = _core(repo, version_policy=VersionPolicy(pinned=1))
    try:
        info = core.get_model("digits")
        answers = _predict_all(core, [p.read_bytes() for p, _ in items[:20]], top_k=1)
        spec = info.eval_spec
        raw = session.run(None, {"pixels": to_model_input(np.stack(
            [eval_view(decode_image(p, min_side=16), spec) for p, _ in items[:20]]))})[0]
    finally:
        core.stop()
    assert not info.calibration.calibrated and info.calibration.temperature == 1.0
    assert all(not a.calibrated and not a.unsure and a.path == "plain" and a.tta_mode == "off"
               for a in answers)
    np.testing.assert_allclose([a.probabilities for a in answers], raw, atol=1e-6)


def test_evaluation_reports_ece(calibrated) -> None:
    repo, items = calibrated
    labelled = [(p.read_bytes(), str(y)) for p, y in items]
    core = _core(repo)
    try:
        result = asyncio.run(core.evaluate(labelled, tta="auto"))
    finally:
        core.stop()
    assert result.calibrated and result.tta_mode == "auto" and 0 <= result.ece < 0.1
    assert 0 < result.tta_answers < len(items)
