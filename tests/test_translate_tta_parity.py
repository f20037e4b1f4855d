"""Translate TTA, training vs service: on the same 100 real held-out photos, the bundled
cifar10 v1 ONNX with its model.json (a tmp copy) listing airbench's translate views gets the
same TTA accuracy from training's evaluation (``training.evaluate.predict``) as from the
serving core (``InferenceCore.evaluate``), image by image.

Both sides run the real graph in ONNX Runtime. Training's evaluation takes a torch module and
applies its own softmax to the module's output; the graph already ends in a softmax, so the
adapter below hands training the log-probabilities, and softmax(log p) gives p back to float32
rounding (~1e-7). That is why probabilities are compared within 1e-5 while the accuracy and
every predicted class are compared exactly.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.core import CoreConfig, InferenceCore
from service.imaging import decode_image, decode_side, eval_view, tta_views
from service.model_repository import ModelRepository
from training.data import Items
from training.evaluate import predict

ROOT = Path(__file__).parents[1]
PHOTOS = ROOT / "tests" / "data" / "cifar10_heldout"
# airbench94's multi-crop TTA: the photo, its mirror, and both shifted by one pixel each way.
TRANSLATE_VIEWS = ["center", "hflip", "shift:+1,+1", "hflip_shift:+1,+1", "shift:-1,-1",
                   "hflip_shift:-1,-1"]


class OnnxAsTorch(torch.nn.Module):
    """The ONNX graph as the torch module training's evaluation calls (log-probabilities out)."""

    def __init__(self, session: ort.InferenceSession, input_name: str) -> None:
        super().__init__()
        self.session, self.input_name = session, input_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.session.run(None, {self.input_name: x.contiguous().numpy()})[0]
        return torch.log(torch.from_numpy(probs))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """models/cifar10/1 copied, its model.json listing the translate views."""
    root = tmp_path_factory.mktemp("translate") / "models"
    version = root / "cifar10" / "1"
    shutil.copytree(ROOT / "models" / "cifar10" / "1", version)
    card = json.loads((version / "model.json").read_text())
    card["tta"].update(views=TRANSLATE_VIEWS, combine="mean", beta=0.25)
    (version / "model.json").write_text(json.dumps(card))
    return root


@pytest.fixture(scope="module")
def photos(models_dir) -> Items:
    card = ModelRepository(models_dir).resolve("cifar10").card
    paths = sorted(PHOTOS.glob("*/*.jpg"))
    return Items(paths, [card.classes.index(p.parent.name) for p in paths])


def test_the_translate_views_are_real_views_of_the_photos(models_dir, photos):
    card = ModelRepository(models_dir).resolve("cifar10").card
    img = decode_image(photos.paths[0], min_side=decode_side(card.eval_spec, card.tta))
    views = tta_views(img, card.eval_spec, card.tta)
    assert views.shape == (6, 32, 32, 3)
    assert all(not (views[i] == eval_view(img, card.eval_spec)).all() for i in range(1, 6))


def test_training_tta_accuracy_equals_the_services(models_dir, photos):
    card = ModelRepository(models_dir).resolve("cifar10").card
    assert card.tta.views == tuple(TRANSLATE_VIEWS)
    session = ort.InferenceSession(str(models_dir / "cifar10" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    training = predict(OnnxAsTorch(session, card.input_name), photos, eval_spec=card.eval_spec,
                       tta=card.tta, device=torch.device("cpu"), batch_size=16,
                       progress=False)

    config = CoreConfig(models_dir=models_dir, default_model="cifar10", poll_interval_s=0)
    labelled = [(p.read_bytes(), card.classes[y]) for p, y in zip(photos.paths, photos.labels,
                                                                  strict=True)]
    with InferenceCore.create(config) as core:
        served = asyncio.run(core.evaluate(labelled, tta=True))
        answers = [asyncio.run(core.predict(image, tta=True)) for image, _ in labelled]

    assert served.tta and served.report.n == len(photos) == 100
    assert all(a.tta and a.tta_views == len(TRANSLATE_VIEWS) for a in answers)
    # Equal, not approximately: the same count of right answers, and the same class each time.
    assert served.report.accuracy == training.tta_accuracy
    assert [a.classes[0].index for a in answers] == training.tta_probs.argmax(1).tolist()
    served_probs = np.stack([a.probabilities for a in answers])
    np.testing.assert_allclose(served_probs, training.tta_probs, atol=1e-5, rtol=0)
    # The views matter: with them the photos score differently than the plain view alone.
    assert not np.allclose(training.tta_probs, training.probs, atol=1e-3)
    print(f"\n100 held-out photos: plain {training.accuracy:.2f}, translate TTA training "
          f"{training.tta_accuracy:.2f}, service {served.report.accuracy:.2f}; max |p diff| "
          f"{np.abs(served_probs - training.tta_probs).max():.2e}")
