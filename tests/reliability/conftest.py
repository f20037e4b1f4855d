"""Fixtures of the reliability suite: real ``tta-serve`` processes on 127.0.0.1 over a private
copy of the bundled model repository (models/digits), probed with real digit images.

The probes are ``bench.reliability``'s (the long forms live there and print figures); these
are their short forms; the server is ``bench.serve_process``'s, as every benchmark's.
``served`` is one ``tta-serve all`` (gRPC + HTTP) for a whole module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.reliability.inputs import digit_pngs, model_repository
from bench.serve_process import ServeProcess


@pytest.fixture(scope="session")
def images() -> list[bytes]:
    return digit_pngs(64)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """``tta-serve all`` for the module; a test may stop it (the module's last one does)."""
    folder: Path = tmp_path_factory.mktemp("served")
    server = ServeProcess("all", model_repository(folder), folder)
    try:
        yield server.wait_ready()
    finally:
        if server.process.poll() is None:
            server.terminate()
        server.kill()
