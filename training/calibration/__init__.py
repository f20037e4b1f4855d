"""Calibration at export, on held-out photos: per-view probabilities of the served ONNX graph,
views chosen by greedy forward selection, temperatures fitted by NLL, the ``tta=auto`` and
abstention thresholds, and the report (reliability diagram, risk-coverage curve, view table).
What it fits is recorded in model.json and applied by the torch-free ``service.calibration``.
"""
