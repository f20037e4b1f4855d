"""What the HTTP front end corrects in BentoML 1.4 and uvicorn, each with its reason.

Installed by ``service.http.service`` when it is imported (``install()``): in ``tta-serve``'s
process (``service.http.server``) or in a worker of ``bentoml serve``; bentoml is pinned below
1.5 and ``tests/reliability`` fails if any of these regresses.

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

4. **SIGTERM reset connections** (uvicorn's shutdown closes idle keep-alive connections at
   once, so a request on its way on one is lost to a reset, and the requests it reads in its
   last moments with it). On the first SIGTERM/SIGINT the server drains first (``HttpDrain``):
   ``/readyz`` answers 503, every new request 503 ``shutting_down`` with ``Connection: close``,
   every response ``Connection: close``; when no request is in flight and none has arrived for
   ``DRAIN_QUIET_S`` (or no connection is left, or the grace period is over) uvicorn's own
   shutdown runs. A client learns of the shutdown from a response, never from a reset.
   ``tta-serve`` starts the drain itself (``HttpServer.stop``, its uvicorn has no signal
   handlers); under ``bentoml serve`` the patched ``uvicorn.Server.handle_exit`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import signal
import time
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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

CLIENT_ERROR_SCOPE_KEY = "tta_serve.client_error"
SHUTTING_DOWN_KIND = "shutting_down"
DRAIN_QUIET_S = 0.2
RETRY_AFTER_S = 1


# ---- 1. the timeout middleware's timers


async def _timeout_call(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
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
    """A request the client got wrong: BentoML answers 400, ``HttpDrain`` writes the body."""


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


# ---- 4. drain on SIGTERM


class DrainState:
    """The worker's drain: whether it began, requests in flight, the latest arrival."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self.last_arrival = 0.0

    async def drained(self, grace_s: float, connections: Any) -> None:
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            quiet = time.monotonic() - self.last_arrival >= DRAIN_QUIET_S
            if not connections or (self.in_flight == 0 and quiet):
                return
            await asyncio.sleep(0.02)
        log.warning("%d HTTP request(s) still in flight after the %.0f s grace period",
                    self.in_flight, grace_s)


DRAIN = DrainState()


class HttpDrain:
    """ASGI middleware: counts requests; once draining, refuses new ones with 503 and closes
    every connection after its response; writes ``ClientMistake`` bodies as ours."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        DRAIN.last_arrival = time.monotonic()
        if DRAIN.draining and scope.get("path") not in ("/livez", "/readyz", "/metrics"):
            await JSONResponse(
                {"error": "the server is shutting down; retry on another replica",
                 "kind": SHUTTING_DOWN_KIND}, status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_S), "Connection": "close"},
            )(scope, receive, send)
            return
        replaced = False

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                mistake = scope.get(CLIENT_ERROR_SCOPE_KEY)
                if mistake is not None and message["status"] == 400:
                    replaced = True
                    await JSONResponse({"error": mistake, "kind": "invalid_request"},
                                       status_code=400,
                                       headers={"Connection": "close"} if DRAIN.draining else None
                                       )(scope, receive, send)
                    return
                if DRAIN.draining:
                    message = {**message, "headers": [
                        *[(k, v) for k, v in message.get("headers", []) if k != b"connection"],
                        (b"connection", b"close")]}
            await send(message)

        DRAIN.in_flight += 1
        try:
            await self.app(scope, receive, guarded_send)
        finally:
            DRAIN.in_flight -= 1


def _drain_then_exit(original: Any) -> Any:
    """uvicorn's ``Server.handle_exit``, drained first on the first SIGTERM/SIGINT."""

    def handle_exit(self: Any, sig: int, frame: Any) -> None:
        if sig not in (signal.SIGTERM, signal.SIGINT):
            original(self, sig, frame)
            return
        if DRAIN.draining:  # a second SIGINT stops at once; the drain outlives more SIGTERMs
            if sig == signal.SIGINT:
                original(self, sig, frame)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving yet
            original(self, sig, frame)
            return
        DRAIN.draining = True
        grace_s = float(self.config.timeout_graceful_shutdown or 10)
        log.info("draining: refusing new requests, finishing %d in flight (grace %.0f s)",
                 DRAIN.in_flight, grace_s)

        async def drain() -> None:
            try:
                await DRAIN.drained(grace_s, self.server_state.connections)
            finally:
                original(self, sig, frame)

        loop.call_soon_threadsafe(lambda: loop.create_task(drain()))

    return handle_exit


# ---- installing


_installed = False


def install() -> None:
    """Apply 1-4 in this process (idempotent), when it imports the service."""
    global _installed
    if _installed:
        return
    import uvicorn
    from _bentoml_impl import serde
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware.__call__ = _timeout_call  # type: ignore[method-assign]
    table: Any = serde.ALL_SERDE  # a dict: BentoML looks the Content-Type up per request
    table["application/json"] = NoFetchJSON
    table["multipart/form-data"] = UploadsOnlyMultipart
    table["application/x-www-form-urlencoded"] = UploadsOnlyMultipart
    logging.getLogger("bentoml._internal.server.http_app").addFilter(QuietClientErrors())
    uvicorn.Server.handle_exit = _drain_then_exit(uvicorn.Server.handle_exit)  # type: ignore
    _installed = True
