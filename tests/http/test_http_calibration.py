"""The calibration fields of the HTTP API on the session's real `tta-serve http` process (its
fixture model was exported before calibration: temperature 1, no abstention, TTA off by default,
and it says so); the calibrated behaviour itself is the core's (tests/calibration)."""

from __future__ import annotations

import httpx
from service_testkit import FixtureModel


def _predict(client: httpx.Client, image: bytes, **data: str) -> httpx.Response:
    return client.post("/predict", files={"image": ("digit.png", image, "image/png")}, data=data)


def test_tta_modes_and_unsure_over_http(client: httpx.Client, digits_model: FixtureModel):
    image, label = digits_model.samples[3]
    default = _predict(client, image, top_k="3").json()
    assert (default["tta_mode"], default["path"], default["views_used"]) == ("off", "plain",
                                                                             ["center"])
    assert not default["calibrated"] and not default["unsure"]
    auto = _predict(client, image, tta="auto").json()  # no threshold recorded: every view runs
    assert (auto["tta_mode"], auto["path"]) == ("auto", "tta") and auto["tta"]
    assert auto["views_used"] == list(digits_model.card.tta.views)
    unsure = _predict(client, image, min_confidence="1.0", top_k="3").json()
    assert unsure["unsure"] and unsure["min_confidence"] == 1.0 and len(unsure["classes"]) == 3
    assert unsure["label"] == label
    body = client.post("/predict_batch", files=[("images", ("a.png", image, "image/png"))],
                       data={"tta": "auto", "min_confidence": "1.0"}).json()
    item = body["results"][0]["prediction"]
    assert item["unsure"] and item["path"] == "tta"
    bad = _predict(client, image, min_confidence="2")
    assert bad.status_code == 400 and "min_confidence" in bad.text
    assert _predict(client, image, tta="sometimes").status_code == 400


def test_models_say_whether_they_are_calibrated(client: httpx.Client):
    models = client.get("/models").json()["models"]
    calibration = models[0]["calibration"]
    assert calibration["calibrated"] is False
    assert calibration["temperature"] == {"plain": 1.0, "tta": 1.0}
    assert calibration["default_tta"] == "off" and calibration["min_confidence"] == 0.0
