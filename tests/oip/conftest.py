"""Fixtures for the Open Inference Protocol tests (building blocks: tests/support/oip_testkit).

Session-scoped: a tiny two-version model repository served over gRPC (the real GrpcServer, in
this process) and HTTP (a real ``tta-serve http`` process: BentoML with the ``/v2`` routes
mounted), and one tritonclient process per protocol. ``triton`` runs a test over both wires.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from oip_testkit import (
    RunningServers,
    TritonClient,
    make_image,
    publish_versions,
)


@pytest.fixture(scope="session")
def images() -> list[bytes]:
    return [make_image(1), make_image(2, "JPEG"), make_image(3)]


@pytest.fixture(scope="session")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServers]:
    servers = RunningServers(publish_versions(tmp_path_factory.mktemp("oip-models")),
                             tmp_path_factory.mktemp("oip-http-server"))
    yield servers
    code = servers.close()
    assert code == 0, servers.http.log


@pytest.fixture(scope="session")
def grpc_client(serving: RunningServers) -> Iterator[TritonClient]:
    client = TritonClient("grpc", serving.grpc_address)
    yield client
    client.close()


@pytest.fixture(scope="session")
def http_client(serving: RunningServers) -> Iterator[TritonClient]:
    client = TritonClient("http", serving.http_address)
    yield client
    client.close()


@pytest.fixture(params=["grpc", "http"])
def triton(request: pytest.FixtureRequest) -> TritonClient:
    """The same test over tritonclient.grpc and tritonclient.http."""
    return request.getfixturevalue(f"{request.param}_client")
