"""The hot routes: ``POST /predict`` and the ``/v2`` (Open Inference Protocol) routes, answered
inside the BentoML app without the per-request machinery that buys them nothing.

Why: on a cheap model (digits) BentoML's generic API path costs ~2.5 ms of CPU per request: ten
OpenTelemetry spans (no exporter is configured, so they are never seen), its request context,
a multipart form spooled through Starlette's parser and written again as a temporary *file*
for the ``Path`` argument, pydantic validation of the input model, then the endpoint wrapper.
A ``/predict`` request needs an image's bytes and four small options.

How: ``install(app)`` puts ``HotRoutes`` into the service app's middleware list right after
BentoML's request metrics (so ``bentoml_service_request_duration_seconds`` still counts every
request), and moves in front of it the token check (``service.security.asgi``) and
``LoadShedding`` (``service.http.shedding``: an inference request the core would refuse is
answered before its body is read), so that neither a caller without a token nor a refused
request has its body read, and no request is checked twice. A hot request then runs through
the same middlewares as any other, minus OpenTelemetry, BentoML's request context and its
traffic timeout (the core bounds its own work: ``max_pending``, the batcher): the access log,
``FormLimits`` (413), ``HttpDrain`` (503 while draining, ``Connection: close``) and CORS when
enabled stay, in their order.

- ``/v2/...`` goes straight to the OIP app (``service.oip.http_routes``), the very app BentoML
  mounts: same answers, same errors, only the generic layers skipped.
- ``POST /predict`` is read whole (up to ``max_image_bytes`` + a margin) and parsed with
  python-multipart's own parser into memory (``service.http.hot_predict``). Only a request of
  the plain shape -- one image (a multipart file part ``image``, or JSON ``image_base64``) and
  the options ``tta``/``top_k``/``model``/``version`` with values of their exact type -- is
  answered here; anything else (another content type, a malformed or oversized body, a text
  value where a file goes, an unknown field, ``tta="yes"``...) is replayed, byte for byte, into
  BentoML's own route, so every client mistake keeps the answer it had (``hardening``'s 400s,
  pydantic's messages). The answer is the route's: the core's ``Prediction`` as
  ``PredictResponse`` JSON, a core error as ``error_response``, counted in
  ``tta_serve_http_requests_total`` the same way.

Under ``bentoml serve service.http.service:Classifier`` nothing here is installed: that worker
builds its app itself and serves every route the generic way, with the same answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.middleware import Middleware
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from service.http.drain import DRAIN
from service.http.hot_predict import (
    PARSED_SCOPE_KEY,
    body_bound,
    parse,
    predict_handler,
    read_body,
    replaying,
)
from service.http.shedding import LoadShedding
from service.security.asgi import BearerAuth

log = logging.getLogger(__name__)

# BentoML's per-request layers a hot route skips, by class name (they live in private modules).
SKIPPED = frozenset({"OpenTelemetryMiddleware", "ContextMiddleware", "TimeoutMiddleware"})
METRICS = "RunnerTrafficMetricsMiddleware"


class HotRoutes:
    """ASGI middleware: hot requests to ``hot`` (their own middleware chain), the rest on.

    A ``POST /predict`` body is read first: of the plain shape, it goes to ``hot``; otherwise
    it is replayed into the generic stack (``app``) as it came."""

    def __init__(self, app: ASGIApp, hot: ASGIApp, is_oip: Callable[[Scope], bool],
                 body_bound: Callable[[], int]) -> None:
        self.app = app
        self.hot = hot
        self.is_oip = is_oip
        self.body_bound = body_bound

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["path"] == "/predict" and scope["method"] == "POST":
                # In flight for the drain from its first byte, as HttpDrain counts it later:
                # a drain must not close the connection while the body is still on its way.
                DRAIN.last_arrival = time.monotonic()
                with DRAIN.serving():
                    body, complete = await read_body(scope, receive, self.body_bound())
                request = parse(scope, body) if complete else None
                replay = replaying(body, complete, receive)
                if request is None:
                    await self.app(scope, replay, send)
                else:
                    scope[PARSED_SCOPE_KEY] = request
                    await self.hot(scope, replay, send)
                return
            if self.is_oip(scope):
                await self.hot(scope, receive, send)
                return
        await self.app(scope, receive, send)


def oip_matcher(oip_app: object) -> Callable[[Scope], bool]:
    """Whether a request is one of the OIP app's routes (method aside: its 405s are its own)."""
    routes = list(getattr(oip_app, "routes", []))

    def matches(scope: Scope) -> bool:
        if not scope["path"].startswith("/v2"):
            return False
        return any(route.matches(scope)[0] is not Match.NONE for route in routes)

    return matches


def install(app: object, service: Callable[[], Any], oip_app: ASGIApp, server_name: str) -> bool:
    """Insert ``HotRoutes`` into a built (not yet started) BentoML service app; False (and the
    app unchanged) when its middleware list is not the one this module knows. ``service``
    returns the running ``Classifier`` instance (its core and request counter)."""
    stack = getattr(app, "user_middleware", None)
    if not isinstance(stack, list) or getattr(app, "middleware_stack", None) is not None:
        log.warning("hot routes not installed: the service app is not a fresh Starlette app")
        return False
    names = [getattr(m.cls, "__name__", "") for m in stack]
    start = names.index(METRICS) + 1 if METRICS in names else 0
    # The token check and the load shedding move in front of HotRoutes (below): taken out of
    # the service's list here, so that no request is checked twice.
    stack[start:] = [m for m in stack[start:] if m.cls not in (BearerAuth, LoadShedding)]
    kept = [m for m in stack[start:] if getattr(m.cls, "__name__", "") not in SKIPPED]
    predict = predict_handler(service, server_name)

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        if PARSED_SCOPE_KEY in scope:
            await predict(scope, receive, send)
        else:
            await oip_app(scope, receive, send)

    hot: ASGIApp = route
    for cls, args, kwargs in reversed(kept):
        hot = cls(hot, *args, **kwargs)
    stack.insert(start, Middleware(HotRoutes, hot=hot, is_oip=oip_matcher(oip_app),
                                   body_bound=lambda: body_bound(
                                       service().core.config.max_image_bytes)))
    # In front of HotRoutes, which reads POST /predict's body first, for every request: the
    # token check, then an overloaded core's refusals (service.http.shedding), so that a caller
    # without a token has no body read and holds no place among the requests arriving.
    stack.insert(start, Middleware(LoadShedding, core=lambda: service().core))
    stack.insert(start, Middleware(BearerAuth))
    return True
