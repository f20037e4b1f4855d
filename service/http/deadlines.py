"""A request's deadline and its client's departure, from HTTP to the core.

``RequestDeadline`` (ASGI middleware, on every route: the BentoML API, the GET routes and the
Open Inference Protocol's ``/v2``):

- the ``X-Request-Timeout`` header or the ``timeout`` query parameter (seconds, e.g. ``0.25``)
  becomes the request's deadline (``service.core.deadlines``): past it, the request is dropped
  from the model's queue uncomputed and answered 504 (``deadline_exceeded``); a value that is
  not a positive number is a 400 naming it;
- a client that closes its connection before its answer cancels the request's work: the app
  runs in a task of its own, and once the request body has been read a watcher waits for the
  server's ``http.disconnect``; arriving before the response is complete, it cancels that
  task, and the core drops the request wherever it waits (decode pool, batcher queue).

Why here and not in each route: BentoML's API functions see neither the raw headers of every
route nor the connection; one middleware covers every route the same way, as the gRPC server's
one wrapper (``service.grpc.server._counted``) does for every RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core import CoreError, deadlines
from service.http.schema import error_response

TIMEOUT_HEADER = b"x-request-timeout"
TIMEOUT_QUERY = "timeout"


def request_timeout_s(scope: Scope) -> float | None:
    """The request's timeout in seconds (header first, then query), None when it sets none;
    InvalidRequest when it is not a positive number."""
    for name, value in scope.get("headers", ()):
        if name == TIMEOUT_HEADER:
            return deadlines.parse_timeout_s(value.decode("latin-1"), name="X-Request-Timeout")
    query = scope.get("query_string", b"")
    if query and TIMEOUT_QUERY.encode() in query:
        values = parse_qs(query.decode("latin-1")).get(TIMEOUT_QUERY)
        if values:
            return deadlines.parse_timeout_s(values[0], name="query parameter 'timeout'")
    return None


class RequestDeadline:
    """ASGI middleware: the request's deadline for the core; a departed client cancels it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            timeout_s = request_timeout_s(scope)
        except CoreError as e:
            await error_response(e)(scope, receive, send)
            return
        exchange = _Exchange(receive, send)
        with deadlines.within(timeout_s):  # the task below starts with this deadline
            exchange.work = asyncio.ensure_future(self.app(scope, exchange.receive, exchange.send))
        try:
            await exchange.work
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not exchange.gone or (task is not None and task.cancelling()):
                raise  # cancelled from outside (shutdown), not by the client leaving
        finally:
            if exchange.watcher is not None:
                exchange.watcher.cancel()


class _Exchange:
    """One request's receive/send, watching for the client's departure once its body is in."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.work: asyncio.Future | None = None
        self.watcher: asyncio.Task | None = None
        self.responded = False
        self.gone = False

    async def receive(self) -> Message:
        message = await self._receive()
        if (self.watcher is None and message["type"] == "http.request"
                and not message.get("more_body", False)):
            self.watcher = asyncio.create_task(self._watch())
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.responded = True  # before sending: the server then reports a disconnect
        await self._send(message)

    async def _watch(self) -> None:
        with contextlib.suppress(OSError):
            while (await self._receive())["type"] != "http.disconnect":
                pass
        if not self.responded and self.work is not None:
            self.gone = True
            self.work.cancel()
