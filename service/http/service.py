"""The HTTP front end: a BentoML service over the inference core.

Run it with ``tta-serve`` (beside gRPC) or ``tta-serve http`` (``service.http.server``), or
with ``bentoml serve service.http.service:Classifier`` (the core is then configured by
``TTA_SERVE_*`` environment variables, see ``service.process.serve_env``). Routes:

    POST /predict          one image: multipart ``image``, or JSON ``image_base64``
    POST /predict_batch    several images: multipart ``images``, or JSON ``images_base64``
    POST /evaluate         labelled images (``images`` + ``labels``, ``images_base64`` + ``labels``,
                           or a zip ``archive`` of CLASS/image folders) -> evaluation report
    GET  /models, /models/{name}[?version=N]     what ListModels / GetModel return
    GET  /evaluations/{id}/confusion.png         the PNG of one of the last evaluations
    GET  /livez, /readyz, /metrics, /docs.json, /  BentoML's health, Prometheus and OpenAPI
    /v2/...                the Open Inference Protocol (KServe v2) routes, over the same core
                           (``service.oip.http_routes``; see docs/oip.md)

Like the gRPC servicer, each route only parses, calls the core and maps the core's typed errors
(each carries its status, ``service.core.errors``: 400 bad image or option, 413 too large, 404
unknown model, 503 overloaded). A multipart body with more files or fields than the form parser
takes (1000 each) gets 413 from the ``FormLimits`` middleware (``service.http.form_limits``),
where BentoML would answer 500.

The GET routes are a small Starlette app mounted on the service, because BentoML's own API
routes are POST-only; they delegate to methods of the service instance. The ``/v2`` app is
mounted the same way and asks the service instance for its core per request. Both are mounted
at "/" (BentoML's mounts only take paths one of their routes matches, so they shadow none of
the service's own routes) and carry their own prefixes.

Batching: the APIs are not ``batchable=True``. The core's dynamic batcher already gathers
concurrent requests (those of this process: the HTTP routes, ``/v2`` and, under ``tta-serve``,
gRPC) into one forward pass and hands each its own rows; a BentoML batch on top would add a
second wait, could not mix requests with different ``tta``/``top_k``/``model`` options
(batchable APIs take one argument), and fails a whole batch when one input raises, where the
core answers each image on its own.

The core: ``tta-serve`` serves this app in its own process (``service.http.server``) over the
core its gRPC server uses, handed over by ``provide_core`` before the app starts: one copy of
each model, one batcher per model fed by both wires, one /metrics and one statistics view.
Under ``bentoml serve service.http.service:Classifier`` no core is provided, and the instance
starts (and at shutdown stops) its own from the ``TTA_SERVE_*`` variables; then ``workers=1``,
because each worker would load its own core and models (scale with replicas).
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bentoml
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.core import CoreError, InferenceCore, InvalidRequest, Prediction
from service.core.errors import EvaluationNotFound
from service.http.deadlines import RequestDeadline
from service.http.drain import DRAIN, HttpDrain
from service.http.form_limits import FormLimits
from service.http.patches import install
from service.http.schema import (
    BatchResponse,
    EvaluationResponse,
    ListModelsResponse,
    PredictResponse,
    TTAParam,
    archive_items,
    batch_item,
    error_response,
    evaluation_body,
    labelled_items,
    model_info_body,
    one_image,
    prediction_body,
    provider_body,
    several_images,
    tta_label,
)
from service.http.shedding import LoadShedding
from service.http.web import web_routes
from service.oip.http_routes import build_app as build_oip_app
from service.process.serve_env import LOG_LEVEL_ENV, core_config_from_env
from service.security.asgi import BearerAuth

log = logging.getLogger(__name__)

# Optional uploads are annotated ``Path`` / ``list[Path]`` with a None default (defaults are not
# validated): BentoML 1.4 cannot make a file part of ``Path | None`` or ``Optional[Path]``
# (its file schema is unhashable inside a Union), so None means "this part was not sent".
OptionalFile = Path
OptionalFiles = list[Path]
KEPT_EVALUATIONS = 32  # confusion PNGs kept in memory for GET /evaluations/{id}/confusion.png

_provided_core: InferenceCore | None = None


def provide_core(core: InferenceCore | None) -> None:
    """The started core the next ``Classifier`` instance serves (and leaves running at its
    shutdown: whoever started it stops it); None = each instance starts its own."""
    global _provided_core
    _provided_core = core


@functools.cache
def _requests_counter() -> Any:
    """This front end's requests by endpoint, TTA use and outcome; one per process (an app
    started twice in one process must not register it twice). prometheus_client's registry:
    BentoML's /metrics reads it directly in one process, and under ``bentoml serve`` reads
    every worker's multiprocess files, where a metric's values go whatever its registry."""
    from prometheus_client import Counter

    return Counter("tta_serve_http_requests", "HTTP API requests by endpoint, TTA use and "
                   "outcome (ok or the error kind)", ["endpoint", "tta", "outcome"])


def _counts_outcome(endpoint: str) -> Callable[..., Callable[..., Awaitable[Any]]]:
    """Map a CoreError to its HTTP response and count the outcome: the wrapper every route uses."""

    def decorate(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def wrapper(self: Classifier, *args: Any, **kwargs: Any) -> Any:
            tta = tta_label(kwargs.get("tta"))
            try:
                result = await method(self, *args, **kwargs)
            except CoreError as e:
                self.requests.labels(endpoint, tta, e.kind).inc()
                return error_response(e)
            self.requests.labels(endpoint, tta, "ok").inc()
            return result

        return wrapper

    return decorate


def _json(body: BaseModel) -> Response:
    # pydantic's JSON (as BentoML's API responses): NaN metrics become null, not invalid JSON.
    return Response(body.model_dump_json(), media_type="application/json")


# BentoML 1.4 / uvicorn corrections (memory held per request, URL fetching and 500s on client
# mistakes, a traceback per 400, connections reset on SIGTERM): service.http.patches checks
# every target first and refuses to serve (UnsupportedDependency) when one is not as expected.
install()


async def _models_route(request: Request) -> Response:
    return await bentoml.get_current_service().list_models()


async def _model_route(request: Request) -> Response:
    return await bentoml.get_current_service().get_model(request.path_params["name"],
                                                         request.query_params.get("version"))


async def _confusion_route(request: Request) -> Response:
    return bentoml.get_current_service().confusion_png(request.path_params["evaluation_id"])


# The Open Inference Protocol's /v2 routes; the app carries its /v2 prefix (GET /v2 resolves).
oip_routes = build_oip_app(lambda: bentoml.get_current_service().core)

get_routes = Starlette(routes=[
    Route("/models", _models_route, methods=["GET"]),
    Route("/models/{name}", _model_route, methods=["GET"]),
    Route("/evaluations/{evaluation_id}/confusion.png", _confusion_route, methods=["GET"]),
    # /ui, / and /docs.json (service.http.web); the service's API spec exists once the class does
    *web_routes(lambda: Classifier.openapi_spec.asdict(), oip_routes),
])


@bentoml.asgi_app(oip_routes, path="/", name="oip_v2")
@bentoml.asgi_app(get_routes, path="/", name="get_routes")
@bentoml.service(name="tta_serve", workers=1, traffic={"timeout": 600})
class Classifier:
    """Image classification with optional test-time augmentation (TTA), over this process's core."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        self.owns_core = _provided_core is None
        if self.owns_core:  # under bentoml serve: this worker's settings come by environment
            logging.getLogger("service").setLevel(os.environ.get(LOG_LEVEL_ENV, "INFO").upper())
            self.core = InferenceCore.create(core_config_from_env()).start()
        else:
            self.core = _provided_core
        self.requests = _requests_counter()
        self.core_metrics = CollectorRegistry(auto_describe=False)
        self.core_metrics.register(self.core.stats.prometheus_collector())
        self.evaluations: OrderedDict[str, bytes] = OrderedDict()
        models = ", ".join(f"{m.name} v{m.version}" for m in self.core.list_models())
        log.info("HTTP service: serving %s from %s on %s", models,
                 Path(self.core.config.models_dir).resolve(), self.core.provider)

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Finish queued requests and release the model sessions, when this instance started
        the core (a provided one is stopped by its owner, after the other front ends)."""
        if self.owns_core:
            self.core.stop()

    def __is_ready__(self) -> bool:
        """/readyz: 503 unless the default model is being served."""
        return self.core.ready and not DRAIN.draining

    def __metrics__(self, content: str) -> str:
        """BentoML's /metrics, plus the core's batch sizes, forward times and outcomes."""
        from prometheus_client import generate_latest

        return content + generate_latest(self.core_metrics).decode("utf-8")

    # ---- POST routes

    @bentoml.api(route="/predict")
    @_counts_outcome("predict")
    async def predict(self, image: OptionalFile = None, image_base64: str | None = None,
                      tta: TTAParam = None, top_k: int = 0, model: str = "",
                      version: int = 0, min_confidence: float | None = None) -> PredictResponse:
        """Classify one image (multipart ``image`` or JSON ``image_base64``).

        ``tta``: true/"on", false/"off", "auto", unset = the model's default mode;
        ``min_confidence``: unset = the model's default, 0 = always answer (below it the answer
        says ``unsure``). ``top_k`` 0 = the server default (5); ``model`` "" / ``version`` 0 =
        the default model and its served version.
        """
        prediction = await self.core.predict(one_image(image, image_base64),
                                             model=model, version=version,
                                             tta=tta, top_k=top_k, min_confidence=min_confidence)
        return prediction_body(prediction)

    @bentoml.api(route="/predict_batch")
    @_counts_outcome("predict_batch")
    async def predict_batch(self, images: OptionalFiles = None,
                            images_base64: list[str] | None = None, tta: TTAParam = None,
                            top_k: int = 0, model: str = "", version: int = 0,
                            min_confidence: float | None = None) -> BatchResponse:
        """Classify several images on one model version: one result per image, in order.

        A bad image gets an error entry (with the status it would have had alone); the others
        are still answered.
        """
        data = several_images(images, images_base64)
        good = [d for d in data if isinstance(d, bytes)]
        answers = iter(await self.core.predict_batch(good, model=model,
                                                     version=version, tta=tta,
                                                     top_k=top_k,
                                                     min_confidence=min_confidence))
        results: list[Prediction | CoreError] = [
            next(answers) if isinstance(d, bytes) else d for d in data]
        return BatchResponse(results=[batch_item(r) for r in results])

    @bentoml.api(route="/evaluate")
    @_counts_outcome("evaluate")
    async def evaluate(self, images: OptionalFiles = None, labels: list[str] | None = None,
                       archive: OptionalFile = None, images_base64: list[str] | None = None,
                       tta: TTAParam = False, model: str = "", version: int = 0,
                       min_confused: int = 1) -> EvaluationResponse:
        """Evaluate labelled images -> accuracy, per-class P/R/F1, confusion matrix (+ PNG).

        Send either a zip ``archive`` of class folders (CLASS/image.png), or ``images`` (or
        ``images_base64``) with ``labels``, one class name per image (in multipart, one field
        holding a JSON list). The report is the gRPC Evaluate's, from the same core code.
        A multipart request carries at most 1000 files (Starlette's form limit; ``FormLimits``
        answers more with a 413): send larger sets as a zip.
        """
        sources = [x for x in (images, images_base64, archive) if x is not None]
        if len(sources) != 1:
            raise InvalidRequest("send exactly one of: a zip 'archive' of class folders, "
                                 "'images' + 'labels', or 'images_base64' + 'labels'")
        if archive is not None:
            items = archive_items(archive, self.core.config.max_image_bytes)
        else:
            items = labelled_items(images, images_base64, labels)
        result = await self.core.evaluate(items, model=model, version=version,
                                          tta=tta, min_confused=min_confused)
        evaluation_id = uuid.uuid4().hex
        self.evaluations[evaluation_id] = result.png
        while len(self.evaluations) > KEPT_EVALUATIONS:
            self.evaluations.popitem(last=False)
        return evaluation_body(result, evaluation_id,
                               f"/evaluations/{evaluation_id}/confusion.png")

    # ---- GET routes (served by the mounted app below)

    @_counts_outcome("models")
    async def list_models(self) -> Response:
        body = ListModelsResponse(
            default_model=self.core.config.default_model,
            provider=provider_body(self.core.provider),
            models=[model_info_body(info) for info in self.core.list_models()])
        return _json(body)

    @_counts_outcome("model")
    async def get_model(self, name: str, version: str | None) -> Response:
        """``?version=`` absent or 0 = the served version (as ``version`` 0 in POST /predict)."""
        if version is not None and not version.isdigit():
            raise InvalidRequest(f"version must be a whole number >= 0, got {version!r}")
        info = self.core.get_model(name, int(version or 0))
        return _json(model_info_body(info))

    def confusion_png(self, evaluation_id: str) -> Response:
        png = self.evaluations.get(evaluation_id)
        if png is None:
            return error_response(EvaluationNotFound(
                f"no evaluation {evaluation_id!r}; this server keeps the last {KEPT_EVALUATIONS}"))
        return Response(png, media_type="image/png")


Classifier.add_asgi_middleware(FormLimits)
Classifier.add_asgi_middleware(HttpDrain)  # SIGTERM: drain first (service.http.drain)
Classifier.add_asgi_middleware(BearerAuth)  # bearer tokens and scopes (service.security)
Classifier.add_asgi_middleware(LoadShedding)  # refusals before the body (http.shedding)
Classifier.add_asgi_middleware(RequestDeadline)  # deadlines, departed clients (http.deadlines)
