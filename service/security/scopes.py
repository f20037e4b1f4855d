"""What each call needs: no token (health, the page), a token with ``infer``, or with ``admin``.

One table for both wires, so that a call and its HTTP twin (Predict and POST /predict,
ModelInfer and POST /v2/models/M/infer) can never disagree. ``infer`` covers inference and the
metadata a client needs for it; ``admin`` covers what costs a lot or changes the server
(Evaluate, loading and unloading models), and what tells about its traffic (statistics, the
repository index). A call not listed needs ``admin``: a new route is closed until it is placed.

Open: health for probes (``/livez``, ``/readyz``, ``grpc.health.v1``, and the Open Inference
Protocol's ``ServerLive``/``ServerReady``/``ModelReady`` and ``/v2/health/*``, which KServe
probes), and the browser page and API description (``/``, ``/docs.json``, ``/ui/``: static files,
the page asks for the token itself; ``/static_content/``: Swagger UI's files as BentoML ships
them). ``/metrics`` is open unless ``--metrics-auth admin``.
"""

from __future__ import annotations

import re

from service.security.tokens import ADMIN, INFER

OPEN = None  # no token needed

_CLASSIFIER = "/tta_serve.v1.Classifier/"
_OIP = "/inference.GRPCInferenceService/"
GRPC_METHODS: dict[str, str | None] = {
    _CLASSIFIER + "Predict": INFER,
    _CLASSIFIER + "PredictStream": INFER,
    _CLASSIFIER + "ListModels": INFER,
    _CLASSIFIER + "GetModel": INFER,
    _CLASSIFIER + "Evaluate": ADMIN,
    _OIP + "ServerLive": OPEN,
    _OIP + "ServerReady": OPEN,
    _OIP + "ModelReady": OPEN,
    _OIP + "ServerMetadata": INFER,
    _OIP + "ModelMetadata": INFER,
    _OIP + "ModelConfig": INFER,
    _OIP + "ModelInfer": INFER,
    _OIP + "ModelStatistics": ADMIN,
    _OIP + "RepositoryIndex": ADMIN,
    _OIP + "RepositoryModelLoad": ADMIN,
    _OIP + "RepositoryModelUnload": ADMIN,
}
GRPC_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
# Server reflection describes the API (what grpcurl needs to call it): as the metadata calls.
GRPC_INFER_PREFIXES = ("/grpc.reflection.",)

_MODEL = r"/v2/models/(?!stats$)[^/]+(?:/versions/[^/]+)?"
HTTP_ROUTES: list[tuple[re.Pattern[str], str | None]] = [(re.compile(p), need) for p, need in (
    (r"/livez|/readyz|/healthz|/v2/health/live|/v2/health/ready", OPEN),
    (_MODEL + r"/ready", OPEN),
    (r"/|/docs\.json|/ui|/ui/.*|/static_content/.*", OPEN),
    (r"/predict|/predict_batch|/models|/models/[^/]+", INFER),
    (r"/v2|" + _MODEL + r"(?:/infer|/config)?", INFER),
    (r"/evaluate|/evaluations/.*|/v2/models/stats|" + _MODEL + r"/stats", ADMIN),
    (r"/v2/repository/.*", ADMIN),
)]


def grpc_scope(method: str) -> str | None:
    """The scope a gRPC method (``/package.Service/Method``) needs; OPEN = none."""
    if method in GRPC_METHODS:
        return GRPC_METHODS[method]
    if method.startswith(GRPC_OPEN_PREFIXES):
        return OPEN
    if method.startswith(GRPC_INFER_PREFIXES):
        return INFER
    return ADMIN


def http_scope(path: str, *, metrics_open: bool = True) -> str | None:
    """The scope an HTTP path needs; OPEN = none. ``/metrics`` follows ``metrics_open``."""
    if path == "/metrics":
        return OPEN if metrics_open else ADMIN
    if any(part in (".", "..") for part in path.split("/")):
        return ADMIN  # routes never need dot segments; an open prefix must not lead elsewhere
    for pattern, need in HTTP_ROUTES:
        if pattern.fullmatch(path):
            return need
    return ADMIN
