"""Fixtures of the HTTP tests: real server processes over the service tests' fixture model.

The digits model and its images come from ``tests/service/service_testkit.py`` (a conv net
trained in seconds on scikit-learn's real handwritten digits). ``http_server`` is one
``tta-serve http`` process for the whole session -- BentoML takes seconds to start -- configured
as the service tests' gRPC servers are (``core_config``), with its models folder given the way a
deployment would, by $TTA_SERVE_MODELS_DIR. ``grpc_server`` is a real gRPC server over the same
repository, to compare answers with. Each server process gets its own BENTOML_HOME: BentoML
empties ``$BENTOML_HOME/prometheus_multiproc_dir`` when it starts, which would wipe the metrics
of any other BentoML server running on this machine.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from http_testkit import HttpServer, ServerProcess, cli_flags, free_port
from service_testkit import (
    FixtureModel,
    RunningServer,
    core_config,
)


@pytest.fixture(scope="session")
def http_server(digits_model: FixtureModel,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    """``tta-serve http`` on 127.0.0.1:<free port>; must exit 0 on SIGTERM at the end."""
    port = free_port()
    config = core_config(digits_model.repo_root)
    process = ServerProcess(
        ["http", "--host", "127.0.0.1", "--port", str(port), "--grace-s", "5",
         *cli_flags(config, models_dir=False)],
        tmp_path_factory.mktemp("http-server"),
        env={"TTA_SERVE_MODELS_DIR": str(digits_model.repo_root)})
    base_url = f"http://127.0.0.1:{port}"
    try:
        process.wait_http_ready(base_url)
        yield HttpServer(process, base_url)
    finally:
        code = process.terminate()
    assert code == 0, process.log


@pytest.fixture(scope="session")
def client(http_server: HttpServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=http_server.base_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def grpc_server(digits_model: FixtureModel) -> Iterator[RunningServer]:
    """A real gRPC server over the same repository and settings, to compare answers with."""
    running = RunningServer(core_config(digits_model.repo_root))
    yield running
    running.close()
