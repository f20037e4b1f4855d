"""SIGTERM under load: every request sent is answered or refused (UNAVAILABLE / 503 /
connection refused: safe to retry), none lost (CANCELLED, a reset connection, a 5xx).

16 clients send Predict after Predict; each stops at its first refusal. Before the drains
(``GrpcServer.stop``, ``service.http.drain``: one ``service.core.drain.Drain`` each) gRPC
cancelled 10-16 accepted calls per SIGTERM and the HTTP worker reset ~30 connections.
``tta-serve all`` is covered by test_served.py's last test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.reliability.inputs import model_repository
from bench.reliability.sigterm import sigterm_under_load
from bench.serve_process import ServeProcess


@pytest.mark.parametrize("kind", ["grpc", "http"])
def test_sigterm_under_load_loses_no_request(kind: str, tmp_path: Path):
    with ServeProcess(kind, model_repository(tmp_path), tmp_path) as server:
        result = sigterm_under_load(server.wait_ready(), clients=16, load_s=1.5)
        log = server.log
    assert result.lost == 0, (result.line(), result.lost_examples, log[-3000:])
    assert result.answered > 16 and result.refused >= 1, result.line()
    assert result.exit_code == 0, log[-3000:]
