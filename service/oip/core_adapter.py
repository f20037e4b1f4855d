"""Open Inference Protocol (KServe v2) <-> the inference core, independent of the wire.

The gRPC servicer and the HTTP routes only move bytes: they parse their wire into the tensors
and requests below, call ``OipAdapter`` and write its answer back. Which inputs a model accepts,
the classification extension, the TTA switch and the error mapping therefore exist once, here,
and both wires behave the same.

What a model accepts (``OipAdapter.model_metadata`` advertises both):

- ``image``: BYTES, shape [N] (or [N, 1]), one encoded image (JPEG, PNG, ...) per element;
  decoded and preprocessed on the server by the model's recorded evaluation transform.
- ``pixels`` (the model's input name): FP32, shape [N, 3, S, S], already preprocessed to the
  model input contract (NCHW RGB in [0, 1], S = model.json ``input.size``).

The input's datatype picks the path. Request parameter ``tta`` (bool) turns test-time
augmentation on (BYTES only: the views are cut from the image). A requested output with
parameter ``classification: k`` returns k ``"score:index:label"`` strings per image, as Triton.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

from service.core import (
    CoreError,
    InferenceCore,
    PinnedModel,
    Prediction,
)
from service.core.errors import Status
from service.core.stats import Duration, VersionStats

log = logging.getLogger(__name__)

SERVER_NAME = "tta-serve"
# Triton's extension names, exactly what is served: model control is load (a scan now) only.
EXTENSIONS = ("classification", "binary_tensor_data", "parameters", "model_configuration",
              "statistics", "model_repository(index,load)")
PLATFORM = "onnxruntime_onnx"  # Triton's platform name for ONNX models
IMAGE_INPUT = "image"
IMAGE_DATATYPE = "BYTES"
PIXELS_DATATYPE = "FP32"
TTA_PARAMETER = "tta"
CLASSIFICATION_PARAMETER = "classification"

# The protocol's numeric datatypes; BYTES is a list of byte strings (object array).
NUMPY_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(dtype).newbyteorder("<")
    for name, dtype in {
        "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
        "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
        "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    }.items()
}
DATATYPES = (*NUMPY_DTYPES, "BYTES")


class OipError(Exception):
    """A request the protocol answers with an error; ``str()`` is safe to send to the client."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def from_core_error(error: CoreError, context: str = "") -> OipError:
    """The protocol error for a core error; ``context`` (e.g. "image 2 of 4") prefixes it."""
    return OipError(error.status, f"{context}: {error}" if context else str(error))


def invalid(message: str) -> OipError:
    return OipError(Status.INVALID_ARGUMENT, message)


# ---- tensors


@dataclass(frozen=True)
class Tensor:
    """One named tensor. ``data`` has ``shape``; BYTES data is an object array of ``bytes``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Mapping[str, Any] = field(default_factory=dict)


def element_count(name: str, shape: Sequence[int]) -> int:
    if any(int(d) < 0 for d in shape):
        raise invalid(f"input {name!r} has shape {list(shape)}; a request's shape must be "
                      "concrete (no -1)")
    return math.prod(int(d) for d in shape)


def check_datatype(name: str, datatype: str) -> None:
    if datatype not in DATATYPES:
        raise invalid(f"input {name!r} has datatype {datatype!r}, which the protocol does not "
                      f"define; use one of {list(DATATYPES)}")


def split_bytes_elements(name: str, raw: bytes) -> list[bytes]:
    """A serialized BYTES tensor: each element a 4-byte little-endian length, then its bytes."""
    view, out, offset = memoryview(raw), [], 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise invalid(f"input {name!r}: BYTES data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise invalid(f"input {name!r}: a BYTES element claims {length} bytes but only "
                          f"{len(view) - offset} remain")
        out.append(bytes(view[offset:offset + length]))
        offset += length
    return out


def join_bytes_elements(elements: Sequence[bytes]) -> bytes:
    """The inverse of ``split_bytes_elements``."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def tensor_from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes,
                    parameters: Mapping[str, Any] | None = None) -> Tensor:
    """A tensor from the protocol's raw (binary) encoding: row-major little-endian elements."""
    check_datatype(name, datatype)
    count = element_count(name, shape)
    shape = tuple(int(d) for d in shape)
    if datatype == "BYTES":
        elements = split_bytes_elements(name, raw)
        if len(elements) != count:
            raise invalid(f"input {name!r} has shape {list(shape)} ({count} elements) but its "
                          f"data holds {len(elements)} BYTES elements")
        data = np.empty(count, dtype=object)
        data[:] = elements
        return Tensor(name, datatype, shape, data.reshape(shape), parameters or {})
    dtype = NUMPY_DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise invalid(f"input {name!r} has shape {list(shape)} and datatype {datatype}, i.e. "
                      f"{count * dtype.itemsize} bytes, but its data is {len(raw)} bytes")
    data = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)
    return Tensor(name, datatype, shape, data.reshape(shape), parameters or {})


def tensor_from_values(name: str, datatype: str, shape: Sequence[int], values: Any,
                       parameters: Mapping[str, Any] | None = None) -> Tensor:
    """A tensor from typed values (gRPC typed contents, JSON ``data``; nested or flat)."""
    check_datatype(name, datatype)
    count = element_count(name, shape)
    shape = tuple(int(d) for d in shape)
    if datatype == "BYTES":
        elements = list(_flatten(values))
        if len(elements) != count:
            raise invalid(f"input {name!r} has shape {list(shape)} ({count} elements) but "
                          f"{len(elements)} BYTES elements were sent")
        data = np.empty(count, dtype=object)
        data[:] = [_bytes_element(name, i, e) for i, e in enumerate(elements)]
        return Tensor(name, datatype, shape, data.reshape(shape), parameters or {})
    try:
        flat = np.asarray(values, dtype=NUMPY_DTYPES[datatype].newbyteorder("=")).reshape(-1)
    except (TypeError, ValueError) as e:
        raise invalid(f"input {name!r}: the data is not {datatype} values: {e}") from e
    if flat.size != count:
        raise invalid(f"input {name!r} has shape {list(shape)} ({count} elements) but "
                      f"{flat.size} values were sent")
    return Tensor(name, datatype, shape, flat.reshape(shape), parameters or {})


def _bytes_element(name: str, index: int, element: Any) -> bytes:
    """One BYTES element: a string (UTF-8 encoded, as JSON sends it) or bytes (gRPC typed
    contents). Anything else is refused: ``bytes(50000000)`` would be a 50 MB zero buffer."""
    if isinstance(element, str):
        return element.encode()
    if isinstance(element, bytes | bytearray):
        return bytes(element)
    shown = repr(element)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise invalid(f"input {name!r}: BYTES element {index} is {type(element).__name__} "
                  f"{shown}; each BYTES element must be a string")


def _flatten(values: Any) -> Any:
    if isinstance(values, list | tuple):
        for v in values:
            yield from _flatten(v)
    else:
        yield values


def raw_contents(tensor: Tensor) -> bytes:
    """The tensor in the protocol's raw (binary) encoding."""
    if tensor.datatype == "BYTES":
        return join_bytes_elements(list(tensor.data.reshape(-1)))
    return np.ascontiguousarray(tensor.data, dtype=NUMPY_DTYPES[tensor.datatype]).tobytes()


# ---- requests and answers


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for; ``classification`` > 0 asks for top-k strings."""

    name: str
    classification: int = 0
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferRequest:
    model: str
    version: str = ""  # "" = the served version
    inputs: Sequence[Tensor] = ()
    outputs: Sequence[RequestedOutput] = ()  # empty = every output
    id: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferResponse:
    model: str
    version: str
    id: str
    outputs: list[Tensor]
    parameters: dict[str, Any]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 = any size


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


def parse_version(model: str, version: str | int | None) -> int | None:
    """The protocol's version string -> the core's version (None = the served one)."""
    if version is None or version == "":
        return None
    text = str(version).strip()
    if not text.isdigit():
        raise OipError(Status.NOT_FOUND, f"model {model!r} has no version {text!r}; versions "
                                         "are whole numbers (omit it for the served version)")
    return int(text)


def bool_parameter(name: str, value: Any) -> bool:
    """A boolean request parameter; "true"/"false" strings count too (string_param, JSON)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise invalid(f"parameter {name!r} must be a boolean (true or false), got {value!r}")


def classification_strings(prediction: Prediction, k: int) -> list[bytes]:
    """Triton's classification extension: "score:index:label", most probable first.

    The score is printed as C's %f (Triton's std::to_string), so clients parsing Triton's
    strings parse ours.
    """
    return [f"{s.probability:f}:{s.index}:{s.label}".encode() for s in prediction.top[:k]]


def _server_version() -> str:
    try:
        return metadata.version("tta-serve")
    except metadata.PackageNotFoundError:
        return "unknown"


class OipAdapter:
    """The protocol's operations on one inference core; both wires call exactly these."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    # ---- health and metadata

    @staticmethod
    def server_live() -> bool:
        """The process answers; it needs no model (readiness says whether it can infer)."""
        return True

    def server_ready(self) -> bool:
        """The core's own readiness: started, not stopped, serving the default model."""
        return self.core.ready

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, _server_version(), EXTENSIONS)

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether that model (version) is served; unknown ones are simply not ready."""
        try:
            self.model_metadata(name, version)
        except OipError:
            return False
        return True

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        """Both accepted inputs and the probability output; NOT_FOUND for what is not served."""
        try:
            with self.core.pin(name or None, parse_version(name, version)) as pinned:
                return _metadata(pinned)
        except CoreError as e:
            raise from_core_error(e) from e

    # ---- Triton's extensions: model_configuration, statistics, model_repository

    def model_config(self, name: str, version: str = "") -> Any:
        """The served version's configuration (``inference.ModelConfig``); NOT_FOUND as
        model_metadata."""
        from service.oip.model_config import served_config

        config = self.core.config
        try:
            with self.core.pin(name or None, parse_version(name, version)) as pinned:
                info = self.core.get_model(pinned.name, pinned.version)
                return served_config(
                    pinned.name, pinned.card, image_input=IMAGE_INPUT,
                    max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
                    pinned_version=config.version_policy.pinned,
                    on_gpu=info.provider.name == "CUDAExecutionProvider")
        except CoreError as e:
            raise from_core_error(e) from e

    def model_statistics(self, name: str = "", version: str = "") -> Any:
        """``inference.ModelStatisticsResponse`` from the core's counters: every served version
        (zeros before its first request) and every version that answered requests."""
        from service._proto.inference import grpc_predict_v2_pb2 as pb

        recorded = self.core.stats.version_stats()
        try:
            served = {(m.name, m.version) for m in self.core.list_models()}
        except CoreError as e:
            raise from_core_error(e) from e
        keys = sorted(set(recorded) | served)
        wanted = parse_version(name, version)
        if name:
            keys = [k for k in keys if k[0] == name]
            if not keys:
                raise OipError(Status.NOT_FOUND, f"model {name!r} is not served and has no "
                                                 "statistics")
        if wanted is not None:
            keys = [k for k in keys if k[1] == wanted]
            if not keys:
                raise OipError(Status.NOT_FOUND, f"model {name!r} version {wanted} is not "
                                                 "served and has no statistics")
        response = pb.ModelStatisticsResponse()
        for key in keys:
            response.model_stats.append(_statistics(pb, key, recorded.get(key, VersionStats())))
        return response

    def repository_index(self, ready_only: bool = False) -> Any:
        """``inference.RepositoryIndexResponse``: every model and version in the repository,
        READY (served) or UNAVAILABLE with the reason."""
        from service._proto.inference import grpc_predict_v2_pb2 as pb

        try:
            states = self.core.repository_index()
        except CoreError as e:
            raise from_core_error(e) from e
        response = pb.RepositoryIndexResponse()
        for state in states:
            if ready_only and not state.ready:
                continue
            response.models.add(name=state.name, version=str(state.version),
                                state="READY" if state.ready else "UNAVAILABLE",
                                reason=state.reason)
        return response

    async def load_model(self, name: str) -> None:
        """Triton's RepositoryModelLoad: scan the model's versions now and serve the version
        policy's choice (what the poller does every poll interval). Errors when afterwards no
        version of it is served."""
        try:
            change = await asyncio.to_thread(self.core.load_model, name)
        except CoreError as e:
            raise from_core_error(e) from e
        if not self.model_ready(name):
            reasons = "; ".join(f"v{s.version}: {s.reason}" for s in self.core.repository_index()
                                if s.name == name) or "it has no versions"
            raise OipError(Status.UNAVAILABLE, f"model {name!r} could not be loaded: {reasons}")
        log.info("RepositoryModelLoad %s: %s", name, change or "no change")

    @staticmethod
    def unload_model(name: str) -> None:
        raise OipError(Status.UNIMPLEMENTED,
                       f"unloading is not supported: this server serves what the model "
                       f"repository holds (its version policy); remove {name!r} from the "
                       "repository, or restart with --model naming the models to serve")

    # ---- inference

    async def infer(self, request: InferRequest) -> InferResponse:
        """Run one request on one pinned version; every problem is an OipError."""
        version = parse_version(request.model, request.version)
        tta = bool_parameter(TTA_PARAMETER, request.parameters.get(TTA_PARAMETER, False))
        if len(request.inputs) != 1:
            names = [t.name for t in request.inputs]
            raise invalid(f"send exactly one input, got {len(names)} ({names}): {IMAGE_INPUT!r} "
                          f"({IMAGE_DATATYPE}, encoded images) or the model input "
                          f"({PIXELS_DATATYPE}, preprocessed pixels)")
        (tensor,) = request.inputs
        try:
            with self.core.pin(request.model or None, version) as pinned:
                outputs = _check_outputs(pinned, request.outputs)
                top_k = max([o.classification for o in outputs] + [1])
                if tensor.datatype == IMAGE_DATATYPE:
                    predictions = await _predict_images(pinned, tensor, tta, top_k)
                elif tensor.datatype == PIXELS_DATATYPE:
                    predictions = await _predict_pixels(pinned, tensor, tta, top_k)
                else:
                    raise invalid(_accepted_inputs(pinned, f"input {tensor.name!r} has datatype "
                                                           f"{tensor.datatype}"))
                return InferResponse(
                    model=pinned.name, version=str(pinned.version), id=request.id,
                    outputs=[_output(pinned, o, predictions) for o in outputs],
                    parameters={TTA_PARAMETER: tta,
                                "tta_views": predictions[0].tta_views if predictions else 0},
                )
        except CoreError as e:
            raise from_core_error(e) from e


def _statistics(pb: Any, key: tuple[str, int], stats: VersionStats) -> Any:
    def duration(d: Duration) -> Any:
        return pb.StatisticDuration(count=d.count, ns=d.ns)

    message = pb.ModelStatistics(
        name=key[0], version=str(key[1]), last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count, execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=duration(stats.success), fail=duration(stats.fail),
            queue=duration(stats.queue), compute_input=duration(stats.compute_input),
            compute_infer=duration(stats.compute_infer),
            compute_output=duration(stats.compute_output),
            cache_hit=pb.StatisticDuration(), cache_miss=pb.StatisticDuration()))
    for size in sorted(stats.batches):
        batch = stats.batches[size]
        message.batch_stats.append(pb.InferBatchStatistics(
            batch_size=size, compute_input=duration(batch.compute_input),
            compute_infer=duration(batch.compute_infer),
            compute_output=duration(batch.compute_output)))
    return message


def _metadata(pinned: PinnedModel) -> ModelMetadata:
    card = pinned.card
    size = card.input_size
    return ModelMetadata(
        name=pinned.name,
        versions=(str(pinned.version),),
        platform=PLATFORM,
        # [N, 1]: the batch, then one encoded image per element (config dims [1], as Triton
        # shows a batching model's input); [N] is accepted too.
        inputs=(TensorSpec(IMAGE_INPUT, IMAGE_DATATYPE, (-1, 1)),
                TensorSpec(card.input_name, PIXELS_DATATYPE, (-1, 3, size, size))),
        outputs=(TensorSpec(card.output_name, "FP32", (-1, len(card.classes))),),
    )


def _accepted_inputs(pinned: PinnedModel, problem: str) -> str:
    size = pinned.card.input_size
    return (f"{problem}; {pinned.name} v{pinned.version} accepts {IMAGE_INPUT!r} "
            f"{IMAGE_DATATYPE} [N] (encoded images) or {pinned.card.input_name!r} "
            f"{PIXELS_DATATYPE} [N, 3, {size}, {size}] (NCHW RGB in [0, 1])")


def _check_outputs(pinned: PinnedModel,
                   requested: Sequence[RequestedOutput]) -> list[RequestedOutput]:
    name = pinned.card.output_name
    if not requested:
        return [RequestedOutput(name)]
    for output in requested:
        if output.name != name:
            raise invalid(f"{pinned.name} has no output {output.name!r}; its output is {name!r}")
        if output.classification < 0:
            raise invalid(f"output {name!r}: classification must be >= 1 (top-k classes), got "
                          f"{output.classification}")
    return list(requested)


async def _predict_images(pinned: PinnedModel, tensor: Tensor, tta: bool,
                          top_k: int) -> list[Prediction]:
    shape = list(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise invalid(f"input {tensor.name!r} ({IMAGE_DATATYPE}) has shape {shape}; expected "
                      "[N] or [N, 1] with N >= 1: one encoded image per element")
    images = list(tensor.data.reshape(-1))
    results = await pinned.predict_batch(images, tta=tta, top_k=top_k)
    for i, result in enumerate(results):
        if isinstance(result, CoreError):
            raise from_core_error(result, f"image {i} of {len(results)} (0-based)")
    return results  # type: ignore[return-value]  # no CoreError left


async def _predict_pixels(pinned: PinnedModel, tensor: Tensor, tta: bool,
                          top_k: int) -> list[Prediction]:
    size = pinned.card.input_size
    expected = [3, size, size]
    if len(tensor.shape) != 4 or list(tensor.shape[1:]) != expected or tensor.shape[0] < 1:
        raise invalid(_accepted_inputs(pinned, f"input {tensor.name!r} ({PIXELS_DATATYPE}) has "
                                               f"shape {list(tensor.shape)}; expected [N, 3, "
                                               f"{size}, {size}]"))
    if tta:
        raise invalid(f"parameter {TTA_PARAMETER!r} needs the encoded images (its views are cut "
                      f"from the full image); send them as a {IMAGE_DATATYPE} input, or drop "
                      "the parameter")
    # The core checks the values (finite, [0, 1]) and batches the rows with everyone else's.
    return await pinned.predict_pixels(np.ascontiguousarray(tensor.data, np.float32),
                                       top_k=top_k)


def _output(pinned: PinnedModel, output: RequestedOutput,
            predictions: Sequence[Prediction]) -> Tensor:
    n = len(predictions)
    if output.classification > 0:
        k = min(output.classification, len(pinned.classes))
        data = np.empty((n, k), dtype=object)
        for i, prediction in enumerate(predictions):
            data[i, :] = classification_strings(prediction, k)
        return Tensor(output.name, "BYTES", (n, k), data)
    probabilities = np.stack([p.probabilities for p in predictions]).astype(np.float32)
    return Tensor(output.name, "FP32", probabilities.shape, probabilities)
