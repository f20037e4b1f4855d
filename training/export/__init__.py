"""Checkpoint -> verified, versioned ONNX model in the model repository.

``pipeline.export_checkpoint`` rebuilds the checkpoint's evaluated model (training.checkpoint),
exports it (``onnx_graph``), proves ONNX Runtime reproduces PyTorch on random and real images
(``parity``, on ``check_images``), writes the optional fp16/int8 ``variants`` and publishes the
staged version (``publish``).
"""

from training.export.onnx_graph import OPSET
from training.export.parity import FP32_ATOL
from training.export.pipeline import export_checkpoint

__all__ = ["FP32_ATOL", "OPSET", "export_checkpoint"]
