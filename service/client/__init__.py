"""The Python client of tta-serve's gRPC API: ``from service.client import Client``.

``client`` holds ``Client``; its typed results (``results``), exceptions (``errors``) and file
helpers (``files``) have modules of their own, shared with ``tta-serve predict``. Nothing here
loads the inference core: the client needs only ``service.core.errors`` (the status names) and
the shared modules.
"""

from service.client.client import (
    ClassScore,
    Client,
    ClientError,
    Credentials,
    Evaluation,
    ExecutionProvider,
    InvalidArgument,
    ModelInfo,
    NotFound,
    PermissionDenied,
    Prediction,
    ServiceError,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UnreadableImage,
    image_files,
    labelled_files,
)

__all__ = [
    "ClassScore",
    "Client",
    "ClientError",
    "Credentials",
    "Evaluation",
    "ExecutionProvider",
    "InvalidArgument",
    "ModelInfo",
    "NotFound",
    "PermissionDenied",
    "Prediction",
    "ServiceError",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "UnreadableImage",
    "image_files",
    "labelled_files",
]
