"""``inference.GRPCInferenceService`` (Open Inference Protocol over gRPC) over the core.

Thin: protobuf <-> ``service.oip.core_adapter`` and OipError -> status code; the behaviour is
the adapter's. It is served on the same ``grpc.aio`` server and port as ``tta_serve.v1.Classifier``
(``add_to_server``), so ``tritonclient.grpc`` and our own clients share one endpoint.

Known limitation (shared with KServe and MLServer, kserve/kserve#3099): the generated
``inference.*`` messages and tritonclient's own copy cannot be imported into one Python process
(protobuf's default descriptor pool refuses duplicate symbols), so a process serving this
cannot also import ``tritonclient.grpc``. ``tritonclient.http`` is unaffected.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from service._proto.inference import grpc_predict_v2_pb2 as pb
from service._proto.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from service.core import InferenceCore
from service.core.errors import retry_after_s
from service.oip.core_adapter import CLASSIFICATION_PARAMETER, OipAdapter
from service.oip.messages import (
    InferRequest,
    InferResponse,
    OipError,
    RequestedOutput,
    Tensor,
    invalid,
    raw_contents,
    tensor_from_raw,
    tensor_from_values,
)

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

# Which InferTensorContents field carries each datatype's typed values.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


# ---- pure helpers: protobuf <-> adapter objects


def parameter_value(parameter: pb.InferParameter) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def parameters_dict(parameters: Any) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in parameters.items()}


def set_parameter(parameter: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)


def request_from_proto(request: pb.ModelInferRequest) -> InferRequest:
    """Inputs from raw_input_contents (what tritonclient sends) or typed contents."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise invalid(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} "
                      "inputs; send one per input, in the order of inputs")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        parameters = parameters_dict(tensor.parameters)
        if raw:
            if tensor.HasField("contents"):
                raise invalid(f"input {tensor.name!r} has typed contents although "
                              "raw_input_contents is used; send one or the other")
            inputs.append(tensor_from_raw(tensor.name, tensor.datatype, tensor.shape, raw[i],
                                          parameters))
            continue
        field_name = _CONTENTS_FIELD.get(tensor.datatype)
        if field_name is None:
            raise invalid(f"input {tensor.name!r}: datatype {tensor.datatype!r} has no typed "
                          "contents field; send it in raw_input_contents")
        inputs.append(tensor_from_values(tensor.name, tensor.datatype, tensor.shape,
                                         list(getattr(tensor.contents, field_name)), parameters))
    outputs = []
    for output in request.outputs:
        parameters = parameters_dict(output.parameters)
        k = parameters.pop(CLASSIFICATION_PARAMETER, 0)
        if not isinstance(k, int) or isinstance(k, bool):
            raise invalid(f"output {output.name!r}: {CLASSIFICATION_PARAMETER} must be an "
                          f"integer (top-k classes), got {k!r}")
        outputs.append(RequestedOutput(output.name, k, parameters))
    return InferRequest(model=request.model_name, version=request.model_version,
                        inputs=inputs, outputs=outputs, id=request.id,
                        parameters=parameters_dict(request.parameters))


def response_to_proto(response: InferResponse) -> pb.ModelInferResponse:
    """Every output in raw_output_contents, as Triton answers."""
    message = pb.ModelInferResponse(model_name=response.model, model_version=response.version,
                                    id=response.id)
    for key, value in response.parameters.items():
        set_parameter(message.parameters[key], value)
    for tensor in response.outputs:
        message.outputs.append(_output_to_proto(tensor))
        message.raw_output_contents.append(raw_contents(tensor))
    return message


def _output_to_proto(tensor: Tensor) -> pb.ModelInferResponse.InferOutputTensor:
    return pb.ModelInferResponse.InferOutputTensor(
        name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))


# ---- the servicer


def _maps_oip_errors(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """End the RPC with the OipError's status code."""

    @functools.wraps(handler)
    async def wrapper(self: GRPCInferenceServicer, request: Any, context: Any) -> Any:
        try:
            return await handler(self, request, context)
        except OipError as e:
            seconds = retry_after_s(e.status)  # UNAVAILABLE: when to retry, as HTTP's header
            await context.abort(grpc.StatusCode[e.status.name], e.message,
                                (("retry-after", str(seconds)),) if seconds is not None else ())

    return wrapper


class GRPCInferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Parse, call the adapter, map errors; no behaviour of its own."""

    def __init__(self, core: InferenceCore) -> None:
        self.adapter = OipAdapter(core)

    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.adapter.server_live())

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.adapter.server_ready())

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.adapter.model_ready(request.name,
                                                                    request.version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: Any) -> pb.ServerMetadataResponse:
        meta = self.adapter.server_metadata()
        return pb.ServerMetadataResponse(name=meta.name, version=meta.version,
                                         extensions=list(meta.extensions))

    @_maps_oip_errors
    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: Any) -> pb.ModelMetadataResponse:
        meta = self.adapter.model_metadata(request.name, request.version)
        spec = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta.name, versions=list(meta.versions), platform=meta.platform,
            inputs=[spec(name=t.name, datatype=t.datatype, shape=list(t.shape))
                    for t in meta.inputs],
            outputs=[spec(name=t.name, datatype=t.datatype, shape=list(t.shape))
                     for t in meta.outputs],
        )

    @_maps_oip_errors
    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: Any) -> pb.ModelInferResponse:
        response = await self.adapter.infer(request_from_proto(request))
        log.debug("ModelInfer %s v%s id=%r: %s", response.model, response.version,
                  response.id, [(t.name, t.shape) for t in response.outputs])
        return response_to_proto(response)

    # ---- Triton's extensions: the adapter builds the messages, shared with the HTTP routes

    @_maps_oip_errors
    async def ModelConfig(self, request: pb.ModelConfigRequest,
                          context: Any) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self.adapter.model_config(request.name,
                                                                       request.version))

    @_maps_oip_errors
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,
                              context: Any) -> pb.ModelStatisticsResponse:
        return self.adapter.model_statistics(request.name, request.version)

    @_maps_oip_errors
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,
                              context: Any) -> pb.RepositoryIndexResponse:
        return self.adapter.repository_index(ready_only=request.ready)

    @_maps_oip_errors
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                                  context: Any) -> pb.RepositoryModelLoadResponse:
        await self.adapter.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_maps_oip_errors
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                                    context: Any) -> pb.RepositoryModelUnloadResponse:
        self.adapter.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def add_to_server(core: InferenceCore, server: grpc.aio.Server) -> str:
    """Serve the protocol on ``server``; returns the service name (for reflection, health)."""
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(GRPCInferenceServicer(core), server)
    return SERVICE_NAME
