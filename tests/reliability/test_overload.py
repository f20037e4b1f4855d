"""Overload on the default command (both wires, one core): work nobody waits for is never
computed, and a full queue answers at once.

A real ``tta-serve`` on the bundled digits model. To put a request behind others for certain,
a backlog is sent first: one Open Inference Protocol request of BACKLOG preprocessed images
(FP32), which the core queues as BACKLOG one-row blocks (``--max-batch-size 1``), all at once,
ahead of anything that arrives after its first pass ran. The model's input rows
(``tta_serve_model_input_rows``) and the dropped requests (``tta_serve_dropped_requests``) are
read from /metrics: a request dropped from the queue adds a drop and no row. (A request with a
deadline may also be refused on arrival, when the model's recent answers -- an earlier test's
backlog -- took longer than its deadline: also a drop, also no row.)
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
import numpy as np
import pytest

from bench.reliability.inputs import model_repository
from bench.serve_process import ServeProcess
from service._proto.inference import grpc_predict_v2_pb2 as oip_pb
from service._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from service._proto.tta_serve.v1 import classifier_pb2 as pb
from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc

BACKLOG = 6000  # one-row passes queued ahead: seconds of work on two busy cores
MAX_QUEUE = 2  # the backlog and one more request; a third is refused


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    folder: Path = tmp_path_factory.mktemp("overload")
    server = ServeProcess("all", model_repository(folder), folder, flags=(
        "--max-batch-size", "1", "--max-queue", str(MAX_QUEUE), "--decode-threads", "1"))
    try:
        yield server.wait_ready()
    finally:
        server.terminate()
        server.kill()


@pytest.fixture(scope="module")
def channel(served: ServeProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served.grpc_target) as channel:
        yield channel


def counters(server: ServeProcess) -> dict[str, float]:
    """The digits model's input rows and dropped requests (by reason) from /metrics."""
    text = httpx.get(f"{server.http_url}/metrics", timeout=30).text
    out = {"rows": 0.0, "deadline": 0.0, "cancelled": 0.0}
    for match in re.finditer(r'^tta_serve_model_input_rows_total\{model="digits"\} (\S+)$',
                             text, re.M):
        out["rows"] = float(match.group(1))
    for match in re.finditer(r'^tta_serve_dropped_requests_total\{model="digits",'
                             r'reason="(\w+)"\} (\S+)$', text, re.M):
        out[match.group(1)] = float(match.group(2))
    return out


class Backlog:
    """BACKLOG one-row passes queued in the digits model's batcher, started and then awaited."""

    def __init__(self, server: ServeProcess, channel: grpc.Channel) -> None:
        self.before = counters(server)
        pixels = np.random.default_rng(0).random((BACKLOG, 3, 16, 16), dtype=np.float32)
        request = oip_pb.ModelInferRequest(
            model_name="digits", inputs=[oip_pb.ModelInferRequest.InferInputTensor(
                name="pixels", datatype="FP32", shape=list(pixels.shape))],
            raw_input_contents=[pixels.tobytes()])
        self.future = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer.future(
            request, timeout=300)
        deadline = time.monotonic() + 60
        while counters(server)["rows"] == self.before["rows"]:  # its blocks are all queued
            assert time.monotonic() < deadline and not self.future.done(), "backlog never ran"
            time.sleep(0.02)

    def finish(self, server: ServeProcess) -> dict[str, float]:
        """Wait for the backlog's answer; what the counters grew by since it was sent."""
        assert self.future.result().outputs[0].shape == [BACKLOG, 10]
        after = counters(server)
        return {key: after[key] - self.before[key] for key in after}


def test_expired_grpc_request_is_dropped_from_the_queue_uncomputed(served, channel, images):
    backlog = Backlog(served, channel)
    stub = pb_grpc.ClassifierStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(pb.PredictRequest(image=images[0], tta=True), timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not backlog.future.done()  # it expired waiting behind the backlog
    grew = backlog.finish(served)
    assert grew["rows"] == BACKLOG  # the backlog's rows, none of the 6 TTA views
    # The server notices the deadline (dropped when taken from the queue) or grpc cancels the
    # call at its deadline first (dropped as cancelled): either way once, and never computed.
    assert grew["deadline"] + grew["cancelled"] == 1


def test_http_request_timeout_header_drops_it_with_504(served, channel, images):
    backlog = Backlog(served, channel)
    response = httpx.post(f"{served.http_url}/predict", files={"image": ("d.png", images[1])},
                          data={"tta": "true"}, headers={"X-Request-Timeout": "0.2"},
                          timeout=120)
    assert response.status_code == 504, response.text
    assert response.json()["kind"] == "deadline_exceeded"
    assert "not computed" in response.json()["error"]
    # Dropped from the queue once expired, or refused on arrival when the model's recent
    # answers (the previous test's backlog) took longer than its 0.2 s: not after the backlog.
    assert not backlog.future.done()
    grew = backlog.finish(served)
    assert grew["rows"] == BACKLOG
    assert grew["deadline"] == 1 and grew["cancelled"] == 0


def test_oip_timeout_parameter_is_a_deadline(served, channel, images):
    backlog = Backlog(served, channel)
    request = oip_pb.ModelInferRequest(
        model_name="digits", inputs=[oip_pb.ModelInferRequest.InferInputTensor(
            name="image", datatype="BYTES", shape=[1], contents=oip_pb.InferTensorContents(
                bytes_contents=[images[2]]))],
        parameters={"timeout": oip_pb.InferParameter(int64_param=200_000)})  # 0.2 s
    with pytest.raises(grpc.RpcError) as caught:
        oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=120)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "not computed" in caught.value.details()
    assert not backlog.future.done()
    grew = backlog.finish(served)
    assert grew["rows"] == BACKLOG and grew["deadline"] == 1


def test_bad_timeout_is_a_400_naming_it(served):
    response = httpx.post(f"{served.http_url}/predict", headers={"X-Request-Timeout": "soon"},
                          files={"image": ("d.png", b"x")}, timeout=30)
    assert response.status_code == 400
    assert "X-Request-Timeout" in response.json()["error"]


def test_cancelled_grpc_call_leaves_no_work(served, channel, images):
    backlog = Backlog(served, channel)
    call = pb_grpc.ClassifierStub(channel).Predict.future(
        pb.PredictRequest(image=images[3], tta=True), timeout=120)
    time.sleep(0.3)  # admitted, decoded and queued behind the backlog
    assert call.cancel()
    grew = backlog.finish(served)
    assert grew["rows"] == BACKLOG
    assert grew["cancelled"] == 1 and grew["deadline"] == 0


def test_closed_http_connection_leaves_no_work(served, channel, images):
    backlog = Backlog(served, channel)
    with pytest.raises(httpx.ReadTimeout):  # httpx closes the connection on its timeout
        httpx.post(f"{served.http_url}/predict", files={"image": ("d.png", images[4])},
                   data={"tta": "true"}, timeout=httpx.Timeout(30, read=0.3))
    grew = backlog.finish(served)
    assert grew["rows"] == BACKLOG
    assert grew["cancelled"] == 1 and grew["deadline"] == 0


def test_full_queue_answers_at_once_with_retry_after(served, channel, images):
    backlog = Backlog(served, channel)
    stub = pb_grpc.ClassifierStub(channel)
    waiting = stub.Predict.future(pb.PredictRequest(image=images[5]), timeout=120)
    time.sleep(0.3)  # the model's second and last queue slot is taken
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(pb.PredictRequest(image=images[6]), timeout=60)
    grpc_s = time.monotonic() - started
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "--max-queue" in caught.value.details()
    assert ("retry-after", "1") in tuple(caught.value.trailing_metadata())
    started = time.monotonic()
    response = httpx.post(f"{served.http_url}/predict", files={"image": ("d.png", images[6])},
                          timeout=60)
    http_s = time.monotonic() - started
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json()["kind"] == "overloaded"
    assert not backlog.future.done() and not waiting.done()  # refused, not queued behind
    assert grpc_s < 5 and http_s < 5
    grew = backlog.finish(served)
    assert waiting.result().classes  # the queued one is still answered
    assert grew["rows"] == BACKLOG + 1


BOUNDARY = "tta-serve-test"


def multipart(image: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"d.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + image + (
            f"\r\n--{BOUNDARY}--\r\n").encode()


def headers_only(server: ServeProcess, path: str, length: int, *extra: tuple[str, str]
                 ) -> http.client.HTTPConnection:
    """A POST whose headers announce a ``length``-byte body, sent without it (yet)."""
    url = urlsplit(server.http_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    connection.putrequest("POST", path)
    kind = "application/json" if path.startswith("/v2") else \
        f"multipart/form-data; boundary={BOUNDARY}"
    for name, value in (("Content-Type", kind), ("Content-Length", str(length)), *extra):
        connection.putheader(name, value)
    connection.endheaders()
    return connection


@pytest.mark.parametrize("path", ["/predict", "/predict_batch", "/v2/models/digits/infer"])
def test_over_bound_http_request_is_refused_before_its_body(served, channel, images, path):
    backlog = Backlog(served, channel)
    waiting = pb_grpc.ClassifierStub(channel).Predict.future(
        pb.PredictRequest(image=images[7]), timeout=120)
    time.sleep(0.3)  # the model's queue (--max-queue 2) is full
    connection = headers_only(served, path, 100_000)  # and its body never comes
    started = time.monotonic()
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert response.status == 503 and response.getheader("Retry-After") == "1", body
    assert body["kind"] == "overloaded" and "--max-queue" in body["error"]
    assert time.monotonic() - started < 5 and not backlog.future.done()
    assert waiting.result().classes
    assert backlog.finish(served)["rows"] == BACKLOG + 1


def test_http_request_that_cannot_meet_its_timeout_is_refused_before_its_body(
        served, channel, images):
    Backlog(served, channel).finish(served)  # the model's recent answers took seconds
    backlog = Backlog(served, channel)
    connection = headers_only(served, "/predict", 100_000, ("X-Request-Timeout", "0.2"))
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert response.status == 504 and body["kind"] == "deadline_exceeded", body
    assert not backlog.future.done()
    grew = backlog.finish(served)
    assert grew["rows"] == BACKLOG and grew["deadline"] == 1


def test_http_request_under_the_bound_is_answered_whenever_its_body_comes(
        served, channel, images):
    backlog = Backlog(served, channel)  # one of the two places taken
    payload = multipart(images[8])
    connection = headers_only(served, "/predict", len(payload))
    time.sleep(0.3)  # a slow client: its body comes later
    connection.send(payload)
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert response.status == 200 and body["label"], body
    assert backlog.finish(served)["rows"] > BACKLOG  # computed
