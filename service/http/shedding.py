"""Load shedding before the body: an inference request the core would refuse anyway is
answered at once, from its headers, its body never read.

Why: under a storm the HTTP front end, not the model, is the bottleneck. Reading and parsing a
multipart body on the event loop costs more than the digits model's forward pass, so a request
the core then refuses (its model's queue full, ``--max-queue``; the process's, ``--max-pending``;
its deadline out of reach) has already spent most of what an answer costs, and the requests that
could have been answered in time wait behind it. Refused before its body is read, it costs the
server a header parse and a small answer.

Which requests: ``POST /predict``, ``POST /predict_batch`` and the Open Inference Protocol's
``POST /v2/models/{name}[/versions/{v}]/infer`` (its model is in the path; for the other two the
model is named in the body, so the request is refused only when every served model would refuse
it). The decision is the core's (``InferenceCore.arriving``, ``service.core.admission``): the
same bounds and deadline rule as its admission, counting requests whose bodies are still
arriving as queued. The answer is the one error table's (``service.core.errors``): 503 +
Retry-After (``overloaded``) or 504 (``deadline_exceeded``), counted in the core's statistics
as its own refusals. The connection stays open; a body sent after the answer is discarded by
uvicorn. Anything else -- another route, a request before the core is up, a timeout that is not
a number (``RequestDeadline`` answers that 400) -- goes on unchanged.

Where: in the service's middleware list after the token check (a caller without a token gets
401, not a hint about the load, and holds no place among the requests arriving); under
``tta-serve`` both move in front of the hot routes (``service.http.hot_routes``), which read
``POST /predict``'s body before the service's middlewares run. An arrival nested in another
(the same request) counts nothing more (``Admission.arrive``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from service.core import CoreError
from service.http.deadlines import request_timeout_s
from service.http.schema import error_response

ANY_MODEL = ""  # a route whose model is named in the body
ROUTES = {"/predict": ANY_MODEL, "/predict_batch": ANY_MODEL}
OIP_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/[^/]+)?/infer")


def inference_model(scope: Scope) -> str | None:
    """The model an inference request names in its URL (``ANY_MODEL``: in its body); None for
    any other request."""
    if scope["type"] != "http" or scope.get("method") != "POST":
        return None
    path = scope.get("path", "")
    if path in ROUTES:
        return ROUTES[path]
    match = OIP_INFER.fullmatch(path)
    return match.group(1) if match else None


def _running_core() -> Any:
    """The core of the running ``Classifier`` instance; None before its start-up."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        return getattr(bentoml.get_current_service(), "core", None)
    except BentoMLException:  # "service isn't instantiated yet"
        return None


class LoadShedding:
    """ASGI middleware: the core's refusal of an inference request, answered before its body
    is read; the other requests pass, each counted as arriving until the core admits it."""

    def __init__(self, app: ASGIApp, core: Callable[[], Any] = _running_core) -> None:
        self.app = app
        self.core = core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        model = inference_model(scope)
        core = None if model is None else self.core()
        if core is None:
            await self.app(scope, receive, send)
            return
        try:
            timeout_s = request_timeout_s(scope)
        except CoreError:  # RequestDeadline answers it, with its message
            timeout_s = None
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(core.arriving(model or None, timeout_s))
            except CoreError as e:
                await error_response(e)(scope, receive, send)
                return
            await self.app(scope, receive, send)
