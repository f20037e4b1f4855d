"""Fixtures shared by the serving tests (tests/core, grpc, client, process, predict, http, oip):
one real digits model for the whole session, trained in seconds and published into a temporary
model repository; ``server``, a real gRPC server on 127.0.0.1 over it (one per test module);
``repo_copy``, a private copy of that repository for tests that publish versions.

``http_server`` is one ``tta-serve http`` process for the whole session -- BentoML takes seconds
to start -- configured as the gRPC servers are (``core_config``), with its models folder given the
way a deployment would, by $TTA_SERVE_MODELS_DIR. ``grpc_server`` is a real gRPC server over the
same repository for the session, to compare answers with. Each server process gets its own
BENTOML_HOME: BentoML empties ``$BENTOML_HOME/prometheus_multiproc_dir`` when it starts, which
would wipe the metrics of any other BentoML server running on this machine.

The building blocks live in tests/support/service_testkit.py; pyproject's pytest ``pythonpath``
makes the testkits importable from every test folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_testkit import HttpServer, ServerProcess, cli_flags, free_port
from service_testkit import (
    Digits,
    FixtureModel,
    RunningServer,
    build_fixture_model,
    core_config,
    load_digits_pngs,
)


@pytest.fixture(scope="session")
def digits() -> Digits:
    return load_digits_pngs()


@pytest.fixture(scope="session")
def digits_model(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> FixtureModel:
    return build_fixture_model(digits, tmp_path_factory.mktemp("digits-model"))


@pytest.fixture
def repo_copy(digits_model: FixtureModel, tmp_path: Path) -> Path:
    """A private copy of the fixture repository, for tests that publish versions."""
    dest = tmp_path / "models"
    shutil.copytree(digits_model.repo_root, dest)
    return dest


@pytest.fixture(scope="module")
def server(digits_model: FixtureModel) -> Iterator[RunningServer]:
    """One shared server per test module on the (unchanging) fixture repository."""
    running = RunningServer(core_config(digits_model.repo_root))
    yield running
    running.close()


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
def grpc_server(digits_model: FixtureModel) -> Iterator[RunningServer]:
    """A real gRPC server over the same repository and settings, to compare answers with."""
    running = RunningServer(core_config(digits_model.repo_root))
    yield running
    running.close()
