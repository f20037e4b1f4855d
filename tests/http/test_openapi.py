"""The API reference (/docs.json, Swagger UI at /) describes this service, and its examples work.

Against the real ``tta-serve http`` process of the HTTP tests. The Swagger page itself is driven
in a real browser in test_ui_browser.py.
"""

from __future__ import annotations

import importlib.metadata
import json
import re

import httpx
import pytest
from starlette.routing import Route

from service.http.service import oip_routes


@pytest.fixture(scope="module")
def doc(client: httpx.Client) -> dict:
    response = client.get("/docs.json")
    assert response.status_code == 200, response.text
    return response.json()


def test_title_version_description(doc: dict):
    info = doc["info"]
    assert info["title"] == "tta-serve"
    assert info["version"] == importlib.metadata.version("tta-serve")
    for words in ("test-time augmentation", "Two wires", "tta_serve.v1.Classifier", "/ui",
                  "| 413 |", "Retry-After", "Open Inference Protocol"):
        assert words in info["description"]
    text = json.dumps(doc)
    assert "BentoML" not in json.dumps(info) and "slack" not in text.lower()
    assert "``" not in text  # reStructuredText backticks cleaned for Markdown
    assert "<code>" not in text


def test_every_route_is_listed(doc: dict):
    paths = doc["paths"]
    for path in ("/predict", "/predict_batch", "/evaluate", "/models", "/models/{name}",
                 "/evaluations/{evaluation_id}/confusion.png", "/ui/", "/livez", "/readyz",
                 "/metrics"):
        assert path in paths, path
    mounted = {(r.path, m.lower()) for r in oip_routes.routes if isinstance(r, Route)
               for m in r.methods - {"HEAD"}}
    listed = {(p, m) for p, item in paths.items() if p.startswith("/v2") for m in item}
    assert mounted == listed
    operation_ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))
    for item in paths.values():
        for op in item.values():
            for code, response in op["responses"].items():
                if code != "200":  # our error body, not BentoML's exception schemas
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}


def test_form_fields_are_plain_and_documented(doc: dict):
    form = doc["paths"]["/evaluate"]["post"]["requestBody"]["content"]["multipart/form-data"]
    props = form["schema"]["properties"]
    assert "images_base64" not in props  # JSON only
    assert props["labels"]["type"] == "string" and "JSON list" in props["labels"]["description"]
    assert all("default" not in p or p["default"] is not None for p in props.values())
    assert "encoding" not in form
    assert list(doc["paths"]["/predict"]["post"]["requestBody"]["content"]) == [
        "application/json", "multipart/form-data"]  # the example Swagger shows first


def _fill(path: str, parameters: list[dict]) -> str | None:
    for p in parameters:
        if p["in"] == "path":
            if "example" not in p:
                return None
            path = path.replace("{" + p["name"] + "}", str(p["example"]))
    return path if "{" not in path else None


def test_every_example_works_as_it_is(doc: dict, client: httpx.Client):
    """What "Try it out" sends without editing anything must get a 200."""
    tried = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            url = _fill(path, op.get("parameters", []))
            if url is None:
                continue
            if method == "get":
                response = client.get(url)
            else:
                example = op.get("requestBody", {}).get("content", {}).get(
                    "application/json", {}).get("example")
                if example is None:
                    continue  # no example offered (e.g. repository load/unload)
                response = client.post(url, json=example)
            assert response.status_code == 200, (method, url, response.text[:300])
            tried.append((method, path))
    assert ("post", "/predict") in tried and ("post", "/evaluate") in tried
    assert ("get", "/models/{name}") in tried and ("get", "/v2/models/{model}") in tried
    predict = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert client.post("/predict", json=predict["example"]).json()["label"] == "7"


def test_the_api_reference_page_is_ours(client: httpx.Client):
    page = client.get("/")
    assert page.status_code == 200 and "tta-serve API reference" in page.text
    assert not re.search(r"https?://", page.text)  # nothing from the network
    for asset in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert client.get("/" + asset).status_code == 200, asset
