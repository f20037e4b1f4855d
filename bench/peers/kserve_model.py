"""Peer: KServe's Python model server with the ONNX Runtime model class a user would write.

KServe's custom-model shape (``kserve.Model`` with ``load`` and a plain ``predict``), Open
Inference Protocol on both wires (REST ``/v2/models/NAME/infer`` and gRPC
``inference.GRPCInferenceService``). Input ``image``: BYTES, one encoded image per element;
the same model file and the same evaluation transform as ours (service.imaging, imported from
the checkout: it is torch-free), ONNX Runtime's default session options. Output
``probabilities``: FP32 [N, classes]. Over REST the images are base64 strings (see
``image_bytes``). No dynamic batching (KServe's batcher is a separate
sidecar), no TTA; the model card's plain calibration temperature is applied, as our core
does for a ``tta=off`` answer (``service.calibration``). ``predict`` is synchronous, as in
KServe's examples: the model server runs it on its event loop.

Runs in KServe's own venv (``bash bench/peers/kserve_setup.sh``; the registry's ``kserve``
conflicts with our pins)::

    PYTHONPATH=. .cache/kserve-venv/bin/python bench/peers/kserve_model.py \
        --model_dir models/cifar10/2 --model_name cifar10 --http_port 8080 --grpc_port 8081
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.calibration import Calibration, apply_temperature
from service.imaging import (
    EvalSpec,
    TTASpec,
    decode_image,
    decode_side,
    eval_view,
    to_model_input,
)

OUTPUT = "probabilities"


def classify(session: ort.InferenceSession, spec: EvalSpec, side: int,
             images: list[bytes], temperature: float = 1.0) -> np.ndarray:
    """Encoded images -> (N, classes) probabilities, through our evaluation transform and the
    card's plain temperature (1: the graph's probabilities as they are)."""
    views = np.stack([eval_view(decode_image(data, min_side=side), spec) for data in images])
    probs = session.run([OUTPUT], {"pixels": to_model_input(views)})[0]
    return apply_temperature(probs, temperature) if temperature != 1.0 else probs


def plain_temperature(card: dict[str, Any]) -> float:
    """The temperature our core applies to a plain (tta=off) answer of this model card."""
    return Calibration.from_dict(card.get("calibration")).temperature_for(False)


def image_bytes(tensor: np.ndarray) -> list[bytes]:
    """A BYTES tensor (KServe's ``as_numpy``) as a flat list of encoded images.

    gRPC carries the raw bytes. KServe's REST decoder turns every BYTES element into a UTF-8
    string (binary JPEG bytes are refused), so over REST the images come base64-encoded, as in
    KServe's own image examples."""
    return [base64.b64decode(x) if isinstance(x, str) else bytes(x)
            for x in np.asarray(tensor, dtype=object).ravel()]


def build_model(model_dir: Path, name: str) -> Any:
    """The kserve.Model subclass instance (kserve is imported here: only its venv has it)."""
    import kserve
    from kserve import InferOutput, InferRequest, InferResponse

    class OnnxImageClassifier(kserve.Model):
        def __init__(self) -> None:
            super().__init__(name)
            self.ready = False

        def load(self) -> bool:
            card = json.loads((model_dir / "model.json").read_text())
            self.spec = EvalSpec.from_dict(card["eval_transform"])
            self.side = decode_side(self.spec, TTASpec.from_dict(card["tta"]))
            self.temperature = plain_temperature(card)
            self.session = ort.InferenceSession(str(model_dir / "model.onnx"),
                                                providers=["CPUExecutionProvider"])
            self.ready = True
            return self.ready

        def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
            images = image_bytes(payload.inputs[0].as_numpy())
            probs = classify(self.session, self.spec, self.side, images, self.temperature)
            output = InferOutput(name=OUTPUT, shape=list(probs.shape), datatype="FP32")
            output.set_data_from_numpy(probs, binary_data=True)
            return InferResponse(response_id=payload.id or "", model_name=self.name,
                                 infer_outputs=[output])

    return OnnxImageClassifier()


def main() -> None:
    from kserve import ModelServer, model_server

    parser = argparse.ArgumentParser(parents=[model_server.parser], description=__doc__)
    parser.add_argument("--model_dir", type=Path, required=True, help="NAME/VERSION folder")
    args, _ = parser.parse_known_args()
    model = build_model(args.model_dir, args.model_name)
    model.load()
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port).start([model])


if __name__ == "__main__":
    main()
