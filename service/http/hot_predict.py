"""``POST /predict`` on the hot path (``service.http.hot_routes``): a request of the plain shape
parsed in memory and answered from the core; every other request replayed into BentoML's route.

The plain shape is what a client of the API sends: one image -- a multipart file part named
``image``, or a JSON object's ``image_base64`` string -- and any of ``tta`` (true/false or
on/off/auto), ``min_confidence`` (a number), ``top_k`` and ``version`` (whole numbers) and
``model`` (text), each once. Multipart text values
are read as BentoML's parser (``service.http.hardening.UploadsOnlyMultipart``) reads them: JSON
when they parse, else the text itself. A value of another type, a second image, an unknown or
repeated field, a part without a filename, a charset, a body over the size bound or one that
does not parse is not the plain shape: ``parse`` answers None, and the route that knows every
answer to a mistake (400 with its message, 413 past the form limits) gets the same bytes.

Multipart is parsed by python-multipart (the parser Starlette itself drives), into memory: an
image is at most ``max_image_bytes``, so neither Starlette's spooled file nor BentoML's
temporary file for a ``Path`` argument buys anything here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from service.core import CoreError
from service.http.schema import decode_base64_image, error_response, prediction_body, tta_label

log = logging.getLogger(__name__)

PARSED_SCOPE_KEY = "tta_serve.predict_request"
OPTIONS: dict[str, Callable[[Any], bool]] = {
    "tta": lambda v: isinstance(v, bool) or v in ("off", "on", "auto"),
    "min_confidence": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "top_k": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "version": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "model": lambda v: isinstance(v, str),
}
BODY_MARGIN = 64 << 10  # multipart headers and options around the image
UNEXPECTED = "An unexpected error has occurred, please check the server log."  # BentoML's 500


@dataclass(frozen=True)
class PredictRequest:
    """A plain ``/predict`` request: the image (bytes, or base64 text) and its options."""

    image: bytes | None
    image_base64: str | None
    options: dict[str, Any]


def body_bound(max_image_bytes: int) -> int:
    """The most body bytes read on the hot path: one base64-encoded image and some margin."""
    return max_image_bytes * 4 // 3 + BODY_MARGIN


async def read_body(scope: Scope, receive: Receive, bound: int) -> tuple[bytes, bool]:
    """The body, up to ``bound`` bytes; (bytes read, whether that is the whole body)."""
    for key, value in scope["headers"]:
        if key == b"content-length" and (not value.isdigit() or int(value) > bound):
            return b"", False
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False  # a disconnect: the generic path reports it
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True
        if size > bound:
            return b"".join(chunks), False


def replaying(body: bytes, complete: bool, receive: Receive) -> Receive:
    """``receive`` with the bytes already read first: the next reader sees the request as sent."""
    pending = [{"type": "http.request", "body": body, "more_body": not complete}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


def parse(scope: Scope, body: bytes) -> PredictRequest | None:
    """The plain shape of a ``/predict`` body, or None (the generic route answers it)."""
    if scope.get("query_string"):
        return None
    content_type = b""
    for key, value in scope["headers"]:
        if key == b"content-type":
            content_type = value
    kind, params = parse_options_header(content_type)
    try:
        if kind == b"multipart/form-data" and set(params) == {b"boundary"}:
            return _multipart(body, params[b"boundary"])
        if kind == b"application/json" and not params:
            return _json(body)
    except (ValueError, RecursionError):
        return None
    return None


def _json(body: bytes) -> PredictRequest | None:
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("image_base64"), str):
        return None
    options = {k: v for k, v in data.items() if k != "image_base64"}
    if not _plain_options(options):
        return None
    return PredictRequest(None, data["image_base64"], options)


def _plain_options(options: dict[str, Any]) -> bool:
    return all(key in OPTIONS and OPTIONS[key](value) for key, value in options.items())


def _multipart(body: bytes, boundary: bytes) -> PredictRequest | None:
    parts = _parts(body, boundary)
    if parts is None:
        return None
    image: bytes | None = None
    options: dict[str, Any] = {}
    for name, filename, data in parts:
        if name == "image" and filename:
            if image is not None:
                return None
            image = data
        elif filename is None and name in OPTIONS and name not in options:
            text = data.decode("utf-8")  # UnicodeDecodeError is a ValueError: not plain
            try:
                options[name] = json.loads(text)
            except json.JSONDecodeError:
                options[name] = text
        else:
            return None
    if image is None or not _plain_options(options):
        return None
    return PredictRequest(image, None, options)


def _parts(body: bytes, boundary: bytes) -> list[tuple[str, str | None, bytes]] | None:
    """(name, filename or None, data) of each part; None when the body is not whole."""
    parts: list[tuple[str, str | None, bytes]] = []
    headers: list[tuple[bytes, bytes]] = []
    field, value, data = bytearray(), bytearray(), bytearray()

    def header_end() -> None:
        headers.append((bytes(field).lower(), bytes(value)))
        field.clear()
        value.clear()

    def part_end() -> None:
        disposition = dict(headers).get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        if b"name" not in options or any(k not in (b"content-disposition", b"content-type")
                                         for k, _ in headers):
            raise ValueError("not a plain part")
        filename = options.get(b"filename")
        parts.append((options[b"name"].decode("utf-8"),
                      None if filename is None else filename.decode("utf-8"), bytes(data)))
        headers.clear()
        data.clear()

    parser = MultipartParser(boundary, {
        "on_header_field": lambda b, s, e: field.extend(b[s:e]),
        "on_header_value": lambda b, s, e: value.extend(b[s:e]),
        "on_header_end": header_end,
        "on_part_data": lambda b, s, e: data.extend(b[s:e]),
        "on_part_end": part_end,
    })
    try:
        parser.write(body)
        parser.finalize()
    except Exception:  # python-multipart's parse errors: the generic route words them
        return None
    return parts if parser.state == MultipartState.END else None


def predict_handler(service: Callable[[], Any],
                    server_name: str) -> Callable[[Scope, Receive, Send], Any]:
    """The ASGI app answering a parsed plain request (``scope[PARSED_SCOPE_KEY]``) as the
    ``/predict`` route would: the core's prediction, or the error's response, counted."""

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        request: PredictRequest = scope[PARSED_SCOPE_KEY]
        # Take the (replayed) body as any route would: the receive chain then knows the request
        # is in, and RequestDeadline starts watching for a client that leaves (it cancels us).
        await receive()
        instance = service()
        options = request.options
        tta = options.get("tta")  # unset: the model's default mode, as the generic route
        label = tta_label(tta)
        try:
            image = request.image if request.image is not None else decode_base64_image(
                request.image_base64 or "", "image_base64")
            prediction = await instance.core.predict(
                image, model=options.get("model"),
                version=options.get("version"), tta=tta,
                top_k=options.get("top_k", 0), min_confidence=options.get("min_confidence"))
        except CoreError as e:
            instance.requests.labels("predict", label, e.kind).inc()
            response: Response = error_response(e)
        except Exception:
            log.exception("Exception on /predict [POST]")
            response = JSONResponse({"error": UNEXPECTED}, status_code=500)
        else:
            instance.requests.labels("predict", label, "ok").inc()
            response = Response(prediction_body(prediction).model_dump_json(),
                                media_type="application/json")
        response.headers["Server"] = f"BentoML Service/{server_name}"  # as BentoML's routes
        await response(scope, receive, send)

    return answer
