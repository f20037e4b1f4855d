"""The KServe peer of bench.serving preprocesses exactly as we do, so the comparison is fair.

The peer's model class runs in KServe's own venv (bench/peers/kserve_setup.sh); its image path
(``classify``, ``image_bytes``) needs no kserve, so CI checks it here against our core on the
bundled cifar10 model (the version our core serves by default) and real held-out photos, each
side answering plain (no TTA) with the card's plain temperature.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.peers.kserve_model import classify, image_bytes, plain_temperature
from service.core import CoreConfig, InferenceCore
from service.imaging import EvalSpec, TTASpec, decode_side

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = max((d for d in (ROOT / "models" / "cifar10").iterdir() if d.name.isdigit()),
               key=lambda d: int(d.name))
PHOTOS = sorted((ROOT / "tests" / "data" / "cifar10_heldout").glob("*/*.jpg"))[::10]


def test_the_peer_answers_what_our_core_answers_on_real_photos():
    card = json.loads((MODEL_DIR / "model.json").read_text())
    spec = EvalSpec.from_dict(card["eval_transform"])
    side = decode_side(spec, TTASpec.from_dict(card["tta"]))
    session = ort.InferenceSession(str(MODEL_DIR / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    images = [p.read_bytes() for p in PHOTOS]
    peer = classify(session, spec, side, images, plain_temperature(card))

    async def ours() -> list:
        core = InferenceCore.create(CoreConfig(models_dir=ROOT / "models", default_model="cifar10",
                                               device="cpu", poll_interval_s=0)).start()
        try:
            return [await core.predict(image, tta="off") for image in images]
        finally:
            core.stop()

    predictions = asyncio.run(ours())
    assert {p.version for p in predictions} == {int(MODEL_DIR.name)}
    assert len(images) == 10
    ours_probs = np.stack([p.probabilities for p in predictions])
    np.testing.assert_allclose(peer, ours_probs, atol=1e-5)
    assert [card["classes"][i] for i in peer.argmax(axis=1)] == [p.label for p in predictions]


def test_images_arrive_raw_over_grpc_and_base64_over_rest():
    jpeg = PHOTOS[0].read_bytes()
    grpc_tensor = np.array([jpeg], dtype=object)  # KServe's as_numpy of raw BYTES
    rest_tensor = np.array([base64.b64encode(jpeg).decode("ascii")])  # its REST decoder: text
    assert image_bytes(grpc_tensor) == [jpeg]
    assert image_bytes(rest_tensor) == [jpeg]
