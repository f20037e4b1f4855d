"""The gRPC server end to end: a real server on 127.0.0.1, real stubs, real digit images."""

from __future__ import annotations

import asyncio
import io
import logging
import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from service_testkit import FixtureModel, RunningServer, core_config, publish, write_card

from service._proto.tta_serve.v1 import classifier_pb2 as pb
from service.grpc.server import GrpcConfig, GrpcServer

Code = grpc.StatusCode


def predict(server: RunningServer, image: bytes, **options: object) -> pb.PredictResponse:
    return server.stub.Predict(pb.PredictRequest(image=image, **options), timeout=30)


def assert_still_serving(server: RunningServer, model: FixtureModel) -> None:
    image, label = model.samples[5]
    assert predict(server, image).classes[0].label == label


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=30, **kwargs)
    return info.value


# ---- predictions


def test_predict_returns_the_right_classes(server: RunningServer, digits_model: FixtureModel):
    for tta in (False, True):
        for image, label in digits_model.samples:
            response = predict(server, image, tta=tta, top_k=3)
            assert response.classes[0].label == label
            assert len(response.classes) == 3
            assert response.classes[0].probability >= response.classes[1].probability
            assert (response.model, response.model_version) == ("digits", 1)
            assert response.tta == tta and response.tta_views == (6 if tta else 1)


def _encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_every_supported_format(server: RunningServer, digits_model: FixtureModel):
    png, label = digits_model.samples[8]
    gray = Image.open(io.BytesIO(png))
    reference = predict(server, png, top_k=10)
    encoded = {
        "JPEG": _encode(gray, "JPEG", quality=95),
        "WebP": _encode(gray, "WEBP", lossless=True),
        "BMP": _encode(gray.convert("RGB"), "BMP"),
        "GIF": _encode(gray, "GIF", save_all=True,
                       append_images=[Image.new("L", gray.size, 255)]),  # 2 frames: first counts
        "TIFF": _encode(gray, "TIFF"),
    }
    for fmt, data in encoded.items():
        response = predict(server, data, top_k=10)
        assert response.classes[0].label == label, fmt
        if fmt != "JPEG":  # lossless: the very same probabilities
            got = {c.label: c.probability for c in response.classes}
            want = {c.label: c.probability for c in reference.classes}
            assert got == pytest.approx(want, abs=1e-5), fmt


def test_stream_answers_each_item_by_id(server: RunningServer, digits_model: FixtureModel):
    items = digits_model.valid[:30]
    requests = [pb.PredictRequest(image=image, request_id=f"r{i}", tta=i % 2 == 1)
                for i, (image, _) in enumerate(items)]
    requests.insert(10, pb.PredictRequest(image=b"garbage", request_id="bad"))
    responses = {r.request_id: r for r in server.stub.PredictStream(iter(requests), timeout=60)}
    assert set(responses) == {r.request_id for r in requests}
    bad = responses.pop("bad")
    assert bad.status.code == Code.INVALID_ARGUMENT.value[0]
    assert "not a recognised image format" in bad.status.message and not bad.classes
    preds = {False: digits_model.valid_pred, True: digits_model.valid_pred_tta}
    for i in range(len(items)):
        response = responses[f"r{i}"]
        assert response.status.code == 0
        assert response.classes[0].index == preds[i % 2 == 1][i]
        assert response.tta == (i % 2 == 1)


def test_concurrent_requests_each_get_their_own_answer(
    server: RunningServer, digits_model: FixtureModel
):
    items = digits_model.valid[:96]
    # A lone request runs inline (no batch to join): on a loaded box the 96 calls can arrive
    # one by one, so a batch is looked for over a few rounds; every round checks every answer.
    for _ in range(5):
        before = server.core.stats.batch_sizes("digits")
        futures = [server.stub.Predict.future(pb.PredictRequest(image=image, top_k=1),
                                              timeout=60) for image, _ in items]
        got = [f.result().classes[0].index for f in futures]
        assert got == digits_model.valid_pred[:96].tolist()
        formed = server.core.stats.batch_sizes("digits") - before
        assert sum(size * n for size, n in formed.items()) == len(items)
        if max(formed) > 1:
            break
    assert max(formed) > 1, f"no batch larger than one formed in 5 rounds: {formed}"


# ---- evaluation


def _evaluate_requests(items, tta: bool) -> Iterator[pb.EvaluateRequest]:  # noqa: ANN001
    yield pb.EvaluateRequest(options=pb.EvaluateOptions(tta=tta))
    for image, label in items:
        yield pb.EvaluateRequest(image=image, label=label)


def test_evaluate_matches_model_json(server: RunningServer, digits_model: FixtureModel):
    valid = digits_model.valid
    for tta, key in ((True, "tta_accuracy"), (False, "accuracy")):
        report = server.stub.Evaluate(_evaluate_requests(valid, tta), timeout=120)
        k = len(report.confusion.classes)
        counts = np.array(report.confusion.counts).reshape(k, k)
        assert report.n == len(valid) == counts.sum()
        assert report.accuracy == pytest.approx(np.trace(counts) / counts.sum())
        n = len(valid)  # the same images right as training counted (no slack)
        assert round(report.accuracy * n) == round(digits_model.card.metrics[key] * n)
        assert (report.model, report.model_version, report.tta) == ("digits", 1, tta)
        assert [m.name for m in report.per_class] == list(report.confusion.classes)
        assert sum(m.support for m in report.per_class) == len(valid)
        assert all(p.count >= 1 and p.actual != p.predicted for p in report.most_confused)
        assert report.confusion_png.startswith(b"\x89PNG")


def test_evaluate_errors(server: RunningServer, digits_model: FixtureModel):
    image, label = digits_model.samples[0]
    error = rpc_error(server.stub.Evaluate, iter([]))
    assert error.code() == Code.INVALID_ARGUMENT and "no labelled images" in error.details()
    error = rpc_error(server.stub.Evaluate, iter([pb.EvaluateRequest(image=image, label="x")]))
    assert error.code() == Code.INVALID_ARGUMENT and "label 'x' is not a class" in error.details()
    late_options = [pb.EvaluateRequest(image=image, label=label),
                    pb.EvaluateRequest(image=image, label=label,
                                       options=pb.EvaluateOptions(tta=True))]
    error = rpc_error(server.stub.Evaluate, iter(late_options))
    assert error.code() == Code.INVALID_ARGUMENT and "first message" in error.details()
    error = rpc_error(server.stub.Evaluate, iter([pb.EvaluateRequest(image=b"xx", label=label)]))
    assert error.code() == Code.INVALID_ARGUMENT and error.details().startswith("item 0:")
    assert_still_serving(server, digits_model)


# ---- models, health, reflection


def test_list_and_get_model(server: RunningServer, digits_model: FixtureModel):
    listing = server.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert listing.default_model == "digits"
    assert listing.provider.name == "CPUExecutionProvider" and listing.provider.device == "cpu"
    (info,) = listing.models
    assert info == server.stub.GetModel(pb.GetModelRequest(name="digits"), timeout=10)
    assert (info.name, info.version, list(info.repository_versions)) == ("digits", 1, [1])
    assert list(info.classes) == [str(i) for i in range(10)] and info.input_size == 16
    assert list(info.tta_views) == list(digits_model.card.tta.views)
    assert info.tta_combine == "mean" and info.tta_beta == pytest.approx(0.25)
    assert info.metrics["tta_accuracy"] == pytest.approx(digits_model.card.metrics["tta_accuracy"])
    assert info.is_default and info.provider.name == "CPUExecutionProvider"


HEALTH_SERVICES = ("", "tta_serve.v1.Classifier", "inference.GRPCInferenceService")


def test_health_is_serving(server: RunningServer):
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in HEALTH_SERVICES:
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_turns_not_serving_when_the_server_stops(digits_model: FixtureModel):
    server = RunningServer(core_config(digits_model.repo_root),
                           GrpcConfig(host="127.0.0.1", port=0, grace_s=10))
    try:
        health = health_pb2_grpc.HealthStub(server.channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=30)
                   for service in HEALTH_SERVICES]
        try:
            for watch in watches:
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            # Not server.run(): the open watches hold stop() in its grace period until cancelled.
            stopping = asyncio.run_coroutine_threadsafe(server.server.stop(), server.loop)
            for watch in watches:
                assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        finally:
            for watch in watches:
                watch.cancel()
        stopping.result(timeout=30)
    finally:
        server.close()


def test_a_taken_port_is_refused_with_a_clear_error(server: RunningServer,
                                                    digits_model: FixtureModel):
    async def start_another(port: int) -> int:  # grpc.aio binds to the loop it is created on
        return await GrpcServer(server.core, GrpcConfig(host="127.0.0.1", port=port)).start()

    # One port held by a plain socket, one by our own running server: grpcio's default
    # SO_REUSEPORT would let a second gRPC server bind that one and silently share it.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        for port in (held.getsockname()[1], server.port):
            with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1:{port}; is the "
                                              "port in use"):
                server.run(start_another(port))
    assert_still_serving(server, digits_model)


def test_reflection_lists_the_service(server: RunningServer):
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in response.list_services_response.service}
    assert {"tta_serve.v1.Classifier", "grpc.health.v1.Health"} <= names


# ---- errors: each followed by a successful request on the same server


def _png(width: int, height: int) -> bytes:
    return _encode(Image.new("L", (width, height)), "PNG")


def _truncated_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), "PNG")
    return data[: len(data) // 2]


@pytest.mark.parametrize(("options", "code", "fragment"), [
    ({"image": b"definitely not an image"}, Code.INVALID_ARGUMENT, "not a recognised image"),
    ({"image": b""}, Code.INVALID_ARGUMENT, "image is empty"),
    ({"image": _truncated_png()}, Code.INVALID_ARGUMENT, "could not be decoded"),
    ({"image": b"\xff" * (256 * 1024 + 1)}, Code.RESOURCE_EXHAUSTED, "--max-image-bytes"),
    ({"image": _png(1100, 1000)}, Code.RESOURCE_EXHAUSTED, "--max-pixels"),
    ({"model": "cats"}, Code.NOT_FOUND, "'cats' is not served"),
    ({"version": 7}, Code.NOT_FOUND, "version 7 is not served"),
    ({"top_k": -2}, Code.INVALID_ARGUMENT, "top_k must be >= 0"),
])
def test_errors_map_to_status_codes(server: RunningServer, digits_model: FixtureModel,
                                    options: dict, code: grpc.StatusCode, fragment: str):
    request = {"image": digits_model.samples[1][0], **options}
    error = rpc_error(server.stub.Predict, pb.PredictRequest(**request))
    assert error.code() == code
    assert fragment in error.details()
    assert_still_serving(server, digits_model)


def test_overload_is_unavailable_and_recovers(digits_model: FixtureModel):
    # Few slots and a long batching wait: most of a burst finds the queue full. The digit is
    # sent photo-sized (over the core's inline-decode bound, so it decodes in the pool as a
    # photo does): while the first requests decode, the rest of the burst arrives.
    config = core_config(digits_model.repo_root, max_pending=2, max_wait_ms=300,
                         max_batch_size=64)
    server = RunningServer(config)
    try:
        digit = Image.open(io.BytesIO(digits_model.samples[6][0]))
        buffer = io.BytesIO()
        digit.resize((digit.width * 64, digit.height * 64), Image.Resampling.NEAREST).save(
            buffer, format="PNG")
        image = buffer.getvalue()
        futures = [server.stub.Predict.future(pb.PredictRequest(image=image), timeout=30)
                   for _ in range(12)]
        ok, refused = 0, 0
        for future in futures:
            try:
                assert future.result().classes[0].label == "6"
                ok += 1
            except grpc.RpcError as e:
                assert e.code() == Code.UNAVAILABLE and "overloaded" in e.details()
                refused += 1
        assert ok >= 1 and refused >= 1
        assert_still_serving(server, digits_model)
    finally:
        server.close()


def test_graceful_stop_finishes_in_flight_requests(digits_model: FixtureModel):
    """An RPC open when stop() begins is answered; new ones are refused.

    A PredictStream the client holds open is in flight for certain (a lone Predict is answered
    in milliseconds: the batcher waits for company only while company is on its way).
    """
    server = RunningServer(core_config(digits_model.repo_root),
                           GrpcConfig(host="127.0.0.1", port=0, grace_s=30))
    stopping = threading.Thread(target=lambda: server.run(server.server.stop()))
    try:
        (first, first_label), (second, second_label) = digits_model.samples[:2]
        requests: queue.SimpleQueue = queue.SimpleQueue()
        responses = server.stub.PredictStream(iter(requests.get, None), timeout=30)
        requests.put(pb.PredictRequest(image=first, request_id="1"))
        assert next(responses).classes[0].label == first_label  # the stream is open
        watch = health_pb2_grpc.HealthStub(server.channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stopping.start()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        error = rpc_error(server.stub.Predict, pb.PredictRequest(image=second))
        assert error.code() == Code.UNAVAILABLE  # new calls are refused ...
        requests.put(pb.PredictRequest(image=second, request_id="2"))
        requests.put(None)
        assert [(r.request_id, r.classes[0].label) for r in responses] == [
            ("2", second_label)]  # ... while the open one is answered
        assert responses.code() == grpc.StatusCode.OK
        stopping.join(timeout=30)
        assert not stopping.is_alive()  # stop() returned as soon as nothing was in flight
    finally:
        requests.put(None)
        server.close()


# ---- hot reload


def _wait_for(predicate, timeout: float = 15.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_hot_reload_serves_new_versions_and_refuses_broken_ones(
    repo_copy: Path, digits_model: FixtureModel, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="service.core")
    server = RunningServer(core_config(repo_copy, poll_interval_s=0.1))
    try:
        image, label = digits_model.samples[3]
        assert predict(server, image).model_version == 1

        publish(repo_copy, digits_model.onnx_path.read_bytes(), version=2)
        assert _wait_for(lambda: predict(server, image).model_version == 2)
        info = server.stub.GetModel(pb.GetModelRequest(), timeout=10)
        assert info.version == 2 and list(info.repository_versions) == [1, 2]

        publish(repo_copy, digits_model.logits_onnx, version=3)  # loads, but no softmax
        broken = repo_copy / "digits" / "4"  # not even ONNX, copied in without publish()
        broken.mkdir()
        (broken / "model.onnx").write_bytes(b"\x00garbage")
        write_card(broken, version=4, metrics={})

        def refused() -> list[str]:
            return [r.getMessage() for r in caplog.records if "refusing digits" in r.getMessage()]

        assert _wait_for(lambda: len(refused()) >= 2), refused()
        assert all("still serving digits v2" in line for line in refused())
        time.sleep(0.3)  # more polls: refused versions are not retried (or re-logged)
        assert len(refused()) == 2
        response = predict(server, image, tta=True)
        assert (response.model_version, response.classes[0].label) == (2, label)
    finally:
        server.close()
