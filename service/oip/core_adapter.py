"""Open Inference Protocol (KServe v2) <-> the inference core, independent of the wire.

The gRPC servicer and the HTTP routes only move bytes: they parse their wire into the tensors
and requests of ``service.oip.messages``, call ``OipAdapter`` and write its answer back. Which
inputs a model accepts, the classification extension and the TTA switch therefore exist once,
here, and both wires behave the same; a core error's status is its own (``service.core.errors``).

What a model accepts (``OipAdapter.model_metadata`` advertises both):

- ``image``: BYTES, shape [N] (or [N, 1]), one encoded image (JPEG, PNG, ...) per element;
  decoded and preprocessed on the server by the model's recorded evaluation transform.
- ``pixels`` (the model's input name): FP32, shape [N, 3, S, S], already preprocessed to the
  model input contract (NCHW RGB in [0, 1], S = model.json ``input.size``).

Request parameter ``timeout`` (microseconds, as Triton's) is the request's deadline
(``service.core.deadlines``): past it, the request is dropped uncomputed (DEADLINE_EXCEEDED/504).
The input's datatype picks the path. Request parameter ``tta``: true/"on", false/"off" or
"auto" (BYTES only: the views are cut from the image; absent = the model's default mode, plain for
FP32 pixels); ``min_confidence`` (absent = the model's default). The outputs stay Triton's; the
response parameters say how each image was answered: ``tta_mode``, ``calibrated``, and per image
in input order, comma-separated, ``path`` ("plain"/"tta") and ``unsure`` ("true"/"false"). A
requested output with parameter ``classification: k`` returns k ``"score:index:label"`` strings
per image, as Triton.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import numpy as np

from service.core import (
    CoreError,
    InferenceCore,
    InvalidRequest,
    PinnedModel,
    Prediction,
    deadlines,
)
from service.core.errors import Status
from service.core.stats import Duration, VersionStats
from service.oip.messages import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    OipError,
    RequestedOutput,
    ServerMetadata,
    Tensor,
    TensorSpec,
    confidence_parameter,
    from_core_error,
    invalid,
    parse_version,
    tta_parameter,
)

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
TIMEOUT_PARAMETER = "timeout"  # microseconds, as Triton's
MIN_CONFIDENCE_PARAMETER = "min_confidence"
CLASSIFICATION_PARAMETER = "classification"

def classification_strings(prediction: Prediction, k: int) -> list[bytes]:
    """Triton's classification extension: "score:index:label", most probable first.

    The score is printed as C's %f (Triton's std::to_string), so clients parsing Triton's
    strings parse ours.
    """
    return [f"{s.probability:f}:{s.index}:{s.label}".encode() for s in prediction.classes[:k]]


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
            with self.core.pin(name, parse_version(name, version)) as pinned:
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
            with self.core.pin(name, parse_version(name, version)) as pinned:
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
        tta = tta_parameter(TTA_PARAMETER, request.parameters.get(TTA_PARAMETER))
        min_confidence = confidence_parameter(
            MIN_CONFIDENCE_PARAMETER, request.parameters.get(MIN_CONFIDENCE_PARAMETER))
        if len(request.inputs) != 1:
            names = [t.name for t in request.inputs]
            raise invalid(f"send exactly one input, got {len(names)} ({names}): {IMAGE_INPUT!r} "
                          f"({IMAGE_DATATYPE}, encoded images) or the model input "
                          f"({PIXELS_DATATYPE}, preprocessed pixels)")
        (tensor,) = request.inputs
        try:
            with _within_timeout(request.parameters.get(TIMEOUT_PARAMETER)), \
                    self.core.pin(request.model, version) as pinned:
                outputs = _check_outputs(pinned, request.outputs)
                top_k = max([o.classification for o in outputs] + [1])
                if tensor.datatype == IMAGE_DATATYPE:
                    predictions = await _predict_images(pinned, tensor, tta, top_k,
                                                        min_confidence)
                elif tensor.datatype == PIXELS_DATATYPE:
                    predictions = await _predict_pixels(pinned, tensor, tta, top_k,
                                                        min_confidence)
                else:
                    raise invalid(_accepted_inputs(pinned, f"input {tensor.name!r} has datatype "
                                                           f"{tensor.datatype}"))
                return InferResponse(
                    model=pinned.name, version=str(pinned.version), id=request.id,
                    outputs=[_output(pinned, o, predictions) for o in outputs],
                    parameters=_answer_parameters(predictions),
                )
        except CoreError as e:
            raise from_core_error(e) from e


def _within_timeout(value: Any) -> contextlib.AbstractContextManager[None]:
    """The request's ``timeout`` parameter (microseconds, as Triton's) as its deadline."""
    if value is None:
        return deadlines.within(None)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequest(f"parameter {TIMEOUT_PARAMETER!r} must be a number of microseconds; "
                             f"got {value!r:.40}")
    return deadlines.within(deadlines.parse_timeout_s(
        str(value), name=f"parameter {TIMEOUT_PARAMETER!r}", scale=1e-6))


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


def _answer_parameters(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """How the images were answered, as response parameters (outputs stay Triton's)."""
    return {TTA_PARAMETER: any(p.tta for p in predictions),
            "tta_views": max((p.tta_views for p in predictions), default=0),
            "tta_mode": predictions[0].tta_mode if predictions else "off",
            "calibrated": bool(predictions and predictions[0].calibrated),
            "path": ",".join(p.path for p in predictions),
            "unsure": ",".join("true" if p.unsure else "false" for p in predictions)}


async def _predict_images(pinned: PinnedModel, tensor: Tensor, tta: bool | str | None,
                          top_k: int, min_confidence: float | None) -> list[Prediction]:
    shape = list(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise invalid(f"input {tensor.name!r} ({IMAGE_DATATYPE}) has shape {shape}; expected "
                      "[N] or [N, 1] with N >= 1: one encoded image per element")
    images = list(tensor.data.reshape(-1))
    results = await pinned.predict_batch(images, tta=tta, top_k=top_k,
                                         min_confidence=min_confidence)
    for i, result in enumerate(results):
        if isinstance(result, CoreError):
            raise from_core_error(result, f"image {i} of {len(results)} (0-based)")
    return results  # type: ignore[return-value]  # no CoreError left


async def _predict_pixels(pinned: PinnedModel, tensor: Tensor, tta: bool | str | None,
                          top_k: int, min_confidence: float | None) -> list[Prediction]:
    size = pinned.card.input_size
    expected = [3, size, size]
    if len(tensor.shape) != 4 or list(tensor.shape[1:]) != expected or tensor.shape[0] < 1:
        raise invalid(_accepted_inputs(pinned, f"input {tensor.name!r} ({PIXELS_DATATYPE}) has "
                                               f"shape {list(tensor.shape)}; expected [N, 3, "
                                               f"{size}, {size}]"))
    if tta not in (None, False, "off"):
        raise invalid(f"parameter {TTA_PARAMETER!r} needs the encoded images (its views are cut "
                      f"from the full image); send them as a {IMAGE_DATATYPE} input, or drop "
                      "the parameter")
    # The core checks the values (finite, [0, 1]) and batches the rows with everyone else's.
    return await pinned.predict_pixels(np.ascontiguousarray(tensor.data, np.float32),
                                       top_k=top_k, min_confidence=min_confidence)


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
