"""What operators use: BentoML's health routes, the image's health check, the OpenAPI page,
/metrics that move, and the Open Inference Protocol's /v2 routes mounted beside the service's
own."""

from __future__ import annotations

import struct

import httpx
import numpy as np
from http_testkit import HttpServer, free_port
from prometheus_client.parser import text_string_to_metric_families
from service_testkit import FixtureModel, RunningServer

from service.imaging import decode_image, stack_views
from service.process.runner import healthcheck


def metric_samples(client: httpx.Client) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def test_health_routes(client: httpx.Client):
    for path in ("/livez", "/readyz"):
        assert client.get(path).status_code == 200, path


def test_image_healthcheck_passes_with_either_front_end(http_server: HttpServer,
                                                        grpc_server: RunningServer):
    """The Dockerfile's HEALTHCHECK (``service.process.runner.healthcheck``): healthy for an
    HTTP-only container (``tta-serve http``), a gRPC-only one, and unhealthy with neither
    listening."""
    closed_grpc, closed_http = f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}/readyz"
    grpc_address = f"127.0.0.1:{grpc_server.port}"
    assert healthcheck(closed_grpc, f"{http_server.base_url}/readyz") == 0
    assert healthcheck(grpc_address, closed_http) == 0
    assert healthcheck(grpc_address, f"{http_server.base_url}/readyz") == 0
    assert healthcheck(closed_grpc, closed_http) == 1
    assert healthcheck(closed_grpc, f"{http_server.base_url}/no-such-route") == 1


def test_openapi_and_swagger_page(client: httpx.Client):
    spec = client.get("/docs.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    for route in ("/predict", "/predict_batch", "/evaluate"):
        assert "post" in paths[route], route
    predict_schema = str(spec.json()["components"])
    assert "image_base64" in predict_schema and "top_k" in predict_schema
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_start_up_log_names_the_provider(http_server: HttpServer):
    assert "HTTP service: serving digits v1 from" in http_server.process.log
    assert "on CPUExecutionProvider" in http_server.process.log


def test_metrics_move(client: httpx.Client, digits_model: FixtureModel):
    image, _ = digits_model.samples[8]
    before = metric_samples(client)
    assert client.post("/predict", files={"image": ("d.png", image, "image/png")},
                       data={"tta": "true"}).status_code == 200
    assert client.post("/predict", files={"image": ("d.txt", b"no", "text/plain")}).status_code \
        == 400
    assert client.post("/predict", files={"image": ("d.png", image, "image/png")},
                       data={"model": "cats"}).status_code == 404
    after = metric_samples(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # This front end: requests by endpoint, TTA use and outcome (errors by kind).
    requests = "tta_serve_http_requests_total"
    assert moved(requests, endpoint="predict", tta="true", outcome="ok") == 1
    # no tta field: the model's default mode (issue 25), labelled "default"
    assert moved(requests, endpoint="predict", tta="default", outcome="invalid_image") == 1
    assert moved(requests, endpoint="predict", tta="default", outcome="model_not_found") == 1
    # BentoML: request latency by route and status.
    latency = "bentoml_service_request_duration_seconds_count"
    assert moved(latency, endpoint="/predict", http_response_code="200") == 1
    assert moved(latency, endpoint="/predict", http_response_code="400") == 1
    # The core: forward passes (batch sizes), model-input rows (TTA views), image outcomes.
    assert moved("tta_serve_batch_size_count", model="digits") >= 1
    assert moved("tta_serve_model_input_rows_total", model="digits") == len(
        digits_model.card.tta.views)
    assert moved("tta_serve_requests_total", model="digits", outcome="ok") == 1
    assert moved("tta_serve_requests_total", model="digits", outcome="invalid_image") == 1
    assert value(after, "tta_serve_pending_requests") == 0


def test_open_inference_protocol_routes_share_the_port(client: httpx.Client,
                                                      digits_model: FixtureModel):
    """/v2 (KServe v2) answers from the same core; the service's own routes are not shadowed
    (the other tests here and in test_http_api use them on this same server)."""
    assert client.get("/v2").json()["name"] == "tta-serve"
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/digits").json()
    assert meta["versions"] == ["1"]
    assert {"name": "pixels", "datatype": "FP32", "shape": [-1, 3, 16, 16]} in meta["inputs"]

    pngs = [png for png, _ in digits_model.valid[:3]]
    pixels = stack_views([decode_image(b) for b in pngs], digits_model.card.eval_spec, None)
    as_json = client.post("/v2/models/digits/infer", json={"inputs": [{
        "name": "pixels", "datatype": "FP32", "shape": list(pixels.shape),
        "data": pixels.ravel().tolist()}]})
    assert as_json.status_code == 200, as_json.text
    (output,) = as_json.json()["outputs"]
    probabilities = np.array(output["data"], np.float32).reshape(output["shape"])
    np.testing.assert_allclose(probabilities, digits_model.valid_probs[:3], atol=1e-5)

    # Encoded images, in the binary tensor extension (as tritonclient.http sends them).
    raw = b"".join(struct.pack("<I", len(b)) + b for b in pngs)
    head = (b'{"inputs":[{"name":"image","datatype":"BYTES","shape":[3],'
            b'"parameters":{"binary_data_size":%d}}]}' % len(raw))
    binary = client.post("/v2/models/digits/infer", content=head + raw,
                         headers={"Inference-Header-Content-Length": str(len(head))})
    assert binary.status_code == 200, binary.text
    (output,) = binary.json()["outputs"]
    np.testing.assert_allclose(np.array(output["data"], np.float32).reshape(3, -1),
                               probabilities, atol=1e-6)
    predicted = client.post("/predict", files={"image": ("d.png", pngs[0], "image/png")},
                            data={"top_k": "10"}).json()
    for score in predicted["classes"]:
        assert abs(score["probability"] - probabilities[0, score["index"]]) < 1e-6

    unknown = client.post("/v2/models/cats/infer", content=head + raw,
                          headers={"Inference-Header-Content-Length": str(len(head))})
    assert unknown.status_code == 404 and "cats" in unknown.json()["error"]
    assert client.get("/v2/models/digits/infer").status_code == 405  # POST only
