"""Peer: the plain BentoML service a user would write -- a batchable API over ONNX Runtime.

BentoML's own example shape: the model resolved once in ``__init__``, one ``@bentoml.api`` with
``batchable=True`` so BentoML's adaptive batching groups concurrent requests, the same model and
evaluation transform as ours (service.imaging), ONNX Runtime's default session options. No TTA.

    PLAIN_BENTOML_MODEL_DIR=models/digits/1 bentoml serve \
        bench.peers.plain_bentoml_service:PlainClassifier --port 3001
    curl -F images=@digit.png http://127.0.0.1:3001/predict
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import bentoml
import numpy as np
import onnxruntime as ort
from PIL.Image import Image

from service.imaging import EvalSpec, eval_view, to_model_input


@bentoml.service(traffic={"timeout": 60})
class PlainClassifier:
    def __init__(self) -> None:
        model_dir = Path(os.environ["PLAIN_BENTOML_MODEL_DIR"])
        card = json.loads((model_dir / "model.json").read_text())
        self.classes = card["classes"]
        self.spec = EvalSpec.from_dict(card["eval_transform"])
        self.session = ort.InferenceSession(str(model_dir / "model.onnx"),
                                            providers=["CPUExecutionProvider"])

    @bentoml.api(batchable=True, max_batch_size=32, max_latency_ms=1000)
    def predict(self, images: list[Image]) -> list[dict]:
        x = to_model_input(np.stack([eval_view(im.convert("RGB"), self.spec) for im in images]))
        probs = self.session.run(["probabilities"], {"pixels": x})[0]
        out = []
        for p in probs:
            top = np.argsort(-p)[:5]
            out.append({"classes": [{"label": self.classes[i], "probability": float(p[i])}
                                    for i in top]})
        return out
