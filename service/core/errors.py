"""Typed errors of the inference core and the one table of their wire statuses.

Every error is a ``CoreError`` whose message says what was wrong and what to do, so a front end
can pass ``str(error)`` to the client unchanged. ``kind`` is a stable short name for metrics
labels and JSON error bodies; ``status`` is the outcome on every wire (a ``Status``: its name is
the gRPC status code, its value the HTTP status), so a new error reaches gRPC, HTTP and the Open
Inference Protocol by setting ``status`` here. The table, as the classes below set it:

============================  ==================  ====
error                         gRPC                HTTP
============================  ==================  ====
InvalidImage                  INVALID_ARGUMENT    400
InvalidRequest                INVALID_ARGUMENT    400
ImageTooLarge                 RESOURCE_EXHAUSTED  413
TooManyParts                  RESOURCE_EXHAUSTED  413 (HTTP multipart only)
ModelNotFound                 NOT_FOUND           404
EvaluationNotFound            NOT_FOUND           404 (HTTP confusion PNG only)
Overloaded                    UNAVAILABLE         503 (+ Retry-After)
ModelUnavailable              UNAVAILABLE         503
ShuttingDown                  UNAVAILABLE         503 (+ Retry-After)
DeviceUnavailable             INTERNAL            500 (start-up only: refuse to start)
UnsupportedDependency         INTERNAL            500 (start-up only: refuse to start)
Unauthenticated               UNAUTHENTICATED     401 (+ WWW-Authenticate: Bearer)
PermissionDenied              PERMISSION_DENIED   403 (+ WWW-Authenticate: insufficient_scope)
============================  ==================  ====

Some are raised by a front end, not the core (``ShuttingDown`` by either drain, the two marked
HTTP by the HTTP front end, ``Unauthenticated`` and ``PermissionDenied`` by the token check in
front of the core, ``service.security``): they are here so that every refusal a client can get
has its status and kind in this one table.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Status(enum.Enum):
    """A request's outcome on the wire; the member name is the gRPC status code, the value the
    HTTP status. Wire-free on purpose: the core names outcomes, each front end spells them."""

    INVALID_ARGUMENT = 400
    UNAUTHENTICATED = 401
    PERMISSION_DENIED = 403
    NOT_FOUND = 404
    RESOURCE_EXHAUSTED = 413
    INTERNAL = 500
    UNIMPLEMENTED = 501
    UNAVAILABLE = 503

    @property
    def http_status(self) -> int:
        return self.value


class CoreError(Exception):
    """Base class of every error the core raises on purpose."""

    kind = "error"
    status: ClassVar[Status] = Status.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImage(CoreError):
    """The bytes are empty or not a decodable image."""

    kind = "invalid_image"
    status = Status.INVALID_ARGUMENT


class ImageTooLarge(CoreError):
    """The image is over the byte or pixel limit; the message names the limit and its flag."""

    kind = "image_too_large"
    status = Status.RESOURCE_EXHAUSTED


class InvalidRequest(CoreError):
    """An option is out of range (e.g. top_k < 0) or a label is not one of the model's classes."""

    kind = "invalid_request"
    status = Status.INVALID_ARGUMENT


class ModelNotFound(CoreError):
    """No such model, or that version is not served."""

    kind = "model_not_found"
    status = Status.NOT_FOUND


class Overloaded(CoreError):
    """The bounded request queue is full; the client should retry later."""

    kind = "overloaded"
    status = Status.UNAVAILABLE


class ModelUnavailable(CoreError):
    """The model exists but cannot serve now (failed to load, or the core is stopping)."""

    kind = "model_unavailable"
    status = Status.UNAVAILABLE


class ShuttingDown(CoreError):
    """The server is draining (SIGTERM): new requests are refused; retrying elsewhere is safe."""

    kind = "shutting_down"
    status = Status.UNAVAILABLE
    MESSAGE = "the server is shutting down; retry on another replica"

    def __init__(self, message: str = MESSAGE) -> None:
        super().__init__(message)


class TooManyParts(CoreError):
    """A multipart body with more files or fields than the form parser takes."""

    kind = "too_many_parts"
    status = Status.RESOURCE_EXHAUSTED


class EvaluationNotFound(CoreError):
    """The confusion PNG of an evaluation the server no longer keeps (or never made)."""

    kind = "not_found"
    status = Status.NOT_FOUND


class DeviceUnavailable(CoreError):
    """The requested execution device (``--device cuda``) cannot be used on this machine."""

    kind = "device_unavailable"


class UnsupportedDependency(CoreError):
    """An installed package is not what a front end was checked against (a patched target
    renamed, a version out of range: ``service.http.patches``); the server refuses to start."""

    kind = "unsupported_dependency"


# Raised before anything listens, never answered to a request: not in the API's error lists.
STARTUP_ONLY = (DeviceUnavailable, UnsupportedDependency)


class Unauthenticated(CoreError):
    """No bearer token, another scheme, or a token the server does not know (never echoed)."""

    kind = "unauthenticated"
    status = Status.UNAUTHENTICATED


class PermissionDenied(CoreError):
    """A valid token without the scope the call needs (``infer`` or ``admin``)."""

    kind = "permission_denied"
    status = Status.PERMISSION_DENIED
