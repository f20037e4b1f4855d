"""Core objects -> ``tta_serve.v1`` protobuf messages, and a core error's gRPC status.

Pure functions, apart from the server so that ``tta-serve predict`` (which describes an
in-process model in the client's types by way of the same message) need not load the server.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from service._proto.tta_serve.v1 import classifier_pb2 as pb
from service.core import CoreError, ModelInfo, Prediction, ProviderInfo
from service.core.errors import Status, retry_after_s
from service.core.evaluation import EvaluationResult
from service.model_repository import variants_to_dict


def status_code(error: CoreError) -> grpc.StatusCode:
    """The gRPC status of a core error: its ``Status`` names the code (service.core.errors)."""
    return grpc.StatusCode[error.status.name]


def error_trailers(status: Status) -> tuple[tuple[str, str], ...]:
    """Trailing metadata of a refusal: ``retry-after`` (seconds) on UNAVAILABLE, as HTTP's
    Retry-After header."""
    seconds = retry_after_s(status)
    return (("retry-after", str(seconds)),) if seconds is not None else ()
_MODES = {pb.TTA_MODE_OFF: "off", pb.TTA_MODE_ON: "on", pb.TTA_MODE_AUTO: "auto"}


def requested_tta(mode: int, tta: bool, unset: str | None = None) -> bool | str | None:
    """The core's ``tta`` from a request's ``tta_mode`` and the older ``tta`` flag: the mode when
    set, else ON when the flag is, else ``unset`` (None: the model's default)."""
    if mode in _MODES:
        return _MODES[mode]
    return True if tta else unset


def requested_min_confidence(request: pb.PredictRequest) -> float | None:
    return request.min_confidence if request.HasField("min_confidence") else None


def prediction_to_proto(prediction: Prediction, request_id: str = "") -> pb.PredictResponse:
    return pb.PredictResponse(
        request_id=request_id,
        classes=[pb.ClassScore(label=s.label, index=s.index, probability=s.probability)
                 for s in prediction.classes],
        **prediction.wire_fields(),
    )


def error_to_proto(error: CoreError, request_id: str = "") -> pb.PredictResponse:
    return pb.PredictResponse(request_id=request_id, status=pb.Status(
        code=status_code(error).value[0], message=str(error)))


def provider_to_proto(provider: ProviderInfo) -> pb.ExecutionProvider:
    return pb.ExecutionProvider(name=provider.name, device=provider.device,
                                requested=provider.requested)


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    json_format.ParseDict(json_format_safe(values), out)
    return out


def json_format_safe(value: Any) -> Any:
    """model.json metrics as Struct-compatible values (tuples to lists, NaN/None kept)."""
    if isinstance(value, dict):
        return {str(k): json_format_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_format_safe(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def model_info_to_proto(info: ModelInfo) -> pb.ModelInfo:
    message = pb.ModelInfo(
        name=info.name,
        version=info.version,
        repository_versions=list(info.repository_versions),
        classes=list(info.classes),
        input_size=info.input_size,
        tta_views=list(info.tta.views),
        tta_combine=info.tta.combine,
        metrics=_struct(info.metrics),
        is_default=info.is_default,
        created_at=info.created_at,
        provider=provider_to_proto(info.provider),
        variant=info.variant or "",
        variants=_struct(variants_to_dict(info.variants)),
    )
    if info.tta.beta is not None and info.tta.combine == "mean":
        message.tta_beta = info.tta.beta
    _calibration_fields(message, info)
    return message


def _calibration_fields(message: pb.ModelInfo, info: ModelInfo) -> None:
    c = info.calibration
    message.calibrated = c.calibrated
    message.temperature = c.temperature
    message.tta_temperature = c.tta_temperature
    message.default_tta = c.default_tta
    message.min_confidence = c.min_confidence
    message.tta_weights.extend(info.tta.weights or ())
    if c.auto_threshold is not None:
        message.auto_threshold = c.auto_threshold
    message.calibration.CopyFrom(_struct(c.evidence))


def evaluation_to_proto(result: EvaluationResult) -> pb.EvaluateResponse:
    report = result.report
    return pb.EvaluateResponse(
        model=result.model,
        model_version=result.version,
        tta=result.tta,
        n=report.n,
        accuracy=report.accuracy,
        per_class=[pb.ClassMetrics(name=m.name, precision=m.precision, recall=m.recall,
                                   f1=m.f1, support=m.support) for m in report.per_class],
        confusion=pb.ConfusionMatrix(classes=list(report.classes),
                                     counts=report.confusion.astype(int).ravel().tolist()),
        most_confused=[pb.ConfusedPair(actual=a, predicted=p, count=c)
                       for a, p, c in report.most_confused],
        confusion_png=result.png,
        ece=result.ece,
        calibrated=result.calibrated,
        tta_mode=result.tta_mode,
        tta_answers=result.tta_answers,
    )
