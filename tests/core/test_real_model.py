"""The bundled default model (models/digits/1) through the gRPC server.

Its model.json records the validation accuracy measured by training (with and without TTA) and
the recipe that made the split; the split is rebuilt here with training's own data code, so an
Evaluate call over it must reproduce those numbers. Skipped until the model is in the tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from service_testkit import REPO_ROOT, RunningServer, core_config

from service._proto.tta_serve.v1 import classifier_pb2 as pb
from service.model_repository import ModelRepository

MODELS = REPO_ROOT / "models"

pytestmark = pytest.mark.skipif(not (MODELS / "digits" / "1" / "model.json").is_file(),
                                reason="models/digits/1 is not in this checkout")


@pytest.fixture(scope="module")
def real_server() -> Iterator[RunningServer]:
    running = RunningServer(core_config(MODELS, default_model="digits"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def validation_split(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[bytes, str]]:
    data = pytest.importorskip("training.data")
    card = ModelRepository(MODELS).resolve("digits").card
    recipe = (card.recipe or {}).get("data") or {}
    if Path(recipe.get("path", "")).name != "digits" or recipe.get("csv"):
        pytest.skip(f"the default model was not trained on make-digits data ({recipe})")
    root = data.make_digits(tmp_path_factory.mktemp("real") / "digits")
    split = data.load_items(root, valid_pct=recipe["valid_pct"], seed=recipe["seed"],
                            check_images=False)
    return [(Path(p).read_bytes(), split.classes[y])
            for p, y in zip(split.valid.paths, split.valid.labels, strict=True)]


def test_evaluate_reproduces_the_recorded_accuracy(real_server: RunningServer,
                                                   validation_split: list[tuple[bytes, str]]):
    card = real_server.core.get_model("digits")
    for tta, key in ((True, "tta_accuracy"), (False, "accuracy")):
        if card.metrics.get(key) is None:
            continue
        requests = [pb.EvaluateRequest(options=pb.EvaluateOptions(tta=tta))]
        requests += [pb.EvaluateRequest(image=b, label=y) for b, y in validation_split]
        report = real_server.stub.Evaluate(iter(requests), timeout=120)
        assert report.n == len(validation_split) == card.metrics.get("n_valid", report.n)
        assert sum(report.confusion.counts) == report.n
        assert round(report.accuracy * report.n) == round(card.metrics[key] * report.n), key


def test_predicts_real_digits(real_server: RunningServer,
                              validation_split: list[tuple[bytes, str]]):
    items = validation_split[:50]
    futures = [real_server.stub.Predict.future(pb.PredictRequest(image=b, tta=True), timeout=30)
               for b, _ in items]
    right = sum(f.result().classes[0].label == y for f, (_, y) in zip(futures, items, strict=True))
    assert right >= 0.9 * len(items)
