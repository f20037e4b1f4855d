"""Peer: the plain synchronous grpcio server a user would write first -- one image per call.

grpcio's ``helloworld`` shape: ``grpc.server(ThreadPoolExecutor(max_workers=10))``, a servicer
whose Predict decodes the image, runs the model's evaluation transform (service.imaging, the same
preprocessing as ours) and one ``session.run`` on a batch of 1, with ONNX Runtime's default
session options. It speaks tta_serve.v1.Classifier/Predict so the same load client measures it.
No dynamic batching, no back-pressure, no health service.

    python bench/peers/plain_grpc_server.py --model-dir models/digits/1 --port 50052
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script

from service._proto.tta_serve.v1 import classifier_pb2 as pb  # noqa: E402
from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc  # noqa: E402
from service.imaging import (  # noqa: E402
    EvalSpec,
    TTASpec,
    combine_tta,
    decode_image,
    eval_view,
    to_model_input,
    tta_views,
)


class PlainClassifier(pb_grpc.ClassifierServicer):
    def __init__(self, model_dir: Path) -> None:
        card = json.loads((model_dir / "model.json").read_text())
        self.classes = card["classes"]
        self.spec = EvalSpec.from_dict(card["eval_transform"])
        self.tta = TTASpec.from_dict(card["tta"])
        self.session = ort.InferenceSession(str(model_dir / "model.onnx"),
                                            providers=["CPUExecutionProvider"])

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext):
        try:
            img = decode_image(request.image)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        views = tta_views(img, self.spec, self.tta) if request.tta else eval_view(img, self.spec)
        probs = self.session.run(["probabilities"], {"pixels": to_model_input(views)})[0]
        p = combine_tta(probs[None], self.tta)[0] if request.tta else probs[0]
        top = np.argsort(-p)[: request.top_k or 5]
        return pb.PredictResponse(
            request_id=request.request_id, tta=request.tta,
            tta_views=len(self.tta.views) if request.tta else 1,
            classes=[pb.ClassScore(label=self.classes[i], index=int(i), probability=float(p[i]))
                     for i in top])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="NAME/VERSION folder")
    parser.add_argument("--port", type=int, default=50052)
    parser.add_argument("--workers", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    pb_grpc.add_ClassifierServicer_to_server(PlainClassifier(args.model_dir), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    logging.info("plain grpcio server on 127.0.0.1:%d", args.port)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
