"""NVIDIA's perf_analyzer, unchanged, against our gRPC and HTTP servers: a short pass each.

perf_analyzer reads the model's metadata and configuration, sends requests built from them and
reads the server's statistics before and after each window; a run completes only if all of that
works. bench/perf_analyzer.sh installs it (cached; apt's libb64-0d, the CUDA runtime wheel's
libcudart). Set TTA_SERVE_SKIP_PERF_ANALYZER=1 to skip this file on a machine without apt.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from oip_testkit import MODEL, SERVED_VERSION, RunningServers, TritonClient, make_image

REPO_ROOT = Path(__file__).resolve().parents[2]

if os.environ.get("TTA_SERVE_SKIP_PERF_ANALYZER") == "1":
    pytest.skip("TTA_SERVE_SKIP_PERF_ANALYZER=1", allow_module_level=True)


def _bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_perf_analyzer",
                                                  REPO_ROOT / "bench" / "perf_analyzer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _bench_module()


@pytest.fixture(scope="module")
def perf_analyzer() -> str:
    done = subprocess.run(["bash", str(REPO_ROOT / "bench" / "perf_analyzer.sh"), "install"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"installing perf_analyzer failed:\n{done.stderr[-3000:]}"
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def inputs(serving: RunningServers, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    images = [make_image(seed) for seed in range(4)] + [make_image(9, "JPEG")]
    return bench.write_inputs(tmp_path_factory.mktemp("perf-inputs"),
                              serving.core.config.models_dir, MODEL, {"bytes": images})


def _served(client: TritonClient) -> tuple[int, int]:
    """(successful, failed) requests in the server's statistics."""
    answer = client.call("get_inference_statistics", name=MODEL)
    (stats,) = [s for s in answer["model_stats"] if s["version"] == str(SERVED_VERSION)]
    counts = stats.get("inference_stats", {})
    return (int(counts.get("success", {}).get("count", 0)),
            int(counts.get("fail", {}).get("count", 0)))


@pytest.mark.parametrize(("protocol", "kind"), [("grpc", "bytes"), ("http", "bytes"),
                                                ("grpc", "fp32")])
def test_perf_analyzer_completes_without_errors(
        perf_analyzer: str, serving: RunningServers, inputs: dict[str, Path],
        request: pytest.FixtureRequest, protocol: str, kind: str) -> None:
    client: TritonClient = request.getfixturevalue(f"{protocol}_client")
    url = serving.grpc_address if protocol == "grpc" else serving.http_address
    before = _served(client)
    result = bench.run(perf_analyzer, model=MODEL, protocol=protocol, url=url,
                       input_file=inputs[kind], concurrency=2, request_count=300,
                       timeout_s=120)
    assert result.returncode == 0, result.output[-3000:]
    assert result.errors == [], result.output[-3000:]
    (row,) = result.rows
    assert row["concurrency"] == 2 and row["throughput"] > 0
    assert 0 < row["p50_us"] <= row["p99_us"]
    # What it measured, the server served: every request it counted succeeded on the server.
    measured = int(re.search(r"Request count: (\d+)", result.output).group(1))
    after = _served(client)
    assert after[1] == before[1], "the server failed requests during the run"
    assert after[0] - before[0] >= measured > 0
