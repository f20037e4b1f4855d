"""The one mapping of the core's typed errors to HTTP statuses, including those the servers
rarely produce in tests (overloaded, model unavailable); the multipart part counter."""

from __future__ import annotations

import inspect
import json

import httpx
import pytest
from starlette.requests import Request

from service.core import (
    CoreError,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
    Overloaded,
)
from service.http.form_limits import MAX_FORM_FIELDS, MAX_FORM_FILES, FormPartCounter
from service.http.schema import error_response


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


def test_form_part_counter_counts_files_and_fields_as_starlette_does():
    """A streamed multipart body, in small chunks: parts with a filename are files, the others
    (even one named "filename") fields; the limits are Starlette's form defaults."""
    defaults = inspect.signature(Request.form).parameters
    assert (MAX_FORM_FILES, MAX_FORM_FIELDS) == (defaults["max_files"].default,
                                                 defaults["max_fields"].default) == (1000, 1000)
    request = httpx.Request("POST", "http://x/evaluate",
                            files=[("images", (f"{i}.png", b"\x89PNG" * 50, "image/png"))
                                   for i in range(5)],
                            data={"labels": '["0"]', "filename": "not a file", "tta": "true"})
    body = request.read()
    boundary = request.headers["content-type"].split("boundary=")[1].encode()
    counter = FormPartCounter(boundary, max_files=5, max_fields=3)
    for i in range(0, len(body), 7):
        counter.feed(body[i:i + 7])
    assert (counter.files, counter.fields, counter.exceeded, counter.broken) == (5, 3, False,
                                                                                 False)
    over = FormPartCounter(boundary, max_files=4, max_fields=3)
    over.feed(body)
    assert over.exceeded
    garbage = FormPartCounter(b"other-boundary")
    garbage.feed(b"no multipart here")
    assert not garbage.exceeded
