"""The client's exceptions: one per wire status the server answers with, read from the same table.

``service.core.errors.Status`` is the server's error table (a core error -> its gRPC code and
HTTP status); ``error_for`` / ``error_for_http`` read it backwards, so the gRPC client, the HTTP
backend of ``tta-serve predict`` and the in-process one raise the same exception for the same
refusal.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

from service.core.errors import Status


class ClientError(Exception):
    """Base of every error this client raises or returns in an image's place."""

    code = "unknown"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnreadableImage(ClientError):
    """The image file could not be read here; it was never sent."""

    code = "unreadable"


class ServiceError(ClientError):
    """The server refused the request; ``message`` is the server's own explanation."""

    code = "internal"
    status: ClassVar[Status | None] = None  # the wire status this class stands for


class InvalidArgument(ServiceError):
    """Not a decodable image, a bad option, or a label that is not one of the model's classes."""

    code = "invalid_argument"
    status = Status.INVALID_ARGUMENT


class TooLarge(ServiceError):
    """The image is over the server's byte or pixel limit."""

    code = "resource_exhausted"
    status = Status.RESOURCE_EXHAUSTED


class NotFound(ServiceError):
    """No such model, or that version is not served."""

    code = "not_found"
    status = Status.NOT_FOUND


class Unavailable(ServiceError):
    """Overloaded, still starting, or unreachable; already retried with backoff."""

    code = "unavailable"
    status = Status.UNAVAILABLE


class Unauthenticated(ServiceError):
    """No token was sent, or the server does not know it (``Client(token=...)``;
    ``tta-serve predict --token-file`` or $TTA_SERVE_CLIENT_TOKEN)."""

    code = "unauthenticated"
    status = Status.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    """The token is valid but lacks the scope the call needs (``infer`` or ``admin``)."""

    code = "permission_denied"
    status = Status.PERMISSION_DENIED


# The server's error table (service.core.errors.Status) read backwards: one class per status.
_ERRORS: dict[Status, type[ServiceError]] = {
    kind.status: kind for kind in (InvalidArgument, TooLarge, NotFound, Unavailable,
                                   Unauthenticated, PermissionDenied)}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def error_for(code: grpc.StatusCode | Status, message: str) -> ServiceError:
    """The exception for a gRPC status; other codes (INTERNAL, DEADLINE_EXCEEDED ...) name it."""
    status = code if isinstance(code, Status) else Status.__members__.get(code.name)
    kind = _ERRORS.get(status) if status is not None else None
    if kind is None:
        return ServiceError(f"{code.name}: {message}")
    return kind(message)


def error_for_http(status: int, message: str) -> ServiceError:
    """The exception for an HTTP status; other statuses are ``UNKNOWN: message``."""
    kind = next((k for s, k in _ERRORS.items() if s.http_status == status), None)
    if kind is None:
        return ServiceError(f"UNKNOWN: {message}")
    return kind(message)


def error_for_number(code: int, message: str) -> ServiceError:
    """The exception for a numeric gRPC status (a PredictStream item's ``status.code``)."""
    return error_for(_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN), message)


def error_from_rpc(error: grpc.RpcError) -> ServiceError:
    """The exception for a failed call."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = error.details() if callable(getattr(error, "details", None)) else str(error)
    return error_for(code, details or code.name)
