"""The client's typed results (frozen dataclasses), read from gRPC messages or HTTP JSON bodies."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf import json_format

from service._proto.tta_serve.v1 import classifier_pb2 as pb
from service.evaluation_report import ClassMetrics, EvaluationReport, classification_text


@dataclass(frozen=True)
class ClassScore:
    label: str
    index: int  # in the model's class list
    probability: float


@dataclass(frozen=True)
class Prediction:
    """One image's answer: top-k classes (most probable first) and which model gave it."""

    classes: tuple[ClassScore, ...]
    model: str
    model_version: int
    tta: bool
    tta_views: int  # views combined (1 without TTA)

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
    """A served model version, as ListModels / GetModel describe it."""

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


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: the report (the same class training and the servers use) and its PNG."""

    model: str
    model_version: int
    tta: bool
    report: EvaluationReport
    confusion_png: bytes

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
        tta_views=message.tta_views)


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
        variant=message.variant or None, variants=json_format.MessageToDict(message.variants))


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
                      report=report, confusion_png=message.confusion_png)


# ---- the HTTP API's JSON bodies (tta-serve predict --url http://...)


def prediction_from_json(body: dict[str, Any]) -> Prediction:
    return Prediction(classes=tuple(ClassScore(c["label"], c["index"], c["probability"])
                                    for c in body["classes"]),
                      model=body["model"], model_version=body["model_version"],
                      tta=body["tta"], tta_views=body["tta_views"])


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
        variant=body.get("variant"), variants=body.get("variants") or {})


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
                      confusion_png=base64.b64decode(body["confusion_png_base64"]))
