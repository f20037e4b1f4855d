"""What the HTTP front end puts in place of BentoML 1.4's own code, each with its reason.

Installed by ``service.http.patches.install()`` (which checks every target first, and is the
only module that assigns to BentoML's or uvicorn's attributes) when ``service.http.service`` is
imported: in ``tta-serve``'s process (``service.http.server``) or in a worker of ``bentoml
serve``. Import this module only through ``patches``: it subclasses private BentoML classes.
``tests/reliability`` fails if any of these regresses.

1. **Memory held per request** (BentoML's ``TimeoutMiddleware``). Every request schedules
   ``loop.call_later(traffic timeout, ...)`` and never cancels it, so the timer -- with the
   request's context (its OpenTelemetry span, the ASGI scope, the request) -- stays in the event
   loop's heap for the whole timeout: 600 s here, ~4.6 MB per 1,000 requests of any route,
   ``/livez`` included (tracemalloc on a running worker: OpenTelemetry ``_Span`` objects and
   ``TimerHandle``s growing by one per request). ``_timeout_call`` is the same middleware with
   its timer cancelled when the request ends and run in an empty context, and with the wait
   ending when the application does (it used to hang until the timeout when the application
   raised before answering).

2. **File fields fetch URLs; client mistakes are 500s** (BentoML's request serdes). A multipart
   file field sent as a text value is *downloaded* by BentoML (``MultipartSerde.ensure_file``),
   as is a JSON body that is one URL for an API whose one input is a file
   (``JSONSerde.parse_request``): a server-side request forgery. A body that is not
   multipart although its Content-Type says so, a multipart Content-Type without a boundary, a
   file under a field that takes text, and Swagger's ``images=null`` were answered 500.
   ``UploadsOnlyMultipart`` / ``NoFetchJSON`` take uploaded bytes only, never fetch, and answer
   each mistake 400 (``ClientMistake``) with a message saying what was wrong.

3. **A traceback per client error** (BentoML logs ``Exception on /predict [POST]`` with the
   stack for every validation 400): ``QuietClientErrors`` turns each into one INFO line.

4. **SIGTERM reset connections** (uvicorn): ``drain_then_exit`` wraps ``Server.handle_exit``
   under ``bentoml serve``; the drain itself is ``service.http.drain``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from typing import Any

from _bentoml_impl.serde import JSONSerde, MultipartSerde, Payload
from _bentoml_sdk.typing_utils import get_args, is_list_type, is_union_type
from bentoml.exceptions import BadInput, BentoMLException
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from service.http.drain import CLIENT_ERROR_SCOPE_KEY, drain_then_exit

__all__ = ["ClientMistake", "NoFetchJSON", "QuietClientErrors", "UploadsOnlyMultipart",
           "drain_then_exit", "timeout_call"]

log = logging.getLogger(__name__)


# ---- 1. the timeout middleware's timers


async def timeout_call(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """``bentoml._internal.server.http.traffic.TimeoutMiddleware.__call__``, its timer
    cancelled when the request ends (and scheduled in an empty context)."""
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter,
                            context=contextvars.Context())

    async def _send(message: Message) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    def _ended(_: asyncio.Future) -> None:
        if not waiter.done():
            waiter.set_result(None)

    fut = asyncio.ensure_future(self.app(scope, receive, _send))
    fut.add_done_callback(_ended)
    try:
        await waiter
    except TimeoutError:
        if fut.cancel():
            await JSONResponse(
                {"error": f"Not able to process the request in {self.timeout} seconds"},
                status_code=504)(scope, receive, send)
    else:
        await fut
    finally:
        timer.cancel()


# ---- 2. request parsing: uploaded bytes only, client mistakes are 400s


class ClientMistake(BadInput):
    """A request the client got wrong: BentoML answers 400, ``HttpDrain`` writes the body
    (``InvalidRequest`` from the one error table)."""


def _client_mistake(request: Request, message: str) -> ClientMistake:
    request.scope[CLIENT_ERROR_SCOPE_KEY] = message
    return ClientMistake(message)


class NoFetchJSON(JSONSerde):
    """JSON bodies as they come: a body that is a URL is refused, never fetched."""

    async def parse_request(self, request: Request, cls: type) -> Any:
        body = await request.body()
        if body.lstrip()[:8].lower().startswith((b"http://", b"https://")):
            raise _client_mistake(request, (
                "the body is a URL; this server never fetches URLs. Send the image itself: a "
                "multipart file field, or JSON with the base64-encoded bytes"))
        return self.deserialize_model(_payload(body, request), cls)


class UploadsOnlyMultipart(MultipartSerde):
    """multipart/form-data (and urlencoded forms) with file fields taken from uploaded
    parts only; what BentoML answered 500 (or fetched) is a 400 naming the problem."""

    async def parse_request(self, request: Request, cls: type) -> Any:
        try:
            form = await request.form()
        except (MultiPartException, HTTPException) as e:  # HTTPException(400) inside an app
            raise _client_mistake(request, (
                f"the body is not valid multipart/form-data ({_detail(e)}); send a multipart form "
                "(e.g. curl -F image=@digit.png) with a Content-Type that carries its "
                "boundary, or JSON with Content-Type: application/json")) from e
        data: dict[str, Any] = {}
        files = set(cls.multipart_fields)
        for key in form:
            values = form.getlist(key)
            if key in files:
                uploads = [v for v in values if isinstance(v, UploadFile)]
                texts = [v for v in values if not isinstance(v, UploadFile)]
                if any(t.strip() not in ("", "null") for t in texts):
                    raise _client_mistake(request, (
                        f"{key!r} must be an uploaded file (a multipart part with a "
                        f"filename, e.g. curl -F {key}=@digit.png), not a text value; this "
                        "server never fetches URLs"))
                if not uploads:  # an empty file input (Swagger sends 'null'): not sent
                    continue
                annotation = cls.model_fields[key].annotation
                if is_union_type(annotation):
                    annotation = get_args(annotation)[0]
                if is_list_type(annotation):
                    data[key] = uploads
                elif len(uploads) == 1:
                    data[key] = uploads[0]
                else:
                    raise _client_mistake(request, (
                        f"{key!r} takes one file; this request has {len(uploads)}"))
                continue
            value = form[key]
            if isinstance(value, UploadFile):
                if key not in cls.model_fields:
                    names = ", ".join(sorted(files)) or "none"
                    raise _client_mistake(request, (
                        f"unexpected file field {key!r}; this route takes files as "
                        f"{names}, e.g. curl -F {sorted(files)[0] if files else key}"
                        "=@digit.png"))
                raw = await value.read()
                try:
                    value = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise _client_mistake(request, (
                        f"{key!r} takes a text value, not a file")) from None
            try:
                data[key] = json.loads(value)
            except json.JSONDecodeError:
                data[key] = value
            except RecursionError:
                raise _client_mistake(request, (
                    f"{key!r} is JSON nested too deeply")) from None
        return cls.model_validate(data)


def _detail(error: Exception) -> str:
    return str(getattr(error, "detail", None) or getattr(error, "message", None) or error)


def _payload(body: bytes, request: Request) -> Payload:
    return Payload((body,), metadata=request.headers)


# ---- 3. one line per client error


class QuietClientErrors(logging.Filter):
    """BentoML's ``Exception on PATH [METHOD]`` + traceback for a 4xx -> one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        with contextlib.suppress(Exception):  # a filter must never fail the request it logs
            self._shorten(record)
        return True

    @staticmethod
    def _shorten(record: logging.LogRecord) -> None:
        if not record.exc_info or record.exc_info[1] is None:
            return
        error = record.exc_info[1]
        status = _client_status(error)
        if status is None:
            return
        if isinstance(error, ValidationError):
            text = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                             for e in error.errors(include_url=False))
        else:
            text = str(error)
        where = record.getMessage().removeprefix("Exception on ")
        record.msg, record.args = "%s -> %d %s", (where, status, " ".join(text.split())[:300])
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"


def _client_status(error: BaseException) -> int | None:
    if isinstance(error, ValidationError):
        return 400
    if isinstance(error, BentoMLException) and 400 <= int(error.error_code) < 500:
        return int(error.error_code)
    return None
