"""Calibrated answers over gRPC: the bundled digits v2 (calibrated, tta=auto by default) through a
real server; the new PredictRequest/PredictResponse, EvaluateOptions/Response and ModelInfo
fields, and an old client's request (no new fields) answered with the model's defaults."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from service_testkit import REPO_ROOT, RunningServer, core_config, load_digits_pngs

from service._proto.tta_serve.v1 import classifier_pb2 as pb
from service.model_repository import ModelRepository

MODELS = REPO_ROOT / "models"
CARD = ModelRepository(MODELS).resolve("digits").card

pytestmark = pytest.mark.skipif(not CARD.calibration.calibrated,
                                reason="the bundled digits model is not calibrated here")


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = RunningServer(core_config(MODELS, default_model="digits"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def digits() -> list[tuple[bytes, str]]:
    """Real handwritten digits (scikit-learn's, as PNGs)."""
    d = load_digits_pngs()
    return [(d.pngs[i], str(d.labels[i])) for i in d.valid[:80]]


def test_model_info_says_how_it_is_calibrated(server: RunningServer) -> None:
    info = server.stub.GetModel(pb.GetModelRequest(name="digits"), timeout=10)
    c = CARD.calibration
    assert info.calibrated and info.default_tta == "auto"
    assert info.temperature == pytest.approx(c.temperature)
    assert info.tta_temperature == pytest.approx(c.tta_temperature)
    assert info.auto_threshold == pytest.approx(c.auto_threshold)
    assert info.min_confidence == pytest.approx(c.min_confidence)
    assert list(info.tta_weights) == pytest.approx(list(CARD.tta.weights))
    assert info.calibration["ece"]["tta"]["after"] < info.calibration["ece"]["tta"]["before"]


def test_auto_and_abstention_over_the_wire(server: RunningServer, digits) -> None:
    paths = set()
    for image, _ in digits:
        auto = server.stub.Predict(pb.PredictRequest(image=image, tta_mode=pb.TTA_MODE_AUTO,
                                                     top_k=3), timeout=10)
        old_client = server.stub.Predict(pb.PredictRequest(image=image, top_k=3), timeout=10)
        assert auto.calibrated and auto.tta_mode == "auto" and old_client.tta_mode == "auto"
        assert (auto.path == "tta") == (list(auto.views_used) == list(CARD.tta.views))
        assert auto.path == old_client.path and auto.tta == (auto.path == "tta")
        np.testing.assert_allclose([c.probability for c in auto.classes],
                                   [c.probability for c in old_client.classes], atol=1e-6)
        paths.add(auto.path)
    assert paths == {"plain", "tta"}  # both paths were taken on these photos
    image = digits[0][0]
    unsure = server.stub.Predict(pb.PredictRequest(image=image, min_confidence=1.0, top_k=3),
                                 timeout=10)
    sure = server.stub.Predict(pb.PredictRequest(image=image, min_confidence=0.0, top_k=3),
                               timeout=10)
    assert unsure.unsure and len(unsure.classes) == 3 and unsure.min_confidence == 1.0
    assert not sure.unsure and sure.min_confidence == 0.0
    plain = server.stub.Predict(pb.PredictRequest(image=image, tta_mode=pb.TTA_MODE_OFF),
                                timeout=10)
    assert plain.path == "plain" and list(plain.views_used) == ["center"] and not plain.tta
    on = server.stub.Predict(pb.PredictRequest(image=image, tta=True), timeout=10)
    assert on.path == "tta" and on.tta_mode == "on" and on.tta_views == len(CARD.tta.views)


def test_evaluate_reports_ece_and_the_paths(server: RunningServer, digits) -> None:
    requests = [pb.EvaluateRequest(options=pb.EvaluateOptions(tta_mode=pb.TTA_MODE_AUTO))]
    requests += [pb.EvaluateRequest(image=b, label=y) for b, y in digits]
    report = server.stub.Evaluate(iter(requests), timeout=60)
    assert report.n == len(digits) and report.calibrated and report.tta_mode == "auto"
    assert 0 < report.tta_answers < report.n and 0 <= report.ece < 0.2
