"""The core's one error table reaches every wire: gRPC, HTTP, the Open Inference Protocol and the
client's exceptions read a core error's ``status``, so a new error needs only that one line."""

from __future__ import annotations

import re
from pathlib import Path

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
from service.core import errors
from service.core.drain import Drain
from service.core.errors import (
    CoreError,
    DeviceUnavailable,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
    Overloaded,
    ShuttingDown,
    Status,
    TooManyParts,
    UnsupportedDependency,
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
    (TooManyParts, grpc.StatusCode.RESOURCE_EXHAUSTED, 413, TooLarge),
    (ShuttingDown, grpc.StatusCode.UNAVAILABLE, 503, Unavailable),
    (DeviceUnavailable, grpc.StatusCode.INTERNAL, 500, ServiceError),
    (UnsupportedDependency, grpc.StatusCode.INTERNAL, 500, ServiceError),
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


# ---- the written copies of the table: docs, errors.py's docstring, the OpenAPI document

ROOT = Path(__file__).resolve().parents[2]


def _table_classes() -> list[type[CoreError]]:
    """Every error class the one table defines (errors.py's own, not tests' subclasses)."""
    return [v for v in vars(errors).values()
            if isinstance(v, type) and issubclass(v, CoreError) and v is not CoreError]


def _rows(errors_: list[type[CoreError]]) -> set[tuple[str, str, str, int]]:
    return {(e.__name__, e.kind, e.status.name, e.status.http_status) for e in errors_}


def test_the_docs_table_is_the_table():
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = {(m[1], m[2], m[3], int(m[4])) for m in re.finditer(
        r"^\| `(\w+)` \| `(\w+)` \| `(\w+)` \| (\d{3}) \|$", text, re.M)}
    assert rows == _rows(_table_classes())


def test_the_docstring_table_is_the_table():
    rows = {(m[1], m[2], int(m[3])) for m in re.finditer(
        r"^(\w+) +([A-Z_]+) +(\d{3})\b", errors.__doc__, re.M)}
    assert rows == {(name, code, http) for name, _, code, http in _rows(_table_classes())}


def test_openapi_lists_every_error_a_request_can_get():
    from service.http import openapi

    answered = [e for e in _table_classes() if e not in errors.STARTUP_ONLY]
    listed: dict[int, set[str]] = {}
    for m in re.finditer(r"^\| (\d{3}) \| ([^|]+) \|", openapi.DESCRIPTION, re.M):
        listed[int(m[1])] = set(re.findall(r"`(\w+)`", m[2]))
    by_status: dict[int, set[str]] = {}
    for e in answered:
        by_status.setdefault(e.status.http_status, set()).add(e.kind)
    assert listed == by_status
    assert set(openapi.ERRORS) == set(by_status)


def test_the_drain_refuses_with_the_tables_shutting_down():
    drain = Drain(quiet_s=0.1)
    assert drain.arrived() is None
    drain.begin()
    refusal = drain.arrived()
    assert isinstance(refusal, ShuttingDown)
    assert (refusal.kind, grpc_status(refusal), http_status(refusal)) == (
        "shutting_down", grpc.StatusCode.UNAVAILABLE, 503)
    assert str(refusal) == "the server is shutting down; retry on another replica"
