"""`tta-serve` (= `tta-serve all`): both servers in one process, stopped together by SIGTERM;
start-up refusals; the core's settings crossing the environment (``bentoml serve`` by hand)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from http_testkit import ServerProcess, cli_flags, free_port
from service_testkit import FixtureModel, core_config

import service
from service._proto.tta_serve.v1 import classifier_pb2 as pb
from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc
from service.cli import main
from service.core import CoreConfig, VersionPolicy
from service.process.serve_env import core_config_from_env, core_config_to_env, default_models_dir


def test_plain_tta_serve_runs_grpc_and_http_and_stops_both_on_sigterm(
        digits_model: FixtureModel, tmp_path: Path):
    http_port, grpc_port = free_port(), free_port()
    server = ServerProcess(["--host", "127.0.0.1", "--grpc-port", str(grpc_port),
                            "--http-port", str(http_port), "--grace-s", "5",
                            *cli_flags(core_config(digits_model.repo_root))], tmp_path)
    try:
        base_url = f"http://127.0.0.1:{http_port}"
        server.wait_http_ready(base_url)
        image, label = digits_model.samples[9]
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                               timeout=30)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            answer = pb_grpc.ClassifierStub(channel).Predict(pb.PredictRequest(image=image),
                                                             timeout=30)
            assert answer.classes[0].label == label
        response = httpx.post(f"{base_url}/predict", timeout=30,
                              files={"image": ("d.png", image, "image/png")})
        assert response.status_code == 200 and response.json()["label"] == label
        log = server.log
        assert f"gRPC listening on 127.0.0.1:{grpc_port}" in log
        assert re.search(r"HTTP service: serving digits v1 from .* on CPUExecutionProvider", log)

        tree = [psutil.Process(server.process.pid),
                *psutil.Process(server.process.pid).children(recursive=True)]
        assert len(tree) == 1, tree  # one process serves both wires (test_one_process.py)
        started = time.monotonic()
        assert server.terminate(timeout_s=30) == 0, server.log
        assert time.monotonic() - started < 15
        gone, alive = psutil.wait_procs(tree, timeout=5)
        assert not alive, alive
        for port in (http_port, grpc_port):
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2)
    finally:
        if server.process.poll() is None:
            server.process.kill()


def test_http_relative_models_dir_from_another_directory(digits_model: FixtureModel,
                                                        tmp_path: Path):
    """``--models-dir`` relative to the directory ``tta-serve http`` starts in: the folder the user
    named is served, and the log names it absolute."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    relative = os.path.relpath(digits_model.repo_root, elsewhere)
    assert not Path(relative).is_absolute() and relative.startswith("..")
    port = free_port()
    server = ServerProcess(["http", "--host", "127.0.0.1", "--port", str(port), "--grace-s", "5",
                            *cli_flags(core_config(digits_model.repo_root), models_dir=False),
                            "--models-dir", relative],
                           tmp_path, env={"TTA_SERVE_MODELS_DIR": ""}, cwd=elsewhere)
    try:
        base_url = f"http://127.0.0.1:{port}"
        server.wait_http_ready(base_url, timeout_s=120)
        image, label = digits_model.samples[4]
        response = httpx.post(f"{base_url}/predict", timeout=30,
                              files={"image": ("d.png", image, "image/png")})
        assert response.status_code == 200, response.text
        assert response.json()["label"] == label
        assert f"serving digits v1 from {digits_model.repo_root.resolve()} on" in server.log
    finally:
        assert server.terminate() == 0, server.log


def test_http_refuses_to_start_without_a_model(tmp_path: Path, capsys):
    started = time.monotonic()
    assert main(["http", "--models-dir", str(tmp_path), "--port", str(free_port())]) == 2
    assert "holds no model; export one there" in capsys.readouterr().err
    assert time.monotonic() - started < 30  # refused by the start-up check, not looping workers


def test_all_refuses_to_start_and_listens_on_nothing(tmp_path: Path):
    grpc_port, http_port = free_port(), free_port()
    server = ServerProcess(["all", "--models-dir", str(tmp_path / "empty"), "--host",
                            "127.0.0.1", "--grpc-port", str(grpc_port), "--http-port",
                            str(http_port)], tmp_path)
    assert server.process.wait(60) == 2, server.log
    assert "holds no model; export one there" in server.log
    assert "Traceback" not in server.log
    assert "listening on" not in server.log  # the core's check ran before any port was bound


@pytest.mark.parametrize(("command", "flag"), [("all", "--http-port"), ("http", "--port")])
def test_http_port_in_use_is_a_one_line_error(digits_model: FixtureModel, tmp_path: Path,
                                              command: str, flag: str):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        other_port = ["--grpc-port", str(free_port())] if command == "all" else []
        server = ServerProcess([command, "--host", "127.0.0.1", *other_port, flag, str(port),
                                *cli_flags(core_config(digits_model.repo_root))], tmp_path)
        assert server.process.wait(120) == 2, server.log
    assert (f"tta-serve: error: cannot listen on 127.0.0.1:{port}; is the port in use? "
            f"(choose {flag})") in server.log
    assert "Traceback" not in server.log


def test_core_config_crosses_the_environment(tmp_path: Path):
    config = CoreConfig(models_dir=tmp_path, default_model="pets", models=("pets", "digits"),
                        version_policy=VersionPolicy(pinned=3), device="cpu",
                        intra_op_threads=3, max_batch_size=7, max_wait_ms=1.5, max_pending=9,
                        decode_threads=2, max_image_bytes=1234, max_pixels=5678,
                        poll_interval_s=0.0, default_top_k=2)
    assert core_config_from_env(core_config_to_env(config)) == config
    relative = CoreConfig(models_dir=Path("some/models"))  # made absolute for the worker
    assert core_config_to_env(relative)["TTA_SERVE_MODELS_DIR"] == str(
        (Path.cwd() / "some/models").resolve())
    everything = core_config_from_env(core_config_to_env(CoreConfig(models_dir=tmp_path)))
    assert everything.models is None
    assert core_config_from_env({}).models_dir == default_models_dir()
    with pytest.raises(ValueError, match="TTA_SERVE_MAX_BATCH_SIZE='many'"):
        core_config_from_env({"TTA_SERVE_MAX_BATCH_SIZE": "many"})


def test_the_old_bentoml_service_path_names_the_same_service() -> None:
    """``service.http_service`` is a shim for ``service.http.service`` (issue 24's regroup)."""
    import service.http.service
    import service.http_service

    assert service.http_service.Classifier is service.http.service.Classifier


def test_bentoml_serve_by_hand_starts_and_stops_its_own_core(digits_model: FixtureModel,
                                                            tmp_path: Path):
    """``bentoml serve service.http_service:Classifier`` (the service run by hand, configured by
    ``TTA_SERVE_*``; the path from before the service moved to ``service.http.service``, kept by a
    shim, so this runs both): no core is provided, so its worker starts one and stops it at
    shutdown; its /metrics come from BentoML's multiprocess files; SIGTERM drains and exits 0."""
    port = free_port()
    env = {**os.environ, **core_config_to_env(core_config(digits_model.repo_root)),
           "PYTHONUNBUFFERED": "1", "BENTOML_DO_NOT_TRACK": "True",
           "BENTOML_HOME": str(tmp_path / "bentoml")}
    log_path = tmp_path / "bentoml-serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "service.http_service:Classifier",
             "--working-dir", str(Path(service.__file__).resolve().parents[1]),
             "--host", "127.0.0.1", "--port", str(port), "--timeout-graceful-shutdown", "5"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.25)
        image, label = digits_model.samples[5]
        response = httpx.post(f"{base_url}/predict", timeout=30,
                              files={"image": ("d.png", image, "image/png")})
        assert response.status_code == 200, log_path.read_text()
        assert response.json()["label"] == label
        metrics = httpx.get(f"{base_url}/metrics", timeout=30).text
        assert re.search(r'tta_serve_http_requests_total\{[^}]*endpoint="predict"[^}]*'
                         r'outcome="ok"[^}]*\} 1\.0', metrics), metrics
        assert 'tta_serve_requests_total{model="digits",outcome="ok"} 1.0' in metrics
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "HTTP service: serving digits v1 from" in log_path.read_text()
