"""What operators use: BentoML's health routes, the OpenAPI page, and /metrics that move."""

from __future__ import annotations

import httpx
from http_testkit import HttpServer
from prometheus_client.parser import text_string_to_metric_families
from service_testkit import FixtureModel


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
    assert moved(requests, endpoint="predict", tta="false", outcome="invalid_image") == 1
    assert moved(requests, endpoint="predict", tta="false", outcome="model_not_found") == 1
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
