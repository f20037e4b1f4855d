"""Fixtures of the HTTP tests: ``client``, an HTTP client of the session's ``http_server``
(tests/conftest.py, shared with tests/predict)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from http_testkit import HttpServer


@pytest.fixture(scope="session")
def client(http_server: HttpServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=http_server.base_url, timeout=120) as c:
        yield c
