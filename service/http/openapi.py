"""The HTTP service's OpenAPI document: BentoML's, made to describe this service.

BentoML generates the POST routes' schemas from the API signatures (kept: they cannot drift from
the code) but knows nothing else: its title is the service name, its version ``None``, its
description BentoML's own README with chat badges, the routes of mounted apps (``/models``, the
confusion-matrix PNG, ``/v2``, ``/ui``) are missing, docstrings keep their reStructuredText
double backticks, and its multipart forms offer ``image_base64``/``labels`` boxes whose
placeholder values make "Try it out" fail. ``openapi_document`` fixes all of that:

- title, version (the package's) and a description of what the service does, its two wires and
  its error model; our own error body and status codes instead of BentoML's exception schemas;
- every GET route, the Open Inference Protocol routes (read from the mounted Starlette app, so
  routes added there appear here) and the page at ``/ui``;
- examples that run as they are: a real handwritten 7 (an 8x8 PNG of scikit-learn's digits)
  for ``/predict``, ``/predict_batch`` and ``/evaluate`` (JSON bodies, listed first), the default
  model's name for path parameters.

``tests/http/test_openapi.py`` sends every example in the document and expects a 200.
"""

from __future__ import annotations

import copy
import importlib.metadata
import inspect
import re
from collections.abc import Iterable, Sequence
from typing import Any

from starlette.routing import BaseRoute, Mount, Route

# sklearn.datasets.load_digits() image 7 (a 7), scaled to 0-255 and saved as an 8x8 PNG.
EXAMPLE_DIGIT_7_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAARElEQVR42iXGQRGAIBAAwHWGABdBGxiBBtIEbWADK9j"
    "AKESBBvrwtTuxx7aOJWEcNQY4W0hyVpWb+ek9A2/5vXr8aQU+TyoPEd28CLMAAAAASUVORK5CYII=")

TAG_API = "Classify and evaluate"
TAG_MODELS = "Models"
TAG_OIP = "Open Inference Protocol"
TAG_OPS = "Operations"
TAG_PAGES = "Pages"

TAGS = [
    {"name": TAG_API, "description": "tta-serve's own API: one image, a batch, or a labelled "
                                     "set evaluated into a report."},
    {"name": TAG_MODELS, "description": "What is served: classes, recorded metrics, versions, "
                                        "the execution provider."},
    {"name": TAG_OIP, "description": "KServe v2, the protocol of NVIDIA Triton and KServe, so "
                                     "`tritonclient` works unchanged (docs/oip.md)."},
    {"name": TAG_OPS, "description": "Health probes and Prometheus metrics."},
    {"name": TAG_PAGES, "description": "Pages for people."},
]

DESCRIPTION = """\
Image classification with optional **test-time augmentation** (TTA): each image is decoded and
resized exactly as the model was validated, optionally classified from several views whose
probabilities are combined, on ONNX Runtime (CPU or CUDA). Labelled sets are evaluated into a
report: accuracy, per-class precision/recall/F1, the confusion matrix (also as a PNG) and the
most-confused pairs.

**Try it without code**: the browser page at [/ui](ui/), or
`tta-serve predict FOLDER --url http://HOST:3000` (writes a CSV).

**Two wires, one core.** This HTTP API and the gRPC API `tta_serve.v1.Classifier` (port 50051;
`protos/tta_serve/v1/classifier.proto`, Python client `service.client.Client`) answer from the
same inference code, which batches concurrent requests into one forward pass. Both also speak
the Open Inference Protocol (KServe v2) for Triton clients: `/v2/...` here.

**Models and versions.** `model` empty = the server's default model; `version` 0 = the version
being served (the newest valid one, or a pinned one).

**Errors** are JSON `{"error": message, "kind": kind}`; the message says what was wrong and
what to do.

| status | kind | when |
|---|---|---|
| 400 | `invalid_image`, `invalid_request` | undecodable image; bad option; label not a class |
| 401 | `unauthenticated` | token authorisation on and no, or an unknown, bearer token |
| 403 | `permission_denied` | the token lacks the call's scope (`infer` or `admin`) |
| 404 | `model_not_found`, `not_found` | no such model or version; evaluation no longer kept |
| 413 | `image_too_large`, `too_many_parts` | image over a limit; over 1000 multipart files |
| 503 | `overloaded`, `model_unavailable`, `shutting_down` | too busy; draining (`Retry-After`) |

The `/v2` routes answer errors as KServe does: `{"error": message}`.
"""

ERROR_SCHEMA = {
    "type": "object",
    "title": "Error",
    "required": ["error", "kind"],
    "properties": {
        "error": {"type": "string", "description": "what was wrong, and what to do"},
        "kind": {"type": "string", "description": "stable short name, e.g. invalid_image"},
    },
}
ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERRORS = {
    400: "not a decodable image, a bad option, or a label that is not one of the model's classes",
    401: "token authorisation is on and the request has no bearer token the server knows",
    403: "the bearer token lacks the scope this call needs (infer or admin)",
    404: "no such model or version",
    413: "an image over the byte or pixel limit, or more than 1000 multipart files",
    503: "overloaded, the model unavailable or the server shutting down; retry after the "
         "Retry-After seconds",
}
# BentoML's own error schemas, replaced by ours.
BENTOML_ERROR_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError",
                         "TaskStatusResponse")


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): {"description": ERRORS[code],
                        "content": {"application/json": {"schema": ERROR_REF}}}
            for code in codes}


def _package_version() -> str:
    try:
        return importlib.metadata.version("tta-serve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def clean_text(text: str) -> str:
    """A docstring as Markdown: dedented, ``code`` -> `code` (Swagger shows the backticks)."""
    return inspect.cleandoc(text).replace("``", "`").strip()


def _walk_descriptions(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                node[key] = clean_text(value)
            else:
                _walk_descriptions(value)
    elif isinstance(node, list):
        for value in node:
            _walk_descriptions(value)


# ---- the POST APIs: request bodies that work from "Try it out"

JSON_EXAMPLES: dict[str, dict[str, Any]] = {
    "/predict": {"image_base64": EXAMPLE_DIGIT_7_PNG_BASE64, "tta": True, "top_k": 3},
    "/predict_batch": {"images_base64": [EXAMPLE_DIGIT_7_PNG_BASE64] * 2, "top_k": 3},
    "/evaluate": {"images_base64": [EXAMPLE_DIGIT_7_PNG_BASE64] * 2, "labels": ["7", "7"],
                  "tta": True},
}
# Fields only a JSON body carries (base64 text); a multipart form sends files instead.
JSON_ONLY_FIELDS = {"image_base64", "images_base64"}
FIELD_HELP = {
    "image": "the image file (JPEG, PNG, WebP, BMP, GIF, TIFF)",
    "images": "image files, one per part",
    "image_base64": "the encoded image file, base64 (or a data: URL)",
    "images_base64": "encoded image files, base64, one per entry",
    "archive": "a zip of class folders: CLASS/image.png (an optional top folder is fine)",
    "labels": "one class name per image, in order (multipart: one field holding a JSON list, "
              'e.g. ["7", "3"])',
    "tta": "apply the model's test-time augmentation views and combine them",
    "top_k": "classes to return, most probable first; 0 = the server default (5)",
    "model": "model name; empty = the server's default model",
    "version": "model version; 0 = the version being served",
    "min_confused": "most-confused pairs need at least this many mistakes",
}


def _fix_request_body(path: str, operation: dict[str, Any], schemas: dict[str, Any],
                      label: str) -> None:
    content = operation.get("requestBody", {}).get("content", {})
    form = content.get("multipart/form-data")
    if form is None:
        return
    schema = form["schema"]
    if "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[-1]]
    json_schema = copy.deepcopy(schema)
    form_schema = copy.deepcopy(schema)
    for target in (json_schema, form_schema):
        for name, prop in target.get("properties", {}).items():
            if prop.get("default", "") is None:
                del prop["default"]  # "null" would be sent as text
            if "anyOf" in prop:  # X | None -> X, optional
                prop.update(next(a for a in prop.pop("anyOf") if a.get("type") != "null"))
            if name in FIELD_HELP:
                prop["description"] = FIELD_HELP[name]
    file_fields = {name for name, prop in schema.get("properties", {}).items()
                   if prop.get("format") == "binary" or prop.get("items", {}).get("format")
                   == "binary"}
    json_props = json_schema.get("properties", {})
    for name in file_fields:
        json_props.pop(name, None)
    form_props = form_schema.get("properties", {})
    for name in JSON_ONLY_FIELDS:
        form_props.pop(name, None)
    if "labels" in form_props:  # one text field holding a JSON list
        form_props["labels"] = {"type": "string", "description": FIELD_HELP["labels"]}
    new_content: dict[str, Any] = {}
    if path in JSON_EXAMPLES:
        example = copy.deepcopy(JSON_EXAMPLES[path])
        if "labels" in example:  # a class of the default model, so the example runs on any
            example["labels"] = [label] * len(example["labels"])
        new_content["application/json"] = {"schema": json_schema, "example": example}
    # No per-part content types: browsers and Swagger send plain form fields.
    new_content["multipart/form-data"] = {"schema": form_schema}
    operation["requestBody"] = {"required": True, "content": new_content}


# ---- routes BentoML does not see


def _path_parameters(path: str, examples: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"},
             **({"example": examples[name]} if name in examples else {})}
            for name in re.findall(r"{(\w+)}", path)]


def _json_ok(description: str, schema_ref: str | None = None) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}} \
        if schema_ref else {"application/json": {}}
    return {"200": {"description": description, "content": content}}


def _own_get_routes(default_model: str) -> dict[str, Any]:
    return {
        "/models": {"get": {
            "tags": [TAG_MODELS], "operationId": "list_models",
            "summary": "The served models",
            "description": "Every served model (its served version), the default model first; "
                           "the same as gRPC ListModels.",
            "responses": _json_ok("the models", "ListModelsResponse"),
        }},
        "/models/{name}": {"get": {
            "tags": [TAG_MODELS], "operationId": "get_model",
            "summary": "One served model",
            "description": "Classes, input size, TTA views, the metrics recorded at export "
                           "(plain and TTA accuracy), versions in the repository, provider.",
            "parameters": [
                *_path_parameters("/models/{name}", {"name": default_model}),
                {"name": "version", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0},
                 "description": "absent or 0 = the served version"}],
            "responses": {**_json_ok("the model", "ModelInfoResponse"), **_errors(400, 404)},
        }},
        "/evaluations/{evaluation_id}/confusion.png": {"get": {
            "tags": [TAG_API], "operationId": "confusion_png",
            "summary": "The confusion matrix of a recent evaluation, as a PNG",
            "description": "`evaluation_id` is the `id` of a POST /evaluate answer (its "
                           "`confusion_png_url`); the server keeps the last 32.",
            "parameters": _path_parameters("/evaluations/{evaluation_id}/confusion.png", {}),
            "responses": {"200": {"description": "the picture",
                                  "content": {"image/png": {}}}, **_errors(404)},
        }},
        "/ui/": {"get": {
            "tags": [TAG_PAGES], "operationId": "ui",
            "summary": "The browser page: predict, evaluate, models",
            "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
        }},
        "/": {"get": {
            "tags": [TAG_PAGES], "operationId": "api_reference",
            "summary": "This API reference (Swagger UI); the document is /docs.json",
            "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
        }},
    }


OIP_SUMMARIES = {
    "server_metadata": "Server name, version and protocol extensions",
    "live": "Liveness",
    "ready": "Readiness: every served model is ready",
    "model_metadata": "A model's inputs, outputs and versions",
    "model_ready": "Whether a model (version) is ready",
    "infer": "Inference: BYTES images or FP32 pixels in, probabilities or top-k classes out",
    "model_config": "The model's configuration, Triton style",
    "model_statistics": "Inference statistics, Triton style",
    "repository_index": "The models of the repository and their state",
    "model_load": "Load a model (repository extension)",
    "model_unload": "Unload a model (repository extension)",
}


def _routes(routes: Iterable[BaseRoute], prefix: str = "") -> Iterable[tuple[str, Route]]:
    for route in routes:
        if isinstance(route, Mount):
            yield from _routes(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            yield prefix + route.path, route


def oip_paths(routes: Iterable[BaseRoute], default_model: str) -> dict[str, Any]:
    """OpenAPI paths of the mounted /v2 app, summarised from its endpoints' names/docstrings."""
    paths: dict[str, Any] = {}
    for path, route in _routes(routes):
        name = getattr(route.endpoint, "__name__", "")
        doc = inspect.getdoc(route.endpoint) or ""
        summary = OIP_SUMMARIES.get(name) or (doc.split("\n\n")[0] if doc else name)
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            operation: dict[str, Any] = {
                "tags": [TAG_OIP], "summary": clean_text(summary),
                "operationId": "_".join([method.lower(), *re.findall(r"\w+", path)]),
                "description": "See docs/oip.md. Errors: `{\"error\": message}` with 400, 404, "
                               "413 or 503, as in the table above.",
                "parameters": _path_parameters(path, {"model": default_model}),
                "responses": {"200": {"description": "as the KServe v2 protocol says",
                                      "content": {"application/json": {}}}},
            }
            if method == "POST":
                operation["requestBody"] = {"required": name == "infer", "content": {
                    "application/json": {"schema": {"type": "object"}}}}
            paths.setdefault(path, {})[method.lower()] = operation
    return paths


# ---- the document


def openapi_document(spec: dict[str, Any], *, default_model: str,
                     default_classes: Sequence[str] = ("7",),
                     oip_routes: Iterable[BaseRoute] = ()) -> dict[str, Any]:
    """BentoML's generated ``spec`` (``Service.openapi_spec.asdict()``) -> this service's.

    ``default_classes``: the default model's, for the evaluation example's labels ("7" when the
    digits model is the default, else its first class: the example then runs, scoring 0).
    """
    label = "7" if "7" in default_classes or not default_classes else default_classes[0]
    doc = copy.deepcopy(spec)
    doc["info"] = {"title": "tta-serve", "version": _package_version(),
                   "description": DESCRIPTION,
                   "license": {"name": "Apache-2.0"}}
    doc["tags"] = TAGS
    # Bearer tokens when the server checks them (service.security): Swagger's Authorize button;
    # "{}" keeps every call valid without one for a server that does not.
    doc.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http",
                                                                      "scheme": "bearer"}}
    doc["security"] = [{"bearer": []}, {}]
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in BENTOML_ERROR_SCHEMAS:
        schemas.pop(name, None)
    schemas["Error"] = ERROR_SCHEMA
    from service.http.schema import ListModelsResponse, ModelInfoResponse

    for model in (ListModelsResponse, ModelInfoResponse):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in body.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[model.__name__] = body

    paths: dict[str, Any] = {}
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            if method == "post":  # a BentoML API
                operation["tags"] = [TAG_API]
                operation["summary"] = clean_text(operation.get("description", "")).split(
                    "\n")[0]
                responses = operation["responses"]
                operation["responses"] = {"200": responses.get(200) or responses["200"],
                                          **_errors(400, 404, 413, 503)}
                operation.pop("x-bentoml-name", None)
                _fix_request_body(path, operation, schemas, label)
            else:  # BentoML's /livez, /readyz, /metrics, /healthz
                operation["tags"] = [TAG_OPS]
                operation["operationId"] = "_".join([method, *re.findall(r"\w+", path)])
                operation["description"] = re.sub(r"</?code>", "`",
                                                  operation.get("description", ""))
        paths[path] = item
    paths.update(_own_get_routes(default_model))
    paths.update(oip_paths(oip_routes, default_model))
    doc["paths"] = paths
    _walk_descriptions(doc)
    return doc
