"""A tiny ONNX classifier built with onnx.helper (torch-free), for tests that need a real graph
but no trained weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_graph(path: Path, n_classes: int, *, size: int = 4, seed: int = 0,
               scale: float = 1.0) -> Path:
    """pixels (N,3,S,S) -> global average pool -> linear -> softmax -> probabilities (N,C): the
    image's mean colour decides (``scale`` spreads the weights, so the colours split clearly)."""
    w = np.random.default_rng(seed).normal(scale=scale, size=(3, n_classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                       ["batch", n_classes])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
