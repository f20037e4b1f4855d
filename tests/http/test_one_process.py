"""The default command is one process over one core: each model is loaded once, both wires feed
the same batcher (one forward pass can hold a gRPC and an HTTP request), and the statistics and
/metrics count the requests of both wires, whichever wire asks.

What shows a shared pass from outside: the core's own per-batch-size counters (Triton's
ModelStatistics ``batch_stats``, exact sizes). K gRPC and K HTTP requests are sent at once; a
forward pass of more than K images must have held requests from both wires. With a process per
wire (the code before issue 18), no pass could ever exceed K.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import psutil
import pytest
from google.protobuf import json_format
from http_testkit import ServerProcess, cli_flags, free_port
from service_testkit import FixtureModel, core_config

from service._proto.inference import grpc_predict_v2_pb2 as oip_pb
from service._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from service._proto.tta_serve.v1 import classifier_pb2 as pb
from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc

PER_WIRE = 8  # requests per wire per round
# At most; a round whose passes all stayed within one wire's count is repeated (a lone request
# runs inline, so on a loaded box the first requests may finish alone: more tries).
ROUNDS = 10


class Served:
    def __init__(self, process: ServerProcess, grpc_port: int, http_port: int) -> None:
        self.process = process
        self.grpc_target = f"127.0.0.1:{grpc_port}"
        self.http_url = f"http://127.0.0.1:{http_port}"


@pytest.fixture(scope="module")
def served(digits_model: FixtureModel, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[Served]:
    """Plain ``tta-serve`` with a long batching window (the batcher waits for company only
    while admitted requests are on their way, so a lone request still runs at once)."""
    grpc_port, http_port = free_port(), free_port()
    config = core_config(digits_model.repo_root)
    flags = cli_flags(config)
    for name, value in (("--max-batch-size", "64"), ("--max-wait-ms", "1000")):
        flags[flags.index(name) + 1] = value
    process = ServerProcess(["--host", "127.0.0.1", "--grpc-port", str(grpc_port),
                             "--http-port", str(http_port), "--grace-s", "5", *flags],
                            tmp_path_factory.mktemp("one-process"))
    served = Served(process, grpc_port, http_port)
    try:
        process.wait_http_ready(served.http_url)
        yield served
    finally:
        code = process.terminate()
    assert code == 0, process.log


def _statistics(served: Served) -> tuple[dict, dict]:
    """digits v1's statistics as each wire reports them (the same JSON shape: Triton's)."""
    over_http = httpx.get(f"{served.http_url}/v2/models/digits/versions/1/stats", timeout=30)
    assert over_http.status_code == 200, over_http.text
    with grpc.insecure_channel(served.grpc_target) as channel:
        reply = oip_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            oip_pb.ModelStatisticsRequest(name="digits", version="1"), timeout=30)
    over_grpc = json_format.MessageToDict(reply, preserving_proto_field_name=True)
    (http_stats,), (grpc_stats,) = over_http.json()["model_stats"], over_grpc["model_stats"]
    return http_stats, grpc_stats


def _count(stats: dict) -> int:
    """Images answered (uint64: a string in protobuf's JSON, absent when 0)."""
    return int(stats.get("inference_count", 0))


def _passes_by_size(stats: dict) -> dict[int, int]:
    return {int(b["batch_size"]): int(b["compute_infer"]["count"])
            for b in stats.get("batch_stats", [])}


def _one_round(served: Served, images: list[tuple[bytes, str]]) -> None:
    """PER_WIRE gRPC Predicts and PER_WIRE HTTP /predicts, released together; all answered."""
    start = threading.Barrier(2 * PER_WIRE)

    def over_grpc(image: bytes) -> str:
        with grpc.insecure_channel(served.grpc_target) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            stub.ListModels(pb.ListModelsRequest(), timeout=30)  # connected before the start
            start.wait(30)
            return stub.Predict(pb.PredictRequest(image=image), timeout=60).classes[0].label

    def over_http(image: bytes) -> str:
        with httpx.Client(base_url=served.http_url, timeout=60) as client:
            client.get("/livez")  # connected before the start
            start.wait(30)
            response = client.post("/predict", files={"image": ("d.png", image, "image/png")})
            assert response.status_code == 200, response.text
            return response.json()["label"]

    with ThreadPoolExecutor(2 * PER_WIRE) as pool:
        answers = [pool.submit(over_grpc, image) for image, _ in images] + \
                  [pool.submit(over_http, image) for image, _ in images]
        labels = [a.result() for a in answers]
    assert labels == [label for _, label in images] * 2


def test_one_forward_pass_holds_requests_from_both_wires(served: Served,
                                                         digits_model: FixtureModel):
    images = digits_model.samples[:PER_WIRE]
    before, _ = _statistics(served)
    rounds = 0
    for rounds in range(1, ROUNDS + 1):  # noqa: B007 (the count is asserted below)
        _one_round(served, images)
        after, _ = _statistics(served)
        grown = {size: n - _passes_by_size(before).get(size, 0)
                 for size, n in _passes_by_size(after).items()}
        if max((size for size, n in grown.items() if n > 0), default=0) > PER_WIRE:
            break
    # Every image of both wires went through one core's forward passes ...
    assert _count(after) - _count(before) == 2 * PER_WIRE * rounds
    assert sum(size * n for size, n in grown.items()) == 2 * PER_WIRE * rounds
    # ... and some pass held more images than one wire sent: requests of both wires.
    assert max(size for size, n in grown.items() if n > 0) > PER_WIRE, (rounds, grown)


def test_each_model_is_loaded_once_and_counted_once_for_both_wires(served: Served,
                                                                   digits_model: FixtureModel):
    tree = psutil.Process(served.process.process.pid).children(recursive=True)
    assert tree == [], tree  # no supervisor, no worker: this one process serves both wires
    assert served.process.log.count("service.core.models: serving digits v1 on") == 1

    image, label = digits_model.samples[3]
    http_before, grpc_before = _statistics(served)
    metrics_before = httpx.get(f"{served.http_url}/metrics", timeout=30).text
    with grpc.insecure_channel(served.grpc_target) as channel:
        answer = pb_grpc.ClassifierStub(channel).Predict(pb.PredictRequest(image=image),
                                                         timeout=30)
    assert answer.classes[0].label == label
    response = httpx.post(f"{served.http_url}/predict", timeout=30,
                          files={"image": ("d.png", image, "image/png")})
    assert response.status_code == 200 and response.json()["label"] == label
    http_after, grpc_after = _statistics(served)
    metrics_after = httpx.get(f"{served.http_url}/metrics", timeout=30).text

    # One statistics view: both wires report the same counters, and they moved by both requests.
    assert _count(http_before) == _count(grpc_before)
    assert _count(http_after) == _count(grpc_after) == _count(http_before) + 2
    # One /metrics: the core's request counter moved by the gRPC request too.
    assert _ok_requests(metrics_after) - _ok_requests(metrics_before) == 2


def _ok_requests(metrics: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for family in text_string_to_metric_families(metrics)
               for s in family.samples
               if s.name == "tta_serve_requests_total" and s.labels.get("model") == "digits"
               and s.labels.get("outcome") == "ok")
