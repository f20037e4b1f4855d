"""The hot path of ``POST /predict`` and ``/v2`` (service.http.hot_routes): a plain request is
answered without BentoML's generic layers, with the same answer the generic route gives; any
other request reaches the generic route byte for byte. On the session's real ``tta-serve http``
process, plus the parser on its own."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from service_testkit import FixtureModel

from service.http.hot_predict import PredictRequest, parse

# BentoML's generic route answers with the request's OpenTelemetry span id; the hot path runs
# no tracing, so the header tells which path answered.
TRACED = "x-bentoml-request-id"


def _multipart(image: bytes, **fields: str) -> httpx.Request:
    return httpx.Request("POST", "http://x/predict", files={"image": ("d.png", image)},
                         data=fields)


def _scope(request: httpx.Request) -> dict:
    return {"query_string": request.url.query,
            "headers": [(k.lower(), v) for k, v in request.headers.raw]}


def test_parse_takes_the_plain_shape_only(digits_model: FixtureModel):
    image, _ = digits_model.samples[0]
    plain = _multipart(image, tta="true", top_k="3", model="digits", version="1")
    parsed = parse(_scope(plain), plain.read())
    assert parsed == PredictRequest(image, None, {"tta": True, "top_k": 3, "model": "digits",
                                                  "version": 1})
    body = {"image_base64": base64.b64encode(image).decode(), "top_k": 2}
    as_json = httpx.Request("POST", "http://x/predict", json=body)
    assert parse(_scope(as_json), as_json.read()) == PredictRequest(
        None, body["image_base64"], {"top_k": 2})
    not_plain = [
        _multipart(image, tta="yes"),  # pydantic's lax bool: the generic route decides
        _multipart(image, top_k="3.5"),
        _multipart(image, model="7"),  # a number where text goes
        _multipart(image, colour="red"),  # an unknown field
        _multipart(image, image_base64="abc"),  # two images
        httpx.Request("POST", "http://x/predict", data={"image": "http://evil/x.png"}),
        httpx.Request("POST", "http://x/predict", json={"image_base64": 5}),
        httpx.Request("POST", "http://x/predict", json=["image_base64"]),
        httpx.Request("POST", "http://x/predict", content=b"{not json",
                      headers={"Content-Type": "application/json"}),
        httpx.Request("POST", "http://x/predict", content=image,
                      headers={"Content-Type": "application/octet-stream"}),
        httpx.Request("POST", "http://x/predict?tta=true", files={"image": ("d.png", image)}),
    ]
    for request in not_plain:
        assert parse(_scope(request), request.read()) is None, request
    cut = plain.read()[:-10]  # a body without its closing boundary
    assert parse(_scope(plain), cut) is None


def test_hot_and_generic_paths_give_the_same_answer(client: httpx.Client,
                                                    digits_model: FixtureModel):
    image, label = digits_model.samples[3]
    hot = client.post("/predict", files={"image": ("d.png", image, "image/png")},
                      data={"tta": "false", "top_k": "4"})
    # "False" is not JSON: the plain shape takes JSON booleans only, pydantic takes this too.
    generic = client.post("/predict", files={"image": ("d.png", image, "image/png")},
                          data={"tta": "False", "top_k": "4"})
    assert hot.status_code == generic.status_code == 200, (hot.text, generic.text)
    assert TRACED not in hot.headers and TRACED in generic.headers
    assert hot.json() == generic.json()
    assert hot.json()["label"] == label
    for name in ("content-type", "server"):
        assert hot.headers[name] == generic.headers[name]


def test_hot_json_and_errors_match_the_generic_route(client: httpx.Client,
                                                     digits_model: FixtureModel):
    image, _ = digits_model.samples[5]
    b64 = base64.b64encode(image).decode()
    hot = client.post("/predict", json={"image_base64": b64, "top_k": 2})
    generic = client.post("/predict", json={"image_base64": b64, "top_k": "2"})
    assert TRACED not in hot.headers and TRACED in generic.headers
    assert hot.status_code == generic.status_code == 200
    assert hot.json() == generic.json()
    for body in ({"image_base64": "!!"}, {"image_base64": base64.b64encode(b"no").decode()},
                 {"image_base64": b64, "model": "cats"}, {"image_base64": b64, "top_k": -1}):
        hot = client.post("/predict", json=body)
        as_text = {**body, "top_k": str(body.get("top_k", 0))}  # lax: the generic route
        generic = client.post("/predict", content=json.dumps(as_text),
                              headers={"Content-Type": "application/json"})
        assert TRACED not in hot.headers and TRACED in generic.headers
        assert hot.status_code == generic.status_code >= 400, (body, hot.text)
        assert hot.json() == generic.json()


@pytest.mark.parametrize("path", ["/v2/health/ready", "/v2/models/digits"])
def test_oip_routes_are_hot(client: httpx.Client, path: str):
    response = client.get(path)
    assert response.status_code == 200
    assert TRACED not in response.headers
    assert client.get("/v2/no/such/route").status_code == 404
