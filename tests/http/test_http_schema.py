"""The one mapping of the core's typed errors to HTTP statuses, including those the servers
rarely produce in tests (overloaded, model unavailable)."""

from __future__ import annotations

import json

import pytest

from service.core import (
    CoreError,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
    Overloaded,
)
from service.http_schema import error_response


@pytest.mark.parametrize("error, status", [
    (InvalidImage("bad"), 400), (InvalidRequest("bad"), 400), (ImageTooLarge("big"), 413),
    (ModelNotFound("who"), 404), (Overloaded("busy"), 503), (ModelUnavailable("later"), 503),
    (CoreError("unmapped"), 500),
])
def test_core_errors_map_to_statuses(error: CoreError, status: int):
    response = error_response(error)
    assert response.status_code == status
    assert json.loads(response.body) == {"error": str(error), "kind": error.kind}
    assert ("retry-after" in response.headers) == (status == 503)
