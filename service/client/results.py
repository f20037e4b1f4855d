"""The client's typed results (frozen dataclasses), read from gRPC messages or HTTP JSON bodies."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf import json_format

from service._proto.tta_serve.v1 import classifier_pb2 as pb
from service.class_score import ClassScore
from service.evaluation_report import ClassMetrics, EvaluationReport, classification_text


@dataclass(frozen=True)
class Prediction:
    """One image's answer: top-k classes (most probable first) and which model gave it.

    What the wire carries, under the wire's names; the core's ``service.core.Prediction`` has
    the same names and adds what no wire sends (the whole probability vector, the temperature).
    """

    classes: tuple[ClassScore, ...]
    model: str
    model_version: int
    tta: bool
    tta_views: int  # views combined (1 without TTA)
    calibrated: bool = False  # probabilities through the model's fitted temperature
    unsure: bool = False  # top-1 below min_confidence: "not sure" (classes still given)
    path: str = "plain"  # which path answered: "plain" or "tta"
    views_used: tuple[str, ...] = ()
    tta_mode: str = "off"  # asked (or the model's default): "off", "on", "auto"
    min_confidence: float = 0.0

    @property
    def label(self) -> str:
        return self.classes[0].label

    @property
    def probability(self) -> float:
        return self.classes[0].probability


@dataclass(frozen=True)
class ExecutionProvider:
    name: str  # e.g. CUDAExecutionProvider
    device: str  # cpu | cuda
    requested: str  # auto | cpu | cuda


@dataclass(frozen=True)
class ModelInfo:
    """A served model version, as ListModels / GetModel describe it.

    The wire's flat view of the core's ``service.core.ModelInfo``: TTA as views/combine/beta
    rather than a TTASpec, the calibration as plain numbers, no server path; a client neither
    imports the core nor needs the server's types to read it.
    """

    name: str
    version: int
    repository_versions: tuple[int, ...]
    classes: tuple[str, ...]
    input_size: int
    tta_views: tuple[str, ...]
    tta_combine: str
    tta_beta: float | None
    metrics: dict[str, Any]  # recorded at export: accuracy, tta_accuracy, variants' ...
    is_default: bool
    created_at: str
    provider: ExecutionProvider
    variant: str | None = None  # the reduced-precision variant served; None = model.onnx
    variants: dict[str, Any] = field(default_factory=dict)  # per kind: accuracy, file, bytes ...
    # calibration (False: exported before it; temperature 1, TTA off by default, no abstention)
    calibrated: bool = False
    default_tta: str = "off"
    temperature: float = 1.0
    tta_temperature: float = 1.0
    auto_threshold: float | None = None
    min_confidence: float = 0.0
    calibration: dict[str, Any] = field(default_factory=dict)  # what export measured


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: the report (the same class training and the servers use) and its PNG."""

    model: str
    model_version: int
    tta: bool
    report: EvaluationReport
    confusion_png: bytes
    ece: float = 0.0  # expected calibration error of the top-1 probabilities (15 bins)
    tta_mode: str = "off"
    tta_answers: int = 0  # answers that combined the TTA views
    calibrated: bool = False

    @property
    def accuracy(self) -> float:
        return self.report.accuracy

    @property
    def n(self) -> int:
        return self.report.n

    def text(self) -> str:
        """Precision/recall/F1 per class, accuracy and most-confused pairs, fixed width."""
        return classification_text(self.report)


def prediction_from_proto(message: pb.PredictResponse) -> Prediction:
    return Prediction(
        classes=tuple(ClassScore(c.label, c.index, c.probability) for c in message.classes),
        model=message.model, model_version=message.model_version, tta=message.tta,
        tta_views=message.tta_views, calibrated=message.calibrated, unsure=message.unsure,
        path=message.path or ("tta" if message.tta else "plain"),
        views_used=tuple(message.views_used), tta_mode=message.tta_mode or "off",
        min_confidence=message.min_confidence)


def model_info_from_proto(message: pb.ModelInfo) -> ModelInfo:
    p = message.provider
    return ModelInfo(
        name=message.name, version=message.version,
        repository_versions=tuple(message.repository_versions),
        classes=tuple(message.classes), input_size=message.input_size,
        tta_views=tuple(message.tta_views), tta_combine=message.tta_combine,
        tta_beta=message.tta_beta if message.HasField("tta_beta") else None,
        metrics=json_format.MessageToDict(message.metrics),
        is_default=message.is_default, created_at=message.created_at,
        provider=ExecutionProvider(p.name, p.device, p.requested),
        variant=message.variant or None, variants=json_format.MessageToDict(message.variants),
        calibrated=message.calibrated, default_tta=message.default_tta or "off",
        temperature=message.temperature or 1.0, tta_temperature=message.tta_temperature or 1.0,
        auto_threshold=message.auto_threshold if message.HasField("auto_threshold") else None,
        min_confidence=message.min_confidence,
        calibration=json_format.MessageToDict(message.calibration))


def evaluation_from_proto(message: pb.EvaluateResponse) -> Evaluation:
    classes = list(message.confusion.classes)
    k = len(classes)
    confusion = np.asarray(message.confusion.counts, dtype=np.int64).reshape(k, k)
    report = EvaluationReport(
        classes=classes, confusion=confusion, accuracy=message.accuracy, n=message.n,
        per_class=[ClassMetrics(m.name, m.precision, m.recall, m.f1, m.support)
                   for m in message.per_class],
        most_confused=[(p.actual, p.predicted, p.count) for p in message.most_confused])
    return Evaluation(model=message.model, model_version=message.model_version, tta=message.tta,
                      report=report, confusion_png=message.confusion_png, ece=message.ece,
                      tta_mode=message.tta_mode or ("on" if message.tta else "off"),
                      tta_answers=message.tta_answers, calibrated=message.calibrated)


# ---- the HTTP API's JSON bodies (tta-serve predict --url http://...)


def prediction_from_json(body: dict[str, Any]) -> Prediction:
    return Prediction(classes=tuple(ClassScore(c["label"], c["index"], c["probability"])
                                    for c in body["classes"]),
                      model=body["model"], model_version=body["model_version"],
                      tta=body["tta"], tta_views=body["tta_views"],
                      calibrated=body.get("calibrated", False), unsure=body.get("unsure", False),
                      path=body.get("path", "tta" if body["tta"] else "plain"),
                      views_used=tuple(body.get("views_used", ())),
                      tta_mode=body.get("tta_mode", "off"),
                      min_confidence=body.get("min_confidence", 0.0))


def model_info_from_json(body: dict[str, Any]) -> ModelInfo:
    p = body["provider"]
    return ModelInfo(
        name=body["name"], version=body["version"],
        repository_versions=tuple(body["repository_versions"]), classes=tuple(body["classes"]),
        input_size=body["input_size"], tta_views=tuple(body["tta_views"]),
        tta_combine=body["tta_combine"], tta_beta=body.get("tta_beta"),
        metrics=body.get("metrics") or {}, is_default=body["is_default"],
        created_at=body["created_at"],
        provider=ExecutionProvider(p["name"], p["device"], p["requested"]),
        variant=body.get("variant"), variants=body.get("variants") or {},
        **_calibration_from_json(body.get("calibration") or {}))


def _calibration_from_json(c: dict[str, Any]) -> dict[str, Any]:
    t = c.get("temperature") or {}
    served = {"calibrated", "temperature", "default_tta", "auto_threshold", "min_confidence"}
    return dict(calibrated=c.get("calibrated", False), default_tta=c.get("default_tta", "off"),
                temperature=t.get("plain", 1.0), tta_temperature=t.get("tta", 1.0),
                auto_threshold=c.get("auto_threshold"),
                min_confidence=c.get("min_confidence", 0.0),
                calibration={k: v for k, v in c.items() if k not in served})


def evaluation_from_json(body: dict[str, Any]) -> Evaluation:
    """An evaluation from ``POST /evaluate``'s JSON body."""
    report = EvaluationReport(
        classes=body["classes"], confusion=np.asarray(body["confusion"], dtype=np.int64),
        accuracy=body["accuracy"], n=body["n"],
        per_class=[ClassMetrics(**m) for m in body["per_class"]],
        most_confused=[(p["actual"], p["predicted"], p["count"])
                       for p in body["most_confused"]])
    return Evaluation(model=body["model"], model_version=body["model_version"],
                      tta=body["tta"], report=report,
                      confusion_png=base64.b64decode(body["confusion_png_base64"]),
                      ece=body.get("ece", 0.0), tta_mode=body.get("tta_mode", "off"),
                      tta_answers=body.get("tta_answers", 0),
                      calibrated=body.get("calibrated", False))
