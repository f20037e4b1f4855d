"""The HTTP front end's drain on SIGTERM: ``service.core.drain.Drain`` as ASGI middleware.

uvicorn's shutdown closes idle keep-alive connections at once, so a request on its way on one
is lost to a reset, and the requests it reads in its last moments with it. On the first
SIGTERM/SIGINT the server drains first: ``/readyz`` answers 503, every new request 503
``shutting_down`` (``ShuttingDown``, from the one error table) with ``Connection: close``, every
response ``Connection: close``; when no request is in flight and none has arrived for
``DRAIN_QUIET_S`` (or no connection is left, or the grace period is over) uvicorn's own shutdown
runs. A client learns of the shutdown from a response, never from a reset. ``tta-serve`` starts
the drain itself (``HttpServer.stop``, its uvicorn has no signal handlers); under ``bentoml
serve`` the patched ``uvicorn.Server.handle_exit`` does (``service.http.patches``).

The middleware also writes the body of a request the serdes refused (``ClientMistake``, which
BentoML answers with its own 400 body) as ours: ``InvalidRequest`` through the table.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.drain import Drain
from service.core.errors import InvalidRequest
from service.http.schema import error_response

log = logging.getLogger(__name__)

CLIENT_ERROR_SCOPE_KEY = "tta_serve.client_error"  # a ClientMistake's message, for the body
DRAIN_QUIET_S = 0.2
NEVER_REFUSED = ("/livez", "/readyz", "/metrics")
CLOSE = {"Connection": "close"}

DRAIN = Drain(DRAIN_QUIET_S)  # the process's: one HTTP server (or bentoml worker) per process


class HttpDrain:
    """ASGI middleware: counts requests; once draining, refuses new ones with 503 and closes
    every connection after its response; writes ``ClientMistake`` bodies as ours."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = DRAIN.arrived()
        if refusal is not None and scope.get("path") not in NEVER_REFUSED:
            await error_response(refusal, CLOSE)(scope, receive, send)
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
                    await error_response(InvalidRequest(mistake),
                                         CLOSE if DRAIN.draining else None)(scope, receive, send)
                    return
                if DRAIN.draining:
                    message = {**message, "headers": [
                        *[(k, v) for k, v in message.get("headers", []) if k != b"connection"],
                        (b"connection", b"close")]}
            await send(message)

        with DRAIN.serving():
            await self.app(scope, receive, guarded_send)


def drain_then_exit(original: Any) -> Any:
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
        DRAIN.begin()
        grace_s = float(self.config.timeout_graceful_shutdown or 10)
        log.info("draining: refusing new requests, finishing %d in flight (grace %.0f s)",
                 DRAIN.in_flight, grace_s)

        async def drain() -> None:
            try:
                await drained(grace_s, self.server_state.connections)
            finally:
                original(self, sig, frame)

        loop.call_soon_threadsafe(lambda: loop.create_task(drain()))

    return handle_exit


async def drained(grace_s: float, connections: Any) -> None:
    """Wait for the drain, or until no connection is left; a warning when time ran out."""
    if not await DRAIN.drained(grace_s, gone=lambda: not connections):
        log.warning("%d HTTP request(s) still in flight after the %.0f s grace period",
                    DRAIN.in_flight, grace_s)
