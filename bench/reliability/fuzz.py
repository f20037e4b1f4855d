"""Bad and tricky requests on every route of both front ends and the OIP, each with the status
(and message fragment) it must get; randomly damaged images; the check that a server still serves.
"""

from __future__ import annotations

import gzip
import json
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.reliability.clients import ANSWERED, GrpcPredictor, HttpPredictor
from bench.reliability.inputs import (
    gif_declaring,
    gzip_bomb,
    png_declaring,
    tiff_declaring,
    truncated_png,
    zip_bomb,
    zip_of,
)
from bench.serve_process import ServeProcess

OK = "OK"  # the gRPC status name of a success; HTTP cases expect an int


@dataclass
class Case:
    """One bad (or tricky) request and the status it must get; ``send`` returns (status, text):
    an HTTP status code, or a gRPC status code's name."""

    name: str
    wire: str  # http | grpc
    expected: int | str
    send: Callable[[ServeProcess], tuple[int | str, str]]
    fragment: str = ""  # the answer's message must contain it


def _http(method: str, path: str, **kwargs: Any) -> Callable[[ServeProcess], tuple[int, str]]:
    """An HTTP request; a callable ``content`` or ``files`` is built when the case is sent."""

    def send(server: ServeProcess) -> tuple[int, str]:
        import httpx

        built = {k: v() if callable(v) else v for k, v in kwargs.items()}
        r = httpx.request(method, server.http_url + path, timeout=60, **built)
        return r.status_code, r.text[:2000]

    return send


def _grpc(call: Callable[[Any], Any]) -> Callable[[ServeProcess], tuple[str, str]]:
    def send(server: ServeProcess) -> tuple[str, str]:
        import grpc

        with grpc.insecure_channel(server.grpc_target, options=[
                ("grpc.max_send_message_length", 64 << 20)]) as channel:
            try:
                call(channel)
            except grpc.RpcError as e:
                return e.code().name, e.details() or ""
        return OK, ""

    return send


def _predict(**fields: Any) -> Callable[[Any], Any]:
    from service._proto.tta_serve.v1 import classifier_pb2 as pb
    from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc

    return lambda channel: pb_grpc.ClassifierStub(channel).Predict(
        pb.PredictRequest(**fields), timeout=60)


def _evaluate(items: list[tuple[bytes, str]]) -> Callable[[Any], Any]:
    from service._proto.tta_serve.v1 import classifier_pb2 as pb
    from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc

    return lambda channel: pb_grpc.ClassifierStub(channel).Evaluate(
        iter([pb.EvaluateRequest(image=i, label=label) for i, label in items]), timeout=60)


def _get_model(name: str) -> Callable[[Any], Any]:
    from service._proto.tta_serve.v1 import classifier_pb2 as pb
    from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc

    return lambda channel: pb_grpc.ClassifierStub(channel).GetModel(
        pb.GetModelRequest(name=name), timeout=60)


def _model_infer(model: str, contents: list[bytes], datatype: str = "BYTES") -> Callable:
    from service._proto.inference import grpc_predict_v2_pb2 as v2
    from service._proto.inference import grpc_predict_v2_pb2_grpc as v2_grpc

    def call(channel: Any) -> Any:
        tensor = v2.ModelInferRequest.InferInputTensor(
            name="image", datatype=datatype, shape=[len(contents)],
            contents=v2.InferTensorContents(bytes_contents=contents))
        return v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            v2.ModelInferRequest(model_name=model, inputs=[tensor]), timeout=60)

    return call


def _infer_body(image: bytes) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 infer request for one encoded image (binary tensor data extension: a BYTES
    element is its 4-byte little-endian length and the bytes), and its headers."""
    element = struct.pack("<I", len(image)) + image
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": len(element)}}]}).encode()
    return head + element, {"content-type": "application/octet-stream",
                            "Inference-Header-Content-Length": str(len(head))}


PNG = "image/png"
JSON_CT = {"content-type": "application/json"}


@dataclass(frozen=True)
class _Inputs:
    """What the cases are built from: one good image and the bad payloads made from it."""

    good: bytes
    over: bytes  # one byte over --max-image-bytes
    declared: dict[str, bytes]  # images whose headers declare more pixels than --max-pixels
    deep: bytes  # JSON nested 100,000 deep
    body: bytes  # a KServe v2 binary infer request for the good image ...
    body_headers: dict[str, str]  # ... and its headers
    bomb_body: bytes  # the same for an image declaring 40000 x 40000
    bomb_headers: dict[str, str]


def _inputs(images: list[bytes], max_image_bytes: int) -> _Inputs:
    declared = {"png 40000x40000": png_declaring(40000, 40000),
                "gif 65535x65535": gif_declaring(65535, 65535),
                "tiff 100000x100000": tiff_declaring(100000, 100000),
                "png 8000x8000": png_declaring(8000, 8000)}
    body, body_headers = _infer_body(images[0])
    bomb_body, bomb_headers = _infer_body(png_declaring(40000, 40000))
    return _Inputs(images[0], b"\xff" * (max_image_bytes + 1), declared,
                   b"[" * 100_000 + b"]" * 100_000, body, body_headers, bomb_body, bomb_headers)


def fuzz_cases(images: list[bytes], *, max_image_bytes: int = 16 << 20,
               bombs: bool = True) -> list[Case]:
    """Every route of both front ends and the OIP with the issue's bad inputs and more."""
    x = _inputs(images, max_image_bytes)
    cases = [*_predict_file_cases(x, images), *_predict_field_cases(x), *_route_cases(x),
             *_oip_http_cases(x), *_grpc_cases(x)]
    return cases + _bomb_cases() if bombs else cases


def _predict_file_cases(x: _Inputs, images: list[bytes]) -> list[Case]:
    """HTTP /predict: what is sent as the image (not one, too big, a URL instead)."""
    over, declared, png, json_ct = x.over, x.declared, PNG, JSON_CT
    return [
        # ---- HTTP /predict
        Case("predict: not an image", "http", 400,
             _http("POST", "/predict", files={"image": ("x.png", b"definitely not", png)}),
             "not a recognised image"),
        Case("predict: empty file", "http", 400,
             _http("POST", "/predict", files={"image": ("x.png", b"", png)}), "empty"),
        Case("predict: truncated PNG", "http", 400,
             _http("POST", "/predict", files={"image": ("x.png", truncated_png(images), png)})),
        Case("predict: over --max-image-bytes", "http", 413,
             _http("POST", "/predict", files={"image": ("x.png", over, png)}),
             "--max-image-bytes"),
        *[Case(f"predict: {name}", "http", 413,
               _http("POST", "/predict", files={"image": ("x", data, png)}), "--max-pixels")
          for name, data in declared.items()],
        Case("predict: multipart Content-Type, JSON body", "http", 400,
             _http("POST", "/predict", content=b'{"image_base64": "abc"}',
                   headers={"content-type": "multipart/form-data; boundary=xyz"}),
             "not valid multipart"),
        Case("predict: multipart without a boundary", "http", 400,
             _http("POST", "/predict", content=b"--xyz\r\n",
                   headers={"content-type": "multipart/form-data"}), "boundary"),
        Case("predict: image as a text value (a URL)", "http", 400,
             _http("POST", "/predict", files={"tta": (None, "false")},
                   data={"image": "http://127.0.0.1:9/x.png"}), "never fetches URLs"),
        Case("predict: image as a urlencoded URL", "http", 400,
             _http("POST", "/predict", data={"image": "https://127.0.0.1:9/x.png"}),
             "never fetches URLs"),
        Case("predict: JSON body that is a URL", "http", 400,
             _http("POST", "/predict", content=b"http://127.0.0.1:9/x.png", headers=json_ct),
             "never fetches URLs"),
    ]


def _predict_field_cases(x: _Inputs) -> list[Case]:
    """HTTP /predict: the form and JSON fields around the image."""
    good, deep = x.good, x.deep
    png, json_ct = PNG, JSON_CT
    return [
        Case("predict: wrong file field (file=@x.png)", "http", 400,
             _http("POST", "/predict", files={"file": ("x.png", good, png)}), "'file'"),
        Case("predict: two images", "http", 400,
             _http("POST", "/predict", files=[("image", ("a.png", good, png)),
                                              ("image", ("b.png", good, png))]), "one file"),
        Case("predict: no image", "http", 400,
             _http("POST", "/predict", json={"tta": True}), "exactly one image"),
        Case("predict: image and image_base64", "http", 400,
             _http("POST", "/predict", files={"image": ("a.png", good, png)},
                   data={"image_base64": "aGVsbG8="}), "exactly one image"),
        Case("predict: invalid base64", "http", 400,
             _http("POST", "/predict", json={"image_base64": "%%%"}), "base64"),
        Case("predict: JSON nested 100,000 deep", "http", 400,
             _http("POST", "/predict", content=deep, headers=json_ct)),
        Case("predict: not JSON", "http", 400,
             _http("POST", "/predict", content=b"{nope", headers=json_ct)),
        Case("predict: top_k -1", "http", 400,
             _http("POST", "/predict", files={"image": ("a.png", good, png)},
                   data={"top_k": "-1"}), "top_k"),
        Case("predict: top_k text", "http", 400,
             _http("POST", "/predict", files={"image": ("a.png", good, png)},
                   data={"top_k": "abc"})),
        Case("predict: tta maybe", "http", 400,
             _http("POST", "/predict", files={"image": ("a.png", good, png)},
                   data={"tta": "maybe"})),
        Case("predict: unknown model", "http", 404,
             _http("POST", "/predict", files={"image": ("a.png", good, png)},
                   data={"model": "cats"}), "cats"),
        Case("predict: unknown version", "http", 404,
             _http("POST", "/predict", files={"image": ("a.png", good, png)},
                   data={"version": "7"}), "version 7"),
    ]


def _route_cases(x: _Inputs) -> list[Case]:
    """HTTP /predict_batch, /evaluate and the GET routes."""
    good, png = x.good, PNG
    return [
        # ---- HTTP /predict_batch
        Case("predict_batch: images as text", "http", 400,
             _http("POST", "/predict_batch", data={"images": "http://127.0.0.1:9/x.png"}),
             "never fetches URLs"),
        Case("predict_batch: empty list", "http", 400,
             _http("POST", "/predict_batch", json={"images_base64": []})),
        Case("predict_batch: one bad image among good ones", "http", 200,
             _http("POST", "/predict_batch", files=[("images", ("a.png", good, png)),
                                                    ("images", ("b.png", b"bad", png))]),
             '"status":400'),
        # ---- HTTP /evaluate
        Case("evaluate: Swagger's images=null with a zip", "http", 200,
             _http("POST", "/evaluate", data={"images": "null", "labels": "null"},
                   files={"archive": ("a.zip", zip_of({"7/a.png": good}), "application/zip")}),
             '"n":1'),
        Case("evaluate: not a zip", "http", 400,
             _http("POST", "/evaluate",
                   files={"archive": ("a.zip", b"PK nope", "application/zip")}), "not a zip"),
        Case("evaluate: an entry outside a class folder", "http", 400,
             _http("POST", "/evaluate",
                   files={"archive": ("a.zip", zip_of({"a.png": good}), "application/zip")}),
             "class folder"),
        Case("evaluate: a label the model lacks", "http", 400,
             _http("POST", "/evaluate", files={"archive": (
                 "a.zip", zip_of({"cat/a.png": good}), "application/zip")}), "'cat'"),
        Case("evaluate: labels do not match images", "http", 400,
             _http("POST", "/evaluate", files=[("images", ("a.png", good, png))],
                   data={"labels": '["1", "2"]'}), "labels"),
        Case("evaluate: images as text", "http", 400,
             _http("POST", "/evaluate", data={"images": "http://127.0.0.1:9/x.png",
                                              "labels": '["1"]'}), "never fetches URLs"),
        Case("evaluate: nothing", "http", 400, _http("POST", "/evaluate", json={}),
             "exactly one of"),
        # ---- HTTP GET routes
        Case("GET /models/cats", "http", 404, _http("GET", "/models/cats"), "cats"),
        Case("GET /models/digits?version=abc", "http", 400,
             _http("GET", "/models/digits?version=abc"), "whole number"),
        Case("GET an unknown evaluation's PNG", "http", 404,
             _http("GET", "/evaluations/nope/confusion.png")),
    ]


def _oip_http_cases(x: _Inputs) -> list[Case]:
    """The Open Inference Protocol over HTTP."""
    deep, body, body_headers, json_ct = x.deep, x.body, x.body_headers, JSON_CT
    bomb_body, bomb_headers = x.bomb_body, x.bomb_headers
    return [
        # ---- OIP over HTTP
        Case("v2 infer: not JSON", "http", 400,
             _http("POST", "/v2/models/digits/infer", content=b"{nope", headers=json_ct),
             "not valid JSON"),
        Case("v2 infer: JSON nested 100,000 deep", "http", 400,
             _http("POST", "/v2/models/digits/infer", content=deep, headers=json_ct),
             "nested too deeply"),
        Case("v2 infer: inputs not a list", "http", 400,
             _http("POST", "/v2/models/digits/infer", json={"inputs": 3}), "inputs"),
        Case("v2 infer: BYTES element a number", "http", 400,
             _http("POST", "/v2/models/digits/infer", json={"inputs": [
                 {"name": "image", "datatype": "BYTES", "shape": [1], "data": [10**12]}]})),
        Case("v2 infer: bad gzip", "http", 400,
             _http("POST", "/v2/models/digits/infer", content=b"\x1f\x8bnot gzip",
                   headers={**json_ct, "content-encoding": "gzip"}), "gzip"),
        Case("v2 infer: truncated deflate", "http", 400,
             _http("POST", "/v2/models/digits/infer", content=zlib.compress(body)[:-8],
                   headers={**body_headers, "content-encoding": "deflate"}), "deflate"),
        Case("v2 infer: Content-Encoding br", "http", 400,
             _http("POST", "/v2/models/digits/infer", content=b"{}",
                   headers={**json_ct, "content-encoding": "br"}), "not supported"),
        Case("v2 infer: gzip body", "http", 200,
             _http("POST", "/v2/models/digits/infer", content=gzip.compress(body),
                   headers={**body_headers, "content-encoding": "gzip"}), "probabilities"),
        Case("v2 infer: bogus header length", "http", 400,
             _http("POST", "/v2/models/digits/infer", content=body,
                   headers={**body_headers, "Inference-Header-Content-Length": "x"})),
        Case("v2 infer: a bomb image", "http", 413,
             _http("POST", "/v2/models/digits/infer", content=bomb_body,
                   headers=bomb_headers), "--max-pixels"),
        Case("v2 infer: unknown model", "http", 404,
             _http("POST", "/v2/models/cats/infer", content=body, headers=body_headers)),
        Case("v2 metadata: unknown model", "http", 404, _http("GET", "/v2/models/cats")),
    ]


def _grpc_cases(x: _Inputs) -> list[Case]:
    """The Classifier service and the Open Inference Protocol over gRPC."""
    good, over, declared = x.good, x.over, x.declared
    return [
        # ---- gRPC Classifier
        Case("Predict: not an image", "grpc", "INVALID_ARGUMENT", _grpc(_predict(image=b"no")),
             "not a recognised image"),
        Case("Predict: empty", "grpc", "INVALID_ARGUMENT", _grpc(_predict(image=b""))),
        Case("Predict: over --max-image-bytes", "grpc", "RESOURCE_EXHAUSTED",
             _grpc(_predict(image=over)), "--max-image-bytes"),
        *[Case(f"Predict: {name}", "grpc", "RESOURCE_EXHAUSTED", _grpc(_predict(image=data)),
               "--max-pixels") for name, data in declared.items()],
        Case("Predict: unknown model", "grpc", "NOT_FOUND",
             _grpc(_predict(image=good, model="cats"))),
        Case("Predict: top_k -1", "grpc", "INVALID_ARGUMENT",
             _grpc(_predict(image=good, top_k=-1))),
        Case("Evaluate: nothing", "grpc", "INVALID_ARGUMENT", _grpc(_evaluate([]))),
        Case("Evaluate: a label the model lacks", "grpc", "INVALID_ARGUMENT",
             _grpc(_evaluate([(good, "cat")])), "'cat'"),
        Case("GetModel: unknown", "grpc", "NOT_FOUND", _grpc(_get_model("cats"))),
        # ---- OIP over gRPC
        Case("ModelInfer: unknown model", "grpc", "NOT_FOUND",
             _grpc(_model_infer("cats", [good]))),
        Case("ModelInfer: not an image", "grpc", "INVALID_ARGUMENT",
             _grpc(_model_infer("digits", [b"no"]))),
        Case("ModelInfer: a bomb image", "grpc", "RESOURCE_EXHAUSTED",
             _grpc(_model_infer("digits", [gif_declaring(65535, 65535)])), "--max-pixels"),
    ]


def _bomb_cases() -> list[Case]:
    """Bombs and oversized bodies: built only when sent (a GiB of zeros takes a while)."""
    json_ct = JSON_CT
    return [
        Case("v2 infer: gzip bomb (1 GiB of zeros)", "http", 413,
             _http("POST", "/v2/models/digits/infer", content=gzip_bomb,
                   headers={**json_ct, "content-encoding": "gzip"}), "decompressed"),
        Case("v2 infer: body over the limit", "http", 413,
             _http("POST", "/v2/models/digits/infer", content=lambda: bytes((64 << 20) + 1),
                   headers=json_ct), "larger than"),
        Case("evaluate: zip bomb (64 entries x 17 MB of zeros)", "http", 413,
             _http("POST", "/evaluate", files=lambda: {"archive": (
                 "a.zip", zip_bomb(), "application/zip")}), "--max-image-bytes"),
        Case("evaluate: zip bomb (64 entries x 15 MB of zeros)", "http", 413,
             _http("POST", "/evaluate", files=lambda: {"archive": (
                 "a.zip", zip_bomb(entry_size=15 * 10**6), "application/zip")}),
             "not a zip of image files"),
    ]


def mutation_cases(images: list[bytes], n: int, seed: int = 0) -> list[Case]:
    """``n`` randomly damaged images (bit flips, truncation, spliced bytes), seeded, on both
    wires: each must be answered 200/400/413 (OK/INVALID_ARGUMENT/RESOURCE_EXHAUSTED)."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        data = bytearray(images[i % len(images)])
        for _ in range(int(rng.integers(1, 8))):
            kind = int(rng.integers(0, 3))
            at = int(rng.integers(0, len(data)))
            if kind == 0:
                data[at] ^= 1 << int(rng.integers(0, 8))
            elif kind == 1:
                del data[at:]
            else:
                spliced = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8)
                data[at:at] = spliced.tobytes()
            if not data:
                data = bytearray(b"\x89")
        blob = bytes(data)
        wire = "http" if i % 2 == 0 else "grpc"
        send = _http("POST", "/predict", files={"image": ("x.png", blob, "image/png")}) \
            if wire == "http" else _grpc(_predict(image=blob))
        cases.append(Case(f"mutated image {i}", wire, "any", send))
    return cases


ALLOWED = {"http": {200, 400, 413}, "grpc": {OK, "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}}


@dataclass
class FuzzOutcome:
    case: str
    expected: int | str
    got: int | str
    ok: bool
    seconds: float
    text: str


def run_case(server: ServeProcess, case: Case, *, timeout_s: float = 60) -> FuzzOutcome:
    """Send one case (a hang past ``timeout_s`` counts as wrong) and check the answer."""
    t0 = time.monotonic()
    try:
        got, text = case.send(server)
    except Exception as e:  # a transport failure: the server dropped or hung the request
        got, text = type(e).__name__, str(e)[:300]
    seconds = time.monotonic() - t0
    if case.expected == "any":
        ok = got in ALLOWED[case.wire]
    else:
        ok = got == case.expected and case.fragment in text
    return FuzzOutcome(case.name, case.expected, got, ok and seconds < timeout_s, seconds, text)


def still_serving(server: ServeProcess, image: bytes, wire: str | None = None) -> bool:
    """A good request is answered on ``wire`` (default: every wire the server has)."""
    ok = True
    if server.grpc_port is not None and wire in (None, "grpc"):
        predictor = GrpcPredictor(server.grpc_target)
        ok = predictor(image)[0] == ANSWERED
        predictor.close()
    if server.http_port is not None and wire in (None, "http"):
        predictor = HttpPredictor(server.http_url)
        ok = ok and predictor(image)[0] == ANSWERED
        predictor.close()
    return ok
