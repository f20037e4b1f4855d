"""Typed errors of the inference core; each front end maps them to its own status codes.

Every error is a ``CoreError`` whose message says what was wrong and what to do, so a front end
can pass ``str(error)`` to the client unchanged. ``kind`` is a stable short name for metrics
labels and JSON error bodies. Suggested mappings (what the gRPC server does):

============================  ==================  ====
error                         gRPC                HTTP
============================  ==================  ====
InvalidImage                  INVALID_ARGUMENT    400
InvalidRequest                INVALID_ARGUMENT    400
ImageTooLarge                 RESOURCE_EXHAUSTED  413
ModelNotFound                 NOT_FOUND           404
Overloaded                    UNAVAILABLE         503 (+ Retry-After)
ModelUnavailable              UNAVAILABLE         503
DeviceUnavailable             (start-up only: refuse to start)
============================  ==================  ====
"""

from __future__ import annotations


class CoreError(Exception):
    """Base class of every error the core raises on purpose."""

    kind = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImage(CoreError):
    """The bytes are empty or not a decodable image."""

    kind = "invalid_image"


class ImageTooLarge(CoreError):
    """The image is over the byte or pixel limit; the message names the limit and its flag."""

    kind = "image_too_large"


class InvalidRequest(CoreError):
    """An option is out of range (e.g. top_k < 0) or a label is not one of the model's classes."""

    kind = "invalid_request"


class ModelNotFound(CoreError):
    """No such model, or that version is not served."""

    kind = "model_not_found"


class Overloaded(CoreError):
    """The bounded request queue is full; the client should retry later."""

    kind = "overloaded"


class ModelUnavailable(CoreError):
    """The model exists but cannot serve now (failed to load, or the core is stopping)."""

    kind = "model_unavailable"


class DeviceUnavailable(CoreError):
    """The requested execution device (``--device cuda``) cannot be used on this machine."""

    kind = "device_unavailable"
