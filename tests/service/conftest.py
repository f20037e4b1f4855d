"""Fixtures for the service tests (the building blocks live in service_testkit.py).

``digits_model`` is a real digits classifier trained in seconds for the session and published
into a temporary model repository; ``server`` is a real gRPC server on 127.0.0.1 over it. Tests
that publish versions work on ``repo_copy``, a private copy of that repository.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_testkit import (
    FixtureModel,
    RunningServer,
    core_config,
)


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
