"""``--variant int8|fp16``: serving the reduced-precision variant export recorded in model.json.

On the bundled models/digits/1, whose model.json records an int8 variant measured on its
validation split: served, it must reproduce that recorded accuracy, and answer differently
from model.onnx (it is another graph), over the real gRPC server.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from service_testkit import REPO_ROOT, RunningServer, core_config

from service._proto.tta_serve.v1 import classifier_pb2 as pb
from service.client import Client
from service.core import CoreConfig, InferenceCore, ModelUnavailable
from service.http.schema import model_info_body
from service.model_repository import ModelRepository

MODELS = REPO_ROOT / "models"
CARD = MODELS / "digits" / "1" / "model.json"
pytestmark = pytest.mark.skipif(
    not CARD.is_file() or "int8" not in json.loads(CARD.read_text()).get("variants", {}),
    reason="models/digits/1 with an int8 variant is not in this checkout")


@pytest.fixture(scope="module")
def int8_server() -> Iterator[RunningServer]:
    running = RunningServer(core_config(MODELS, variant="int8", default_model="digits"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def validation_split(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[bytes, str]]:
    data = pytest.importorskip("training.data")
    card = ModelRepository(MODELS).resolve("digits").card
    recipe = (card.recipe or {}).get("data") or {}
    root = data.make_digits(tmp_path_factory.mktemp("variants") / "digits")
    split = data.load_items(root, valid_pct=recipe["valid_pct"], seed=recipe["seed"],
                            check_images=False)
    return [(Path(p).read_bytes(), split.classes[y])
            for p, y in zip(split.valid.paths, split.valid.labels, strict=True)]


def test_the_int8_variant_reproduces_its_recorded_accuracy(
        int8_server: RunningServer, validation_split: list[tuple[bytes, str]]):
    with Client(f"127.0.0.1:{int8_server.port}") as client:
        info = client.model("digits")
        assert info.variant == "int8"
        recorded = info.variants["int8"]
        assert recorded["file"] == "model.int8.onnx"
        report = client.evaluate(validation_split)
    n = len(validation_split)
    assert report.n == n == recorded["n_images"]
    # Dynamic int8 quantises activations with each forward pass's own min/max; the core runs such
    # a graph row by row (below), so the served accuracy is the recorded one, image for image.
    assert round(report.accuracy * n) == round(recorded["accuracy"] * n)


def test_an_int8_answer_does_not_depend_on_its_batch(int8_server: RunningServer,
                                                     validation_split: list[tuple[bytes, str]]):
    # An image alone and the same image batched with 31 others get the same numbers.
    images = [b for b, _ in validation_split[:32]]
    alone = [int8_server.run(int8_server.core.predict(b, top_k=10)) for b in images]
    together = int8_server.run(int8_server.core.predict_batch(images, top_k=10))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a.probabilities, b.probabilities)


def test_the_int8_variant_is_another_graph(int8_server: RunningServer,
                                           validation_split: list[tuple[bytes, str]]):
    images = [b for b, _ in validation_split[:64]]
    # The plain path on both: with tta=auto (a calibrated model's default) an image near the
    # threshold may take the plain path on one graph and the TTA path on the other.
    with InferenceCore.create(core_config(MODELS, default_model="digits")).start() as plain:
        fp32 = [int8_server.run(plain.predict(b, tta="off", top_k=10)) for b in images]
    int8 = [int8_server.run(int8_server.core.predict(b, tta="off", top_k=10)) for b in images]
    diff = max(float(np.abs(a.probabilities - b.probabilities).max())
               for a, b in zip(fp32, int8, strict=True))
    assert 1e-4 < diff <= 0.2  # quantised: close, not equal (export measured ~0.04)
    agreement = np.mean([a.label == b.label for a, b in zip(fp32, int8, strict=True)])
    assert agreement >= 0.95
    reply = int8_server.stub.GetModel(pb.GetModelRequest(name="digits"), timeout=10)
    assert reply.variant == "int8" and "int8" in reply.variants.fields
    body = model_info_body(int8_server.core.get_model("digits"))
    assert body.variant == "int8" and body.variants["int8"]["accuracy"] > 0.9


def test_a_missing_variant(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # Asked for by name: the version is refused (and with it the start, for the default model).
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        InferenceCore.create(core_config(MODELS, variant="digits=fp16",
                                         default_model="digits")).start()
    assert "has no fp16 variant" in caplog.text and "training export --fp16" in caplog.text
    # Asked for every model: those without one serve model.onnx.
    config = core_config(MODELS, variant="fp16", default_model="digits")
    with InferenceCore.create(config).start() as core:
        assert core.get_model("digits").variant is None


def test_a_changed_variant_file_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    models = tmp_path / "models"
    shutil.copytree(MODELS / "digits" / "1", models / "digits" / "1")  # v1 alone: no fallback
    variant = models / "digits" / "1" / "model.int8.onnx"
    variant.write_bytes(variant.read_bytes() + b"\0")
    with pytest.raises(ModelUnavailable):
        InferenceCore.create(core_config(models, variant="int8")).start()
    assert "sha256 differs from model.json variants.int8.sha256" in caplog.text


def test_variant_spec_is_checked():
    with pytest.raises(ValueError, match="int4"):
        CoreConfig(models_dir=MODELS, variant="int4")
    config = CoreConfig(models_dir=MODELS, variant="digits=int8, cats=fp16")
    assert config.variant_for("digits") == ("int8", True)
    assert config.variant_for("dogs") == (None, False)
    assert CoreConfig(models_dir=MODELS, variant="int8").variant_for("x") == ("int8", False)
