"""The HTTP API on a real `tta-serve http` process: answers on real digits, the same evaluation
report as gRPC, every error with its status (each followed by a good request), concurrency."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import zipfile

import httpx
import numpy as np
import pytest
from google.protobuf import json_format
from http_testkit import HttpServer
from PIL import Image
from service_testkit import FixtureModel, RunningServer, offline_probs, png_bytes

from service._proto.tta_serve.v1 import classifier_pb2 as pb
from service.http.form_limits import MAX_FORM_FILES


def predict(client: httpx.Client, image: bytes, **options: object) -> httpx.Response:
    data = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}
    return client.post("/predict", files={"image": ("digit.png", image, "image/png")}, data=data)


def assert_still_serving(client: httpx.Client, digits_model: FixtureModel) -> None:
    image, label = digits_model.samples[7]
    response = predict(client, image, tta=True)
    assert response.status_code == 200, response.text
    assert response.json()["label"] == label


# ---- predict


@pytest.mark.parametrize("tta", [False, True])
def test_predict_answers_each_digit(client: httpx.Client, digits_model: FixtureModel, tta: bool):
    pngs = [image for image, _ in digits_model.samples]
    expected = offline_probs(digits_model.onnx_path, pngs, tta=tta)
    for (image, label), probs in zip(digits_model.samples, expected, strict=True):
        response = predict(client, image, tta=tta, top_k=3)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["label"] == label == body["classes"][0]["label"]
        assert (body["model"], body["model_version"], body["tta"]) == ("digits", 1, tta)
        assert body["tta_views"] == (len(digits_model.card.tta.views) if tta else 1)
        assert len(body["classes"]) == 3
        for score in body["classes"]:  # the served numbers are the model's, through one path
            assert score["label"] == str(score["index"])
            assert score["probability"] == pytest.approx(probs[score["index"]], abs=1e-5)


def test_predict_top_k_default_and_all_classes(client: httpx.Client, digits_model: FixtureModel):
    image, _ = digits_model.samples[0]
    assert len(predict(client, image).json()["classes"]) == 5
    every = predict(client, image, top_k=50).json()["classes"]
    assert [c["label"] for c in sorted(every, key=lambda c: c["index"])] == list(
        digits_model.card.classes)
    probabilities = [c["probability"] for c in every]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)


def test_predict_json_base64(client: httpx.Client, digits_model: FixtureModel):
    image, label = digits_model.samples[4]
    text = base64.b64encode(image).decode()
    for value in (text, f"data:image/png;base64,{text}"):
        response = client.post("/predict", json={"image_base64": value, "tta": True, "top_k": 1,
                                                 "model": "digits", "version": 1})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["label"] == label and body["tta"] and len(body["classes"]) == 1


# ---- predict_batch


def test_predict_batch_in_order_with_a_bad_item(client: httpx.Client,
                                                digits_model: FixtureModel):
    samples = digits_model.samples
    files = [("images", (f"{i}.png", image, "image/png")) for i, (image, _) in
             enumerate(samples[:3])]
    files.insert(1, ("images", ("notes.txt", b"not an image", "text/plain")))
    response = client.post("/predict_batch", files=files, data={"tta": "true", "top_k": "2"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 400, 200, 200]
    assert results[1]["kind"] == "invalid_image" and "not a recognised image" in results[1]["error"]
    answered = [r["prediction"] for r in results if r["status"] == 200]
    assert [p["label"] for p in answered] == [label for _, label in samples[:3]]
    assert all(p["tta"] and len(p["classes"]) == 2 for p in answered)


def test_predict_batch_json_with_bad_base64_and_too_large(client: httpx.Client,
                                                          digits_model: FixtureModel):
    (a, label_a), (b, label_b) = digits_model.samples[5], digits_model.samples[6]
    big = b"\x89PNG" + bytes(300 * 1024)  # over the 256 KiB test limit
    items = [base64.b64encode(a).decode(), "%%% not base64 %%%", base64.b64encode(big).decode(),
             base64.b64encode(b).decode()]
    response = client.post("/predict_batch", json={"images_base64": items})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 400, 413, 200]
    assert "images_base64[1]" in results[1]["error"]
    assert "--max-image-bytes" in results[2]["error"]
    assert [results[0]["prediction"]["label"], results[3]["prediction"]["label"]] == [label_a,
                                                                                      label_b]


# ---- evaluate


def _grpc_report(grpc_server: RunningServer, items: list[tuple[bytes, str]],
                 tta: bool) -> pb.EvaluateResponse:
    def requests():
        yield pb.EvaluateRequest(options=pb.EvaluateOptions(tta=tta))
        for image, label in items:
            yield pb.EvaluateRequest(image=image, label=label)

    return grpc_server.stub.Evaluate(requests(), timeout=120)


def _zip_of_class_folders(items: list[tuple[bytes, str]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("digits/", "")
        zf.writestr("digits/README.txt", "skipped: not an image")
        zf.writestr("__MACOSX/digits/0/._x.png", "skipped: resource fork")
        for i, (image, label) in enumerate(items):
            zf.writestr(f"digits/{label}/{i:04d}.png", image)
    return buf.getvalue()


def _assert_same_report(body: dict, expected: pb.EvaluateResponse) -> None:
    k = len(expected.confusion.classes)
    assert body["classes"] == list(expected.confusion.classes)
    assert np.array(body["confusion"]).ravel().tolist() == list(expected.confusion.counts)
    assert (body["n"], body["model"], body["model_version"], body["tta"]) == (
        expected.n, expected.model, expected.model_version, expected.tta)
    assert body["accuracy"] == pytest.approx(expected.accuracy, abs=1e-12)
    grpc_per_class = [json_format.MessageToDict(m, preserving_proto_field_name=True,
                                                always_print_fields_with_no_presence=True)
                      for m in expected.per_class]
    for got, want in zip(body["per_class"], grpc_per_class, strict=True):
        assert got["name"] == want["name"] and got["support"] == int(want["support"])
        for key in ("precision", "recall", "f1"):
            assert got[key] == pytest.approx(want[key], abs=1e-12)
    assert [(p["actual"], p["predicted"], p["count"]) for p in body["most_confused"]] == [
        (p.actual, p.predicted, p.count) for p in expected.most_confused]
    assert len(body["normalized"]) == k
    assert base64.b64decode(body["confusion_png_base64"]) == expected.confusion_png


@pytest.mark.parametrize("tta", [False, True])
def test_evaluate_equals_grpc(client: httpx.Client, grpc_server: RunningServer,
                              digits_model: FixtureModel, tta: bool):
    items = digits_model.valid[:120]
    expected = _grpc_report(grpc_server, items, tta)
    assert expected.n == len(items)

    files = [("images", (f"{i}.png", image, "image/png")) for i, (image, _) in enumerate(items)]
    labels = json.dumps([label for _, label in items])
    response = client.post("/evaluate", files=files, data={"labels": labels,
                                                           "tta": str(tta).lower()})
    assert response.status_code == 200, response.text
    body = response.json()
    _assert_same_report(body, expected)
    offline = digits_model.valid_pred_tta if tta else digits_model.valid_pred
    truth = np.array([int(label) for _, label in items])
    assert body["accuracy"] == pytest.approx(float((offline[:len(items)] == truth).mean()))

    png = client.get(body["confusion_png_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content == expected.confusion_png

    archive = client.post("/evaluate", files={"archive": ("set.zip", _zip_of_class_folders(items),
                                                          "application/zip")},
                          data={"tta": str(tta).lower()})
    assert archive.status_code == 200, archive.text
    # Zip members are evaluated in name order, not request order: the same set, the same report.
    _assert_same_report(archive.json(), expected)


def test_evaluate_json_base64(client: httpx.Client, grpc_server: RunningServer,
                              digits_model: FixtureModel):
    items = digits_model.valid[:30]
    response = client.post("/evaluate", json={
        "images_base64": [base64.b64encode(image).decode() for image, _ in items],
        "labels": [label for _, label in items], "min_confused": 1})
    assert response.status_code == 200, response.text
    _assert_same_report(response.json(), _grpc_report(grpc_server, items, tta=False))


# ---- models


def test_models_list_and_get(client: httpx.Client, grpc_server: RunningServer,
                             digits_model: FixtureModel):
    listing = client.get("/models")
    assert listing.status_code == 200, listing.text
    body = listing.json()
    grpc_listing = grpc_server.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert body["default_model"] == grpc_listing.default_model == "digits"
    assert body["provider"] == {"name": "CPUExecutionProvider", "device": "cpu",
                                "requested": "cpu"}
    (info,) = body["models"]
    card = digits_model.card
    assert info["name"] == "digits" and info["version"] == 1 and info["is_default"]
    assert info["repository_versions"] == [1]
    assert info["classes"] == list(card.classes) and info["input_size"] == card.input_size
    assert info["tta_views"] == list(card.tta.views) and info["tta_combine"] == card.tta.combine
    assert info["tta_beta"] == card.tta.beta
    assert info["metrics"] == card.metrics and info["created_at"] == card.created_at
    assert info["metrics"] == json_format.MessageToDict(grpc_listing.models[0].metrics)

    assert client.get("/models/digits").json() == info
    assert client.get("/models/digits", params={"version": 1}).json() == info
    # 0 = the served version, as in POST /predict (and gRPC GetModel)
    assert client.get("/models/digits", params={"version": 0}).json() == info
    response = predict(client, digits_model.samples[1][0], version=0)
    assert response.status_code == 200 and response.json()["model_version"] == 1


# ---- errors: each maps to its status, and the server keeps answering


def _png_of_size(width: int, height: int) -> bytes:
    return png_bytes(np.zeros((height, width), np.uint8))


ERRORS = {
    "not an image": (lambda s: {"files": {"image": ("a.txt", b"hello", "text/plain")}},
                     400, "invalid_image", "not a recognised image format"),
    "empty file": (lambda s: {"files": {"image": ("a.png", b"", "image/png")}},
                   400, "invalid_image", "empty"),
    "truncated png": (lambda s: {"files": {"image": ("a.png", s[: len(s) // 2], "image/png")}},
                      400, "invalid_image", "could not be decoded"),
    "bad base64": (lambda s: {"json": {"image_base64": "@@@"}},
                   400, "invalid_image", "image_base64 is not valid base64"),
    "too many bytes": (lambda s: {"files": {"image": ("a.png", s + bytes(300 * 1024),
                                                      "image/png")}},
                       413, "image_too_large", "--max-image-bytes"),
    "too many pixels": (lambda s: {"files": {"image": ("a.png", _png_of_size(1200, 1000),
                                                       "image/png")}},
                        413, "image_too_large", "--max-pixels"),
    "unknown model": (lambda s: {"files": {"image": ("a.png", s, "image/png")},
                                 "data": {"model": "cats"}},
                      404, "model_not_found", "model 'cats' is not served"),
    "unknown version": (lambda s: {"files": {"image": ("a.png", s, "image/png")},
                                   "data": {"version": "7"}},
                        404, "model_not_found", "version 7 is not served"),
    "negative top_k": (lambda s: {"files": {"image": ("a.png", s, "image/png")},
                                  "data": {"top_k": "-1"}},
                       400, "invalid_request", "top_k must be >= 0"),
    "no image": (lambda s: {"json": {"tta": True}},
                 400, "invalid_request", "'image'"),
    "image and base64": (lambda s: {"files": {"image": ("a.png", s, "image/png")},
                                    "data": {"image_base64": "AAAA"}},
                         400, "invalid_request", "exactly one image"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_predict_errors(client: httpx.Client, digits_model: FixtureModel, case: str):
    build, status, kind, words = ERRORS[case]
    response = client.post("/predict", **build(digits_model.samples[3][0]))
    assert response.status_code == status, response.text
    body = response.json()
    assert (body["kind"], words in body["error"]) == (kind, True), body
    assert_still_serving(client, digits_model)


@pytest.mark.parametrize("request_kwargs, field", [
    ({"files": {"image": ("a.png", b"x", "image/png")}, "data": {"top_k": "three"}}, "top_k"),
    ({"json": {"image_base64": 5}}, "image_base64"),
    ({"json": {"images_base64": "not a list"}}, "images_base64"),
])
def test_malformed_fields_are_400_naming_the_field(client: httpx.Client,
                                                   digits_model: FixtureModel,
                                                   request_kwargs: dict, field: str):
    path = "/predict_batch" if "images_base64" in request_kwargs.get("json", {}) else "/predict"
    response = client.post(path, **request_kwargs)
    assert response.status_code == 400, response.text
    assert field in json.dumps(response.json()["detail"])
    assert_still_serving(client, digits_model)


def test_batch_and_evaluate_errors(client: httpx.Client, digits_model: FixtureModel):
    image, label = digits_model.samples[2]
    png = ("a.png", image, "image/png")
    cases = [
        ("/predict_batch", {"json": {"images_base64": []}}, 400, "one or more images"),
        ("/predict_batch", {"files": [("images", png)], "data": {"model": "cats"}}, 404,
         "'cats'"),
        ("/evaluate", {"files": [("images", png), ("images", png)],
                       "data": {"labels": json.dumps([label])}}, 400, "2 images and 1 labels"),
        ("/evaluate", {"files": [("images", png)], "data": {"labels": '["seven"]'}}, 400,
         "label 'seven' is not a class"),
        ("/evaluate", {"files": [("images", ("a.txt", b"text", "text/plain"))],
                       "data": {"labels": json.dumps([label])}}, 400, "item 0:"),
        ("/evaluate", {"files": {"archive": ("a.zip", b"not a zip", "application/zip")}}, 400,
         "not a zip file"),
        ("/evaluate", {"files": {"archive": ("a.zip", _zip_loose_image(image),
                                             "application/zip")}}, 400, "not in a class folder"),
        ("/evaluate", {"json": {"labels": [label]}}, 400, "exactly one of"),
        ("/evaluate", {"files": [("images", png)], "data": {"labels": json.dumps([label]),
                                                            "min_confused": "0"}}, 400,
         "min_confused"),
    ]
    for path, kwargs, status, words in cases:
        response = client.post(path, **kwargs)
        assert response.status_code == status, (path, kwargs.get("data"), response.text)
        assert words in response.json()["error"], response.text
        assert_still_serving(client, digits_model)


def test_more_multipart_files_than_the_form_parser_takes_is_413(http_server: HttpServer,
                                                                client: httpx.Client,
                                                                digits_model: FixtureModel):
    """Past Starlette's form limit (1000 files) BentoML would answer 500: the service answers
    413 saying the limit and to send a zip; exactly the limit still works."""
    image, label = digits_model.samples[5]
    n = MAX_FORM_FILES + 1
    files = [("images", (f"{i}.png", image, "image/png")) for i in range(n)]
    response = client.post("/evaluate", files=files, data={"labels": json.dumps([label] * n)})
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["kind"] == "too_many_parts"
    assert f"at most {MAX_FORM_FILES} files" in body["error"]
    assert "zip 'archive' of class folders" in body["error"]
    assert client.post("/predict_batch", files=files).status_code == 413
    assert_still_serving(client, digits_model)

    response = client.post("/predict_batch", files=files[:MAX_FORM_FILES])
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == MAX_FORM_FILES
    assert {r["prediction"]["label"] for r in results} == {label}
    log = http_server.process.log
    assert "refused a multipart body of more than 1000 files" in log
    assert "TooManyFormParts" not in log  # no traceback for a refused request


def _zip_loose_image(image: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("loose.png", image)
    return buf.getvalue()


def test_model_routes_errors(client: httpx.Client, digits_model: FixtureModel):
    for path, params, status, kind in [("/models/cats", None, 404, "model_not_found"),
                                       ("/models/digits", {"version": 2}, 404, "model_not_found"),
                                       ("/models/digits", {"version": "x"}, 400,
                                        "invalid_request")]:
        response = client.get(path, params=params)
        assert (response.status_code, response.json()["kind"]) == (status, kind), response.text
    response = client.get("/evaluations/unknown/confusion.png")
    assert response.status_code == 404 and "no evaluation 'unknown'" in response.json()["error"]
    assert_still_serving(client, digits_model)


# ---- concurrency


def test_concurrent_requests_each_get_their_own_answer(http_server: HttpServer,
                                                       digits_model: FixtureModel):
    samples = digits_model.samples
    bad = png_bytes(np.zeros((4, 4), np.uint8))[:20]  # truncated: a bad request in the crowd

    async def one(i: int, client: httpx.AsyncClient) -> tuple[int, httpx.Response]:
        image = bad if i % 11 == 5 else samples[i % len(samples)][0]
        response = await client.post("/predict", files={"image": ("d.png", image, "image/png")},
                                     data={"tta": str(i % 2 == 0).lower()})
        return i, response

    async def crowd() -> list[tuple[int, httpx.Response]]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=http_server.base_url, timeout=120,
                                     limits=limits) as client:
            return await asyncio.gather(*(one(i, client) for i in range(32)))

    for i, response in asyncio.run(crowd()):
        if i % 11 == 5:
            assert response.status_code == 400, response.text
            continue
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["label"] == samples[i % len(samples)][1], (i, body)
        assert body["tta"] == (i % 2 == 0)


def test_decoded_image_modes(client: httpx.Client, digits_model: FixtureModel):
    """JPEG and RGBA uploads of the same digit go through the same decode path."""
    image, label = digits_model.samples[1]
    gray = Image.open(io.BytesIO(image))
    for mode, fmt in (("RGB", "JPEG"), ("RGBA", "PNG")):
        buf = io.BytesIO()
        gray.convert(mode).save(buf, format=fmt, quality=100)
        response = predict(client, buf.getvalue())
        assert response.status_code == 200 and response.json()["label"] == label, fmt
