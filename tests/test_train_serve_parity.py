"""Train/serve parity: on the same image, the tensor the serving core feeds ONNX Runtime equals the
training pipeline's evaluation tensor (plain and every TTA view), and the answer is the same.

The ONNX session is real; a pass-through wrapper only records what the core feeds it. The
answer is the graph's output with the model's recorded temperature (service.calibration).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.calibration import apply_temperature
from service.core import CoreConfig, InferenceCore
from service.imaging import combine_tta
from service.model_repository import ModelRepository
from training.augment import to_float_nchw
from training.data import Items, load_items, make_digits, make_eval_loader

MODELS = Path(__file__).parents[1] / "models"


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_digits(tmp_path_factory.mktemp("parity") / "digits")


@pytest.fixture
def fed_to_onnx(monkeypatch) -> list[np.ndarray]:
    fed: list[np.ndarray] = []
    real_run = ort.InferenceSession.run

    def recording_run(self, output_names, input_feed, *args, **kwargs):
        fed.append(np.array(next(iter(input_feed.values())), copy=True))
        return real_run(self, output_names, input_feed, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", recording_run)
    return fed


@pytest.mark.parametrize("tta", [False, True])
def test_core_feeds_onnx_exactly_the_training_eval_tensor(digits, fed_to_onnx, tta):
    card = ModelRepository(MODELS).resolve("digits").card
    split = load_items(digits, valid_pct=0.2, seed=42)
    picked = list(range(0, len(split.valid.paths), 36))[:10]  # a spread of classes
    items = Items([split.valid.paths[i] for i in picked], [split.valid.labels[i] for i in picked])
    loader = make_eval_loader(items, eval_spec=card.eval_spec, tta=card.tta if tta else None,
                              batch_size=len(picked))
    xb, _ = next(iter(loader))
    n_views = len(card.tta.views) if tta else 1
    training = to_float_nchw(xb).numpy().reshape(len(picked), n_views, 3, card.input_size,
                                                 card.input_size)

    # One image per forward pass, so each recorded feed is exactly one request's views.
    config = CoreConfig(models_dir=MODELS, default_model="digits", max_batch_size=1,
                        poll_interval_s=0)
    with InferenceCore.create(config) as core:
        fed_to_onnx.clear()  # drop the start-up smoke pass
        answers = [asyncio.run(core.predict(Path(p).read_bytes(), tta=tta)) for p in items.paths]
        core_feeds = list(fed_to_onnx)
    assert len(core_feeds) == len(picked)
    sess = ort.InferenceSession(str(MODELS / "digits" / "1" / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    for i, (fed, answer) in enumerate(zip(core_feeds, answers, strict=True)):
        assert fed.shape == training[i].shape
        np.testing.assert_allclose(fed, training[i], atol=1e-5, rtol=0)
        # The same tensor through the same graph and combination gives the same class.
        probs = sess.run(None, {card.input_name: training[i]})[0]
        expected = combine_tta(probs[None], card.tta)[0] if tta else probs[0]
        # served calibrated: the temperature model.json records for the path (1 before it)
        expected = apply_temperature(expected, card.calibration.temperature_for(tta))
        assert answer.classes[0].index == int(expected.argmax())
        np.testing.assert_allclose(answer.probabilities, expected, atol=1e-5)
