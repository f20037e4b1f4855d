"""The Open Inference Protocol's ``/v2`` HTTP routes as an ASGI (Starlette) app over the core.

Thin: JSON (+ the binary tensor data extension) <-> ``service.oip.messages`` for
``service.oip.core_adapter``, and OipError ->
HTTP status with a ``{"error": message}`` body, which is what ``tritonclient.http`` reads.

Routes (the app carries the ``/v2`` prefix itself, so ``GET /v2`` -- server metadata -- works
when it is mounted at the root of another app, e.g. the BentoML service)::

    GET  /v2                                      server metadata
    GET  /v2/health/live, /v2/health/ready        200 = yes, 400 = no
    GET  /v2/models/{m}[/versions/{v}]            model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready      200 = ready, 4xx = not
    POST /v2/models/{m}[/versions/{v}]/infer      inference
    GET  /v2/models/{m}[/versions/{v}]/config     Triton's model configuration
    GET  /v2/models[/{m}[/versions/{v}]]/stats    Triton's statistics
    POST /v2/repository/index                     Triton's repository index
    POST /v2/repository/models/{m}/load|unload    Triton's model control (load = scan now)

Binary tensor data extension: a request whose JSON is followed by binary tensors carries the
JSON's length in ``Inference-Header-Content-Length``; each input with parameter
``binary_data_size`` takes that many bytes, in input order. Outputs are returned binary when
the output's parameter ``binary_data`` (else the request's ``binary_data_output``) is true;
the response then carries the same header. Request bodies may be gzip/deflate encoded.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.core import InferenceCore
from service.core.config import default_max_message_bytes
from service.core.errors import Status
from service.oip.core_adapter import CLASSIFICATION_PARAMETER, OipAdapter
from service.oip.messages import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    OipError,
    RequestedOutput,
    Tensor,
    TensorSpec,
    bool_parameter,
    invalid,
    not_ready,
    raw_contents,
    tensor_from_raw,
    tensor_from_values,
)
from service.oip.model_config import message_json

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_DATA = "binary_data"
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA_OUTPUT = "binary_data_output"

CoreSource = InferenceCore | Callable[[], InferenceCore]


# ---- pure helpers: HTTP bodies <-> adapter objects


def max_body_bytes(core: InferenceCore) -> int:
    """An infer body's byte limit, compressed or not and once decompressed: the gRPC front
    end's default message limit for the same core, max(64 MiB, --max-image-bytes + 1 MiB)."""
    return default_max_message_bytes(core.config.max_image_bytes)


def _too_large(limit: int, what: str = "") -> OipError:
    return OipError(Status.RESOURCE_EXHAUSTED,
                    f"the request body is larger than {limit:,} bytes{what}, the limit of an "
                    "infer request (max(64 MiB, --max-image-bytes + 1 MiB)); send fewer images "
                    "per request")


async def read_body(request: Request, limit: int) -> bytearray:
    """The raw body, refused (413) as soon as it passes ``limit`` bytes: never held whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return body


INFLATE_STEP = 1 << 20  # bytes fed to zlib, and taken from it, at a time


def decode_body(body: bytes | bytearray, content_encoding: str | None,
                limit: int) -> bytes | bytearray:
    """The body with its Content-Encoding (gzip or deflate) undone, in bounded steps: a body
    that inflates past ``limit`` bytes is refused (413) after at most ``limit`` + 1 MiB of
    output, whatever it would have inflated to. Run it off the event loop."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise OipError(Status.INVALID_ARGUMENT,
                       f"Content-Encoding {encoding!r} is not supported; use gzip or deflate")
    wbits = 31 if encoding == "gzip" else 15  # gzip member / zlib stream (HTTP's "deflate")
    out = bytearray()
    data = memoryview(body)
    position = 0
    try:
        while position < len(data):  # a gzip body may hold several members, one after another
            inflater = zlib.decompressobj(wbits)
            while position < len(data) and not inflater.eof:
                chunk = data[position:position + INFLATE_STEP]
                position += len(chunk)
                while chunk and not inflater.eof:
                    out += inflater.decompress(chunk, min(INFLATE_STEP, limit + 1 - len(out)))
                    if len(out) > limit:
                        raise _too_large(limit, " once decompressed")
                    chunk = inflater.unconsumed_tail
            if not inflater.eof:
                raise invalid(f"the request body is not valid {encoding} data: it ends early")
            position -= len(inflater.unused_data)  # fed, but after this member
            if encoding == "deflate" and position < len(data):
                raise invalid("the request body has bytes after its deflate stream")
    except zlib.error as e:
        raise invalid(f"the request body is not valid {encoding} data: {e}") from e
    return out


def parse_infer_request(model: str, version: str, body: bytes,
                        header_length: str | None) -> tuple[InferRequest, dict[str, bool]]:
    """The request, and for each named output whether to answer it in binary."""
    if header_length is not None:
        try:
            json_length = int(header_length)
        except ValueError as e:
            raise invalid(f"{HEADER_LENGTH} must be a byte count, got {header_length!r}") from e
        if not 0 <= json_length <= len(body):
            raise invalid(f"{HEADER_LENGTH} is {json_length} but the body is {len(body)} bytes")
        head, binary = body[:json_length], memoryview(body)[json_length:]
    else:
        head, binary = body, memoryview(b"")
    try:
        document = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise invalid(f"the request is not valid JSON: {e}") from e
    except RecursionError as e:  # e.g. 100,000 nested lists: the parser's stack, not a 500
        raise invalid("the request JSON is nested too deeply to parse") from e
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise invalid('the request must be a JSON object with an "inputs" list')
    parameters = _parameters(document.get("parameters"), "request")
    binary_default = bool_parameter(BINARY_DATA_OUTPUT,
                                    parameters.pop(BINARY_DATA_OUTPUT, False))

    inputs, offset = [], 0
    for item in document["inputs"]:
        tensor, offset = _input(item, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise invalid(f"the body has {len(binary) - offset} bytes of binary data that no "
                      f"input's {BINARY_DATA_SIZE} accounts for")

    # "" holds the default for outputs not named in the request.
    outputs, binary_outputs = [], {"": binary_default}
    for item in document.get("outputs") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid('each requested output must be an object with a "name"')
        output_parameters = _parameters(item.get("parameters"), f"output {item['name']!r}")
        k = output_parameters.pop(CLASSIFICATION_PARAMETER, 0)
        if not isinstance(k, int) or isinstance(k, bool):
            raise invalid(f"output {item['name']!r}: {CLASSIFICATION_PARAMETER} must be an "
                          f"integer (top-k classes), got {k!r}")
        binary_outputs[item["name"]] = bool_parameter(
            BINARY_DATA, output_parameters.pop(BINARY_DATA, binary_default))
        outputs.append(RequestedOutput(item["name"], k, output_parameters))
    request = InferRequest(model=model, version=version, inputs=inputs, outputs=outputs,
                           id=str(document.get("id", "")), parameters=parameters)
    return request, binary_outputs


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{where} parameters must be a JSON object")
    return dict(value)


def _input(item: Any, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    if not isinstance(item, dict):
        raise invalid("each input must be a JSON object")
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list) \
            or not all(isinstance(d, int) for d in shape):
        raise invalid('each input needs "name" (string), "datatype" (string) and "shape" '
                      "(list of integers)")
    parameters = _parameters(item.get("parameters"), f"input {name!r}")
    size = parameters.pop(BINARY_DATA_SIZE, None)
    if size is None:
        if "data" not in item:
            raise invalid(f'input {name!r} has neither "data" nor a {BINARY_DATA_SIZE} '
                          "parameter")
        return tensor_from_values(name, datatype, shape, item["data"], parameters), offset
    if not isinstance(size, int) or size < 0 or offset + size > len(binary):
        raise invalid(f"input {name!r}: {BINARY_DATA_SIZE} {size!r} does not fit the "
                      f"{len(binary) - offset} binary bytes left in the body")
    raw = bytes(binary[offset:offset + size])
    return tensor_from_raw(name, datatype, shape, raw, parameters), offset + size


def encode_infer_response(response: InferResponse,
                          binary_outputs: dict[str, bool]) -> tuple[bytes, int | None]:
    """The body, and the JSON length when binary tensors follow it (else None)."""
    default = binary_outputs.get("", False)  # outputs the request did not name
    outputs, blobs = [], []
    for tensor in response.outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                 "shape": list(tensor.shape)}
        if binary_outputs.get(tensor.name, default):
            blob = raw_contents(tensor)
            entry["parameters"] = {BINARY_DATA_SIZE: len(blob)}
            blobs.append(blob)
        elif tensor.datatype == "BYTES":
            entry["data"] = [e.decode("utf-8", "replace") for e in tensor.data.reshape(-1)]
        else:
            entry["data"] = tensor.data.reshape(-1).tolist()
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": response.model,
                                "model_version": response.version,
                                "parameters": response.parameters, "outputs": outputs}
    if response.id:
        document["id"] = response.id
    head = json.dumps(document, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def metadata_json(meta: ModelMetadata) -> dict[str, Any]:
    def spec(t: TensorSpec) -> dict[str, Any]:
        return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}

    return {"name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
            "inputs": [spec(t) for t in meta.inputs], "outputs": [spec(t) for t in meta.outputs]}


def error_response(error: OipError) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=error.status.http_status)


# ---- the app


def _maps_oip_errors(handler: Callable[..., Awaitable[Response]]
                     ) -> Callable[..., Awaitable[Response]]:
    """Answer an OipError raised by a route with its status (the core's one table) and
    ``{"error": message}``: what the gRPC servicer's decorator of the same name does."""

    @functools.wraps(handler)
    async def wrapper(self: OipRoutes, request: Request) -> Response:
        try:
            return await handler(self, request)
        except OipError as e:
            log.debug("%s %s refused: %s", request.method, request.url.path, e)
            return error_response(e)

    return wrapper


class OipRoutes:
    """Route handlers: parse, call the adapter, map errors; no behaviour of their own."""

    def __init__(self, core: CoreSource) -> None:
        self._core = core

    @property
    def adapter(self) -> OipAdapter:
        # A function is asked per request: under BentoML the core is created after the app, by
        # the service instance (bentoml.get_current_service().core).
        return OipAdapter(self._core if isinstance(self._core, InferenceCore) else self._core())

    async def server_metadata(self, request: Request) -> Response:
        meta = self.adapter.server_metadata()
        return JSONResponse({"name": meta.name, "version": meta.version,
                             "extensions": list(meta.extensions)})

    async def live(self, request: Request) -> Response:
        live = OipAdapter.server_live()  # also before the core exists
        return JSONResponse({"live": live}, status_code=200 if live else 400)

    async def ready(self, request: Request) -> Response:
        try:
            ready = self.adapter.server_ready()
        except Exception:  # BentoML has not created the service instance (and core) yet
            log.debug("readiness: no core yet", exc_info=True)
            ready = False
        return JSONResponse({"ready": ready}, status_code=200 if ready else 400)

    @_maps_oip_errors
    async def model_metadata(self, request: Request) -> Response:
        model, version = _model_and_version(request)
        return JSONResponse(metadata_json(self.adapter.model_metadata(model, version)))

    @_maps_oip_errors
    async def model_ready(self, request: Request) -> Response:
        model, version = _model_and_version(request)
        try:
            self.adapter.model_metadata(model, version)
        except OipError as e:
            raise not_ready(e) from e
        return JSONResponse({"name": model, "ready": True})

    @_maps_oip_errors
    async def infer(self, request: Request) -> Response:
        model, version = _model_and_version(request)
        limit = max_body_bytes(self.adapter.core)
        body: bytes | bytearray = await read_body(request, limit)
        encoding = request.headers.get("content-encoding")
        if encoding and encoding.strip().lower() != "identity":  # inflate off the loop
            body = await asyncio.to_thread(decode_body, body, encoding, limit)
        parsed, binary_outputs = parse_infer_request(model, version, body,
                                                     request.headers.get(HEADER_LENGTH))
        response = await self.adapter.infer(parsed)
        content, json_length = encode_infer_response(response, binary_outputs)
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(json_length)})

    # ---- Triton's extensions: the adapter builds the messages, written as Triton writes them

    @_maps_oip_errors
    async def model_config(self, request: Request) -> Response:
        model, version = _model_and_version(request)
        return JSONResponse(message_json(self.adapter.model_config(model, version)))

    @_maps_oip_errors
    async def model_statistics(self, request: Request) -> Response:
        model = request.path_params.get("model", "")
        return JSONResponse(message_json(self.adapter.model_statistics(
            model, request.path_params.get("version", ""))))

    @_maps_oip_errors
    async def repository_index(self, request: Request) -> Response:
        body = await request.body()
        try:
            document = json.loads(body) if body.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise invalid(f"the request is not valid JSON: {e}") from e
        if not isinstance(document, dict):
            raise invalid('the request must be a JSON object, e.g. {"ready": true}')
        ready = bool_parameter("ready", document.get("ready", False))
        index = message_json(self.adapter.repository_index(ready_only=ready))
        return JSONResponse(index.get("models", []))

    @_maps_oip_errors
    async def model_load(self, request: Request) -> Response:
        await self.adapter.load_model(request.path_params["model"])
        return Response(status_code=200)

    @_maps_oip_errors
    async def model_unload(self, request: Request) -> Response:
        self.adapter.unload_model(request.path_params["model"])
        return Response(status_code=200)


def _model_and_version(request: Request) -> tuple[str, str]:
    return request.path_params["model"], request.path_params.get("version", "")


def build_app(core: CoreSource) -> Starlette:
    """The ``/v2`` routes over ``core``, or over what a function returns (called per request).

    Under BentoML, mount it at the root so ``GET /v2`` resolves too::

        @bentoml.asgi_app(build_app(lambda: bentoml.get_current_service().core), path="/",
                          name="oip_v2")
    """
    routes = OipRoutes(core)
    model = "/v2/models/{model}"
    version = model + "/versions/{version}"
    return Starlette(routes=[
        Route("/v2", routes.server_metadata, methods=["GET"]),
        Route("/v2/health/live", routes.live, methods=["GET"]),
        Route("/v2/health/ready", routes.ready, methods=["GET"]),
        # Before /v2/models/{model}, which would take "stats" for a model name (as in Triton).
        Route("/v2/models/stats", routes.model_statistics, methods=["GET"]),
        Route("/v2/repository/index", routes.repository_index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", routes.model_load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", routes.model_unload, methods=["POST"]),
        *(route for prefix in (model, version) for route in (
            Route(prefix, routes.model_metadata, methods=["GET"]),
            Route(prefix + "/ready", routes.model_ready, methods=["GET"]),
            Route(prefix + "/infer", routes.infer, methods=["POST"]),
            Route(prefix + "/config", routes.model_config, methods=["GET"]),
            Route(prefix + "/stats", routes.model_statistics, methods=["GET"]),
        )),
    ])
