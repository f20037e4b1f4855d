"""The inference core shared by every front end (gRPC, HTTP, KServe v2); torch-free.

Public API (details in ``service.core.inference``)::

    from service.core import CoreConfig, InferenceCore, VersionPolicy
    core = InferenceCore.create(CoreConfig(models_dir="models")).start()
    await core.predict(image_bytes, model=None, version=None, tta=False, top_k=5) -> Prediction
    await core.predict_batch([bytes, ...], ...) -> list[Prediction | CoreError]
    await core.predict_pixels(float32 (N, 3, S, S) in [0, 1], ...) -> list[Prediction]
    await core.evaluate([(bytes, label), ...], tta=True) -> EvaluationResult
    core.list_models() -> list[ModelInfo]; core.get_model(name, version) -> ModelInfo
    with core.pin(model, version) as pinned: await pinned.predict(...)  # one version throughout
    core.provider -> ProviderInfo; core.stats -> CoreStats; core.ready -> bool
    core.reload() -> list[str]; core.stop()

Errors are ``service.core.errors`` classes (all ``CoreError``), each with its wire ``status``
(gRPC code + HTTP status): front ends translate that in one line.
"""

import importlib
from typing import TYPE_CHECKING, Any

# Where each public name lives. Loaded on first use (PEP 562) so that importing one light module
# -- ``service.core.errors`` from the client, say -- does not load ONNX Runtime with the rest.
_HOMES = {
    "CoreConfig": "config", "VersionPolicy": "config",
    "CoreError": "errors", "DeadlineExceeded": "errors", "DeviceUnavailable": "errors",
    "ImageTooLarge": "errors",
    "InvalidImage": "errors", "InvalidRequest": "errors", "ModelNotFound": "errors",
    "ModelUnavailable": "errors", "Overloaded": "errors",
    "EvaluationResult": "evaluation",
    "InferenceCore": "inference", "PinnedModel": "inference",
    "ClassScore": "prediction", "Prediction": "prediction",
    "ModelInfo": "models",
    "ProviderInfo": "runtime",
    "CoreStats": "stats",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from service.core.config import CoreConfig, VersionPolicy
    from service.core.errors import (
        CoreError,
        DeadlineExceeded,
        DeviceUnavailable,
        ImageTooLarge,
        InvalidImage,
        InvalidRequest,
        ModelNotFound,
        ModelUnavailable,
        Overloaded,
    )
    from service.core.evaluation import EvaluationResult
    from service.core.inference import InferenceCore, PinnedModel
    from service.core.models import ModelInfo
    from service.core.prediction import ClassScore, Prediction
    from service.core.runtime import ProviderInfo
    from service.core.stats import CoreStats

__all__ = [
    "ClassScore",
    "CoreConfig",
    "CoreError",
    "CoreStats",
    "DeadlineExceeded",
    "DeviceUnavailable",
    "EvaluationResult",
    "ImageTooLarge",
    "InferenceCore",
    "InvalidImage",
    "InvalidRequest",
    "ModelInfo",
    "ModelNotFound",
    "ModelUnavailable",
    "Overloaded",
    "PinnedModel",
    "Prediction",
    "ProviderInfo",
    "VersionPolicy",
]
