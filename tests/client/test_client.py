"""service.client.Client against a real gRPC server on 127.0.0.1 over the real fixture model."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from service_testkit import FixtureModel, RunningServer, core_config

from service.client import (
    Client,
    Evaluation,
    InvalidArgument,
    NotFound,
    Prediction,
    TooLarge,
    Unavailable,
    UnreadableImage,
)
from service.grpc.server import GrpcConfig


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Client:
    with Client(f"grpc://127.0.0.1:{server.port}") as c:
        yield c


def _write_class_folders(items: list[tuple[bytes, str]], root: Path) -> Path:
    for i, (image, label) in enumerate(items):
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f"{i:04d}.png").write_bytes(image)
    return root


def test_predict_a_path_or_bytes(client: Client, digits_model: FixtureModel, tmp_path: Path):
    image, label = digits_model.samples[7]
    path = tmp_path / "seven.png"
    path.write_bytes(image)
    for source in (image, path, str(path)):
        p = client.predict(source, tta=True, top_k=3)
        assert isinstance(p, Prediction)
        assert p.label == label and len(p.classes) == 3
        assert (p.model, p.model_version, p.tta, p.tta_views) == ("digits", 1, True, 6)
        assert p.probability == p.classes[0].probability > p.classes[1].probability


def test_predict_many_equals_the_offline_answers_in_input_order(client: Client,
                                                                digits_model: FixtureModel,
                                                                tmp_path: Path):
    images = [image for image, _ in digits_model.valid]
    missing = tmp_path / "missing.png"
    inputs: list = [*images[:100], b"not an image", missing, *images[100:]]
    results = list(client.predict_many(inputs, window=16))
    assert len(results) == len(inputs)
    assert isinstance(results[100], InvalidArgument)
    assert "not a recognised image format" in results[100].message
    assert isinstance(results[101], UnreadableImage) and "missing.png" in results[101].message
    good = results[:100] + results[102:]
    assert all(isinstance(r, Prediction) for r in good)
    labels = np.array([int(r.label) for r in good])
    np.testing.assert_array_equal(labels, digits_model.valid_pred)


def test_errors_carry_the_servers_message(client: Client, digits_model: FixtureModel):
    image = digits_model.samples[0][0]
    with pytest.raises(InvalidArgument, match="not a recognised image format"):
        client.predict(b"\x89PNG but not really")
    with pytest.raises(NotFound, match="cats"):
        client.predict(image, model="cats")
    with pytest.raises(InvalidArgument, match="top_k"):
        client.predict(image, top_k=-1)
    with pytest.raises(TooLarge, match="--max-image-bytes"):
        client.predict(b"\0" * (300 * 1024))  # the test server's limit is 256 KiB


def test_only_unavailable_is_retried(digits_model: FixtureModel, server: RunningServer):
    # A bad image fails at once even with a huge backoff: INVALID_ARGUMENT is not retried.
    with Client(f"127.0.0.1:{server.port}", backoff_s=30, retries=3) as patient:
        started = time.monotonic()
        with pytest.raises(InvalidArgument):
            patient.predict(b"junk")
        assert time.monotonic() - started < 5
    # Nothing listening: UNAVAILABLE, raised after the retries run out.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"127.0.0.1:{port}", retries=0, timeout_s=5) as c, \
            pytest.raises(Unavailable):
        c.models()
    # A server that comes up while the client backs off: the call succeeds.
    started_server: list[RunningServer] = []

    def start_later() -> None:
        time.sleep(1.0)
        started_server.append(RunningServer(core_config(digits_model.repo_root),
                                            GrpcConfig(host="127.0.0.1", port=port)))

    thread = threading.Thread(target=start_later)
    thread.start()
    try:
        with Client(f"127.0.0.1:{port}", retries=8, backoff_s=0.2, timeout_s=10) as c:
            image, label = digits_model.samples[3]
            assert c.predict(image).label == label
    finally:
        thread.join(60)
        for running in started_server:
            running.close()


def test_predict_many_retries_items_the_server_was_too_busy_for(digits_model: FixtureModel):
    # max_pending=2 with 32 images in flight: most items come back UNAVAILABLE (overloaded) and
    # are retried one by one with backoff; in the end every image has its right answer.
    busy = RunningServer(core_config(digits_model.repo_root, max_pending=2))
    try:
        images = [image for image, _ in digits_model.valid[:120]]
        with Client(f"127.0.0.1:{busy.port}", retries=10, backoff_s=0.02) as c:
            results = list(c.predict_many(images, window=32))
        assert all(isinstance(r, Prediction) for r in results), [
            r for r in results if not isinstance(r, Prediction)][:3]
        np.testing.assert_array_equal([int(r.label) for r in results],
                                      digits_model.valid_pred[:120])
        assert busy.core.stats.snapshot()["requests"].get("digits/overloaded", 0) > 0
    finally:
        busy.close()


def test_evaluate_a_folder_reproduces_the_offline_accuracy(client: Client,
                                                           digits_model: FixtureModel,
                                                           tmp_path: Path):
    folder = _write_class_folders(digits_model.valid, tmp_path / "valid")
    (folder / "README.txt").write_text("not an image, not a class folder")
    result = client.evaluate(folder, tta=True)
    assert isinstance(result, Evaluation)
    labels = np.array([int(y) for _, y in digits_model.valid])
    assert result.n == len(labels)
    assert result.accuracy == pytest.approx(float((digits_model.valid_pred_tta == labels).mean()))
    assert result.confusion_png.startswith(b"\x89PNG")
    assert int(result.report.confusion.sum()) == len(labels)
    assert "precision" in result.text()
    with pytest.raises(InvalidArgument, match="not a class of"):
        client.evaluate([(digits_model.samples[0][0], "zero")])


def test_models(client: Client, digits_model: FixtureModel):
    (info,) = client.models()
    assert (info.name, info.version, info.is_default) == ("digits", 1, True)
    assert info.classes == digits_model.card.classes
    assert info.metrics["accuracy"] == pytest.approx(digits_model.card.metrics["accuracy"])
    assert info.provider.name == "CPUExecutionProvider"
    assert client.model("digits").version == 1
    with pytest.raises(NotFound):
        client.model("cats")


def test_importing_the_client_does_not_load_onnx_runtime() -> None:
    """Client teams import service.client without paying for the server's runtime."""
    import subprocess
    import sys

    code = ("import sys, service.client; "
            "print('onnxruntime' in sys.modules, 'service.core.inference' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["False", "False"]
