"""`tta-serve`: start-up refusals, and a real server process started and stopped by signal."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_testkit import FixtureModel

from service._proto.tta_serve.v1 import classifier_pb2 as pb
from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc
from service.cli import build_parser, main
from service.core.runtime import cuda_problem
from service.process.core_options import core_config_from_args
from service.process.serve_env import default_models_dir


@pytest.mark.skipif(cuda_problem() is None, reason="CUDA is usable on this machine")
def test_device_cuda_refuses_to_start_without_a_gpu(digits_model: FixtureModel, capsys):
    code = main(["grpc", "--device", "cuda", "--models-dir", str(digits_model.repo_root),
                 "--port", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--device cuda was requested but CUDA cannot be used" in err
    assert "--device cpu" in err


def test_missing_model_refuses_to_start(tmp_path: Path, capsys):
    assert main(["grpc", "--models-dir", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "holds no model; export one there" in err and "--models-dir" in err
    assert main(["grpc", "--models-dir", str(tmp_path), "--port", "0", "--model", "digits"]) == 2
    err = capsys.readouterr().err
    assert "model 'digits' has no versions in" in err and "--models-dir" in err


def test_options_map_onto_the_core_config(monkeypatch):
    monkeypatch.setenv("TTA_SERVE_MODELS_DIR", "/srv/models")
    assert default_models_dir() == Path("/srv/models")
    args = build_parser().parse_args(["grpc", "--version-policy", "pinned:3", "--max-batch-size",
                                      "1", "--max-wait-ms", "0", "--max-pixels", "5000"])
    config = core_config_from_args(args)
    assert config.models_dir == Path("/srv/models") and config.version_policy.pinned == 3
    assert not config.batching and config.max_pixels == 5000
    with pytest.raises(SystemExit):
        build_parser().parse_args(["grpc", "--version-policy", "oldest"])


def _read_until(stream, pattern: str, timeout: float) -> tuple[re.Match | None, str]:
    seen, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen += line
        if match := re.search(pattern, line):
            return match, seen
    return None, seen


def _tta_serve() -> list[str]:
    script = Path(sys.executable).with_name("tta-serve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


def test_console_script_serves_and_stops_on_sigterm(digits_model: FixtureModel):
    process = subprocess.Popen(
        [*_tta_serve(), "grpc", "--models-dir", str(digits_model.repo_root), "--host", "127.0.0.1",
         "--port", "0", "--device", "cpu", "--grace-s", "5"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        match, log = _read_until(process.stderr, r"gRPC listening on 127\.0\.0\.1:(\d+)", 60)
        assert match, log
        assert "serving digits v1 on CPUExecutionProvider" in log
        with grpc.insecure_channel(f"127.0.0.1:{match.group(1)}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            image, label = digits_model.samples[2]
            response = pb_grpc.ClassifierStub(channel).Predict(
                pb.PredictRequest(image=image, tta=True), timeout=10)
            assert response.classes[0].label == label
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert "stopped" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_port_in_use_is_a_one_line_error(digits_model: FixtureModel):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = subprocess.run(
            [*_tta_serve(), "grpc", "--models-dir", str(digits_model.repo_root), "--host",
             "127.0.0.1", "--port", str(port), "--device", "cpu"],
            capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert (f"tta-serve: error: cannot listen on 127.0.0.1:{port}; is the port in use? "
            "(choose --port)") in done.stderr
    assert "Traceback" not in done.stderr


def test_sigterm_lets_an_in_flight_request_finish(digits_model: FixtureModel):
    """SIGTERM while an RPC is open: it is answered during the grace period, then exit 0.

    A PredictStream the client holds open is in flight for certain (a lone Predict is answered
    in milliseconds: the batcher waits for company only while company is on its way). Health
    turning NOT_SERVING shows the shutdown has begun before the stream's next item is sent.
    """
    process = subprocess.Popen(
        [*_tta_serve(), "grpc", "--models-dir", str(digits_model.repo_root), "--host",
         "127.0.0.1", "--port", "0", "--device", "cpu", "--grace-s", "60"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        match, log = _read_until(process.stderr, r"gRPC listening on 127\.0\.0\.1:(\d+)", 60)
        assert match, log
        with grpc.insecure_channel(f"127.0.0.1:{match.group(1)}") as channel:
            (first, first_label), (second, second_label) = digits_model.samples[:2]
            requests: queue.SimpleQueue = queue.SimpleQueue()
            responses = pb_grpc.ClassifierStub(channel).PredictStream(
                iter(requests.get, None), timeout=60)
            requests.put(pb.PredictRequest(image=first, request_id="1"))
            assert next(responses).classes[0].label == first_label  # the stream is open
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(),
                                                              timeout=60)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            process.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()  # else it, too, would hold the server for the whole grace period
            requests.put(pb.PredictRequest(image=second, request_id="2"))
            requests.put(None)  # the client's last message
            assert [(r.request_id, r.classes[0].label) for r in responses] == [
                ("2", second_label)]
            assert responses.code() == grpc.StatusCode.OK
        assert process.wait(timeout=30) == 0  # well inside the 60 s grace: nothing was left
        assert "stopped" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
