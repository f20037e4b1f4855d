from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TTAMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TTA_MODE_UNSPECIFIED: _ClassVar[TTAMode]
    TTA_MODE_OFF: _ClassVar[TTAMode]
    TTA_MODE_ON: _ClassVar[TTAMode]
    TTA_MODE_AUTO: _ClassVar[TTAMode]
TTA_MODE_UNSPECIFIED: TTAMode
TTA_MODE_OFF: TTAMode
TTA_MODE_ON: TTAMode
TTA_MODE_AUTO: TTAMode

class PredictRequest(_message.Message):
    __slots__ = ("image", "model", "version", "tta", "top_k", "request_id", "tta_mode", "min_confidence")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TTA_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TTA_MODE_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    model: str
    version: int
    tta: bool
    top_k: int
    request_id: str
    tta_mode: TTAMode
    min_confidence: float
    def __init__(self, image: _Optional[bytes] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., tta: _Optional[bool] = ..., top_k: _Optional[int] = ..., request_id: _Optional[str] = ..., tta_mode: _Optional[_Union[TTAMode, str]] = ..., min_confidence: _Optional[float] = ...) -> None: ...

class ClassScore(_message.Message):
    __slots__ = ("label", "index", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    index: int
    probability: float
    def __init__(self, label: _Optional[str] = ..., index: _Optional[int] = ..., probability: _Optional[float] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("request_id", "classes", "model", "model_version", "tta", "tta_views", "status", "calibrated", "unsure", "path", "views_used", "tta_mode", "min_confidence")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TTA_FIELD_NUMBER: _ClassVar[int]
    TTA_VIEWS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    UNSURE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    VIEWS_USED_FIELD_NUMBER: _ClassVar[int]
    TTA_MODE_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    classes: _containers.RepeatedCompositeFieldContainer[ClassScore]
    model: str
    model_version: int
    tta: bool
    tta_views: int
    status: Status
    calibrated: bool
    unsure: bool
    path: str
    views_used: _containers.RepeatedScalarFieldContainer[str]
    tta_mode: str
    min_confidence: float
    def __init__(self, request_id: _Optional[str] = ..., classes: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ..., model: _Optional[str] = ..., model_version: _Optional[int] = ..., tta: _Optional[bool] = ..., tta_views: _Optional[int] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., calibrated: _Optional[bool] = ..., unsure: _Optional[bool] = ..., path: _Optional[str] = ..., views_used: _Optional[_Iterable[str]] = ..., tta_mode: _Optional[str] = ..., min_confidence: _Optional[float] = ...) -> None: ...

class EvaluateOptions(_message.Message):
    __slots__ = ("model", "version", "tta", "min_confused", "tta_mode")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TTA_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFUSED_FIELD_NUMBER: _ClassVar[int]
    TTA_MODE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    tta: bool
    min_confused: int
    tta_mode: TTAMode
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., tta: _Optional[bool] = ..., min_confused: _Optional[int] = ..., tta_mode: _Optional[_Union[TTAMode, str]] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("options", "image", "label")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    options: EvaluateOptions
    image: bytes
    label: str
    def __init__(self, options: _Optional[_Union[EvaluateOptions, _Mapping]] = ..., image: _Optional[bytes] = ..., label: _Optional[str] = ...) -> None: ...

class ClassMetrics(_message.Message):
    __slots__ = ("name", "precision", "recall", "f1", "support")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    name: str
    precision: float
    recall: float
    f1: float
    support: int
    def __init__(self, name: _Optional[str] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., f1: _Optional[float] = ..., support: _Optional[int] = ...) -> None: ...

class ConfusionMatrix(_message.Message):
    __slots__ = ("classes", "counts")
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedScalarFieldContainer[str]
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, classes: _Optional[_Iterable[str]] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class ConfusedPair(_message.Message):
    __slots__ = ("actual", "predicted", "count")
    ACTUAL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    actual: str
    predicted: str
    count: int
    def __init__(self, actual: _Optional[str] = ..., predicted: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("model", "model_version", "tta", "n", "accuracy", "per_class", "confusion", "most_confused", "confusion_png", "ece", "calibrated", "tta_mode", "tta_answers")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TTA_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_FIELD_NUMBER: _ClassVar[int]
    MOST_CONFUSED_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_PNG_FIELD_NUMBER: _ClassVar[int]
    ECE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    TTA_MODE_FIELD_NUMBER: _ClassVar[int]
    TTA_ANSWERS_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: int
    tta: bool
    n: int
    accuracy: float
    per_class: _containers.RepeatedCompositeFieldContainer[ClassMetrics]
    confusion: ConfusionMatrix
    most_confused: _containers.RepeatedCompositeFieldContainer[ConfusedPair]
    confusion_png: bytes
    ece: float
    calibrated: bool
    tta_mode: str
    tta_answers: int
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[int] = ..., tta: _Optional[bool] = ..., n: _Optional[int] = ..., accuracy: _Optional[float] = ..., per_class: _Optional[_Iterable[_Union[ClassMetrics, _Mapping]]] = ..., confusion: _Optional[_Union[ConfusionMatrix, _Mapping]] = ..., most_confused: _Optional[_Iterable[_Union[ConfusedPair, _Mapping]]] = ..., confusion_png: _Optional[bytes] = ..., ece: _Optional[float] = ..., calibrated: _Optional[bool] = ..., tta_mode: _Optional[str] = ..., tta_answers: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExecutionProvider(_message.Message):
    __slots__ = ("name", "device", "requested")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    name: str
    device: str
    requested: str
    def __init__(self, name: _Optional[str] = ..., device: _Optional[str] = ..., requested: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "repository_versions", "classes", "input_size", "tta_views", "tta_combine", "tta_beta", "metrics", "is_default", "created_at", "provider", "variant", "variants", "calibrated", "temperature", "tta_temperature", "default_tta", "auto_threshold", "min_confidence", "tta_weights", "calibration")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    TTA_VIEWS_FIELD_NUMBER: _ClassVar[int]
    TTA_COMBINE_FIELD_NUMBER: _ClassVar[int]
    TTA_BETA_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TTA_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TTA_FIELD_NUMBER: _ClassVar[int]
    AUTO_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    TTA_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    repository_versions: _containers.RepeatedScalarFieldContainer[int]
    classes: _containers.RepeatedScalarFieldContainer[str]
    input_size: int
    tta_views: _containers.RepeatedScalarFieldContainer[str]
    tta_combine: str
    tta_beta: float
    metrics: _struct_pb2.Struct
    is_default: bool
    created_at: str
    provider: ExecutionProvider
    variant: str
    variants: _struct_pb2.Struct
    calibrated: bool
    temperature: float
    tta_temperature: float
    default_tta: str
    auto_threshold: float
    min_confidence: float
    tta_weights: _containers.RepeatedScalarFieldContainer[float]
    calibration: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., repository_versions: _Optional[_Iterable[int]] = ..., classes: _Optional[_Iterable[str]] = ..., input_size: _Optional[int] = ..., tta_views: _Optional[_Iterable[str]] = ..., tta_combine: _Optional[str] = ..., tta_beta: _Optional[float] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., is_default: _Optional[bool] = ..., created_at: _Optional[str] = ..., provider: _Optional[_Union[ExecutionProvider, _Mapping]] = ..., variant: _Optional[str] = ..., variants: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., calibrated: _Optional[bool] = ..., temperature: _Optional[float] = ..., tta_temperature: _Optional[float] = ..., default_tta: _Optional[str] = ..., auto_threshold: _Optional[float] = ..., min_confidence: _Optional[float] = ..., tta_weights: _Optional[_Iterable[float]] = ..., calibration: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model", "provider")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    default_model: str
    provider: ExecutionProvider
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., default_model: _Optional[str] = ..., provider: _Optional[_Union[ExecutionProvider, _Mapping]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...
