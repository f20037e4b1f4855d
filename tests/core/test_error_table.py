"""The core's one error table reaches every wire: gRPC, HTTP, the Open Inference Protocol and the
client's exceptions read a core error's ``status``, so a new error needs only that one line."""

from __future__ import annotations

import grpc
import pytest

from service.client.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServiceError,
    TooLarge,
    Unauthenticated,
    Unavailable,
    error_for,
    error_for_http,
)
from service.core.errors import (
    CoreError,
    DeviceUnavailable,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
    Overloaded,
    Status,
)
from service.core.errors import PermissionDenied as Forbidden
from service.core.errors import Unauthenticated as NoToken
from service.grpc.messages import status_code as grpc_status
from service.http.schema import status_code as http_status
from service.oip.messages import from_core_error

TABLE = [  # docs/architecture.md and service/core/errors.py say the same
    (InvalidImage, grpc.StatusCode.INVALID_ARGUMENT, 400, InvalidArgument),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT, 400, InvalidArgument),
    (ImageTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED, 413, TooLarge),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND, 404, NotFound),
    (Overloaded, grpc.StatusCode.UNAVAILABLE, 503, Unavailable),
    (ModelUnavailable, grpc.StatusCode.UNAVAILABLE, 503, Unavailable),
    (DeviceUnavailable, grpc.StatusCode.INTERNAL, 500, ServiceError),
    (CoreError, grpc.StatusCode.INTERNAL, 500, ServiceError),
    (NoToken, grpc.StatusCode.UNAUTHENTICATED, 401, Unauthenticated),
    (Forbidden, grpc.StatusCode.PERMISSION_DENIED, 403, PermissionDenied),
]


@pytest.mark.parametrize("kind, grpc_code, http_code, client_error", TABLE)
def test_every_wire_and_the_client_read_the_same_status(kind, grpc_code, http_code,
                                                        client_error):
    error = kind("what went wrong")
    assert grpc_status(error) == grpc_code
    assert http_status(error) == http_code
    oip = from_core_error(error, "image 2 of 4")
    assert (oip.status.name, oip.status.http_status) == (grpc_code.name, http_code)
    assert oip.message == "image 2 of 4: what went wrong"
    # the client's exception, from the gRPC code and from the HTTP status alike
    assert type(error_for(grpc_code, "m")) is client_error
    assert type(error_for(error.status, "m")) is client_error
    if client_error is not ServiceError:
        assert type(error_for_http(http_code, "m")) is client_error


def test_a_new_error_reaches_every_wire_by_its_status_alone():
    class NotSupported(CoreError):
        kind = "not_supported"
        status = Status.UNIMPLEMENTED

    error = NotSupported("this model cannot do that")
    assert grpc_status(error) == grpc.StatusCode.UNIMPLEMENTED
    assert http_status(error) == 501
    assert from_core_error(error).status is Status.UNIMPLEMENTED
    assert str(error_for(grpc.StatusCode.UNIMPLEMENTED, str(error))) == (
        "UNIMPLEMENTED: this model cannot do that")


def test_the_client_names_statuses_outside_the_table():
    assert str(error_for(grpc.StatusCode.DEADLINE_EXCEEDED, "slow")) == "DEADLINE_EXCEEDED: slow"
    assert str(error_for_http(422, "odd")) == "UNKNOWN: odd"
