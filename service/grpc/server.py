"""The gRPC front end: ``tta_serve.v1.Classifier`` over the inference core.

Shape of grpc's asyncio route_guide example: pure conversion helpers (``service.grpc.messages``),
a thin servicer that only parses, calls the core and maps its errors, then ``GrpcServer`` (the
process that runs it, its signals and its core: ``service.process.runner``). Health checking
(``grpc.health.v1``) and server reflection are enabled. Error mapping:

    InvalidImage, InvalidRequest -> INVALID_ARGUMENT    ModelNotFound -> NOT_FOUND
    ImageTooLarge -> RESOURCE_EXHAUSTED                 Overloaded, ModelUnavailable -> UNAVAILABLE
    ShuttingDown (the drain) -> UNAVAILABLE             DeadlineExceeded -> DEADLINE_EXCEEDED
    (the table: ``service.core.errors``; UNAVAILABLE carries ``retry-after``)

Every RPC runs within its gRPC deadline (``service.core.deadlines``): a call whose deadline
passes before its turn is dropped from the model's queue uncomputed, and a call the client
cancels (grpc cancels its handler's task) leaves no work behind.

A failing request only ever ends its own RPC (or, in PredictStream, its own item).
SIGTERM/SIGINT: a drain phase, then grpc's own shutdown (``GrpcServer.stop``). Health turns
NOT_SERVING and every new RPC is refused with ``ShuttingDown``, UNAVAILABLE (safe to retry
elsewhere; ``service.core.drain.Drain``, the HTTP front end's too) while the
server still runs; the RPCs in flight get up to ``grace_s`` seconds to finish; only when none
is left, and none has arrived for ``DRAIN_QUIET_S``, does ``grpc.aio.Server.stop`` run. Why: the
aio server takes calls from gRPC core one at a time, and core cancels (CANCELLED, which retry
policies do not retry) every call it has received but not yet handed over when ``stop`` begins;
under load that was 10-16 accepted calls per SIGTERM. During the drain those calls are handed
over and answered or refused.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from service._proto.tta_serve.v1 import classifier_pb2 as pb
from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc
from service.core import CoreError, InferenceCore, InvalidRequest, deadlines
from service.core.config import default_max_message_bytes
from service.core.drain import Drain
from service.grpc.messages import (
    error_to_proto,
    error_trailers,
    evaluation_to_proto,
    model_info_to_proto,
    prediction_to_proto,
    provider_to_proto,
    requested_min_confidence,
    requested_tta,
    status_code,
)
from service.oip import grpc_servicer as oip_grpc
from service.security.config import NO_SECURITY, Security
from service.security.grpc_interceptor import TokenInterceptor

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Classifier"].full_name
# What grpc.health.v1 reports SERVING while the server runs ("" = the server as a whole), and
# NOT_SERVING from the start of a shutdown (enter_graceful_shutdown covers every name set).
HEALTH_SERVICES = ("", SERVICE_NAME, oip_grpc.SERVICE_NAME)

@dataclass(frozen=True)
class GrpcConfig:
    host: str = "0.0.0.0"
    port: int = 50051  # 0 = any free port (tests)
    # Largest gRPC message (request or response), bytes; None = default_max_message_bytes().
    max_message_bytes: int | None = None
    max_concurrent_rpcs: int | None = None  # None = unlimited (the core's max_pending bounds work)
    stream_window: int = 64  # PredictStream items in flight per stream
    grace_s: float = 10.0  # on SIGTERM: time in-flight RPCs get to finish
    reuse_port: bool = False  # share the port with sibling workers (service.workers)


# ---- the servicer


def _maps_core_errors(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Turn a CoreError raised by a unary-response handler into its status code."""

    @functools.wraps(handler)
    async def wrapper(self: ClassifierServicer, request: Any, context: Any) -> Any:
        try:
            return await handler(self, request, context)
        except CoreError as e:
            await context.abort(status_code(e), str(e), error_trailers(e.status))

    return wrapper


class ClassifierServicer(pb_grpc.ClassifierServicer):
    """Parse, call the core, map errors; no behaviour of its own."""

    def __init__(self, core: InferenceCore, *, stream_window: int = 64) -> None:
        self.core = core
        self.stream_window = stream_window

    async def _predict(self, request: pb.PredictRequest) -> pb.PredictResponse:
        prediction = await self.core.predict(
            request.image, model=request.model, version=request.version,
            tta=requested_tta(request.tta_mode, request.tta), top_k=request.top_k,
            min_confidence=requested_min_confidence(request))
        return prediction_to_proto(prediction, request.request_id)

    @_maps_core_errors
    async def Predict(self, request: pb.PredictRequest, context: Any) -> pb.PredictResponse:
        return await self._predict(request)

    async def PredictStream(self, request_iterator: AsyncIterator[pb.PredictRequest],
                            context: Any) -> AsyncIterator[pb.PredictResponse]:
        # Items run concurrently (so they batch together), at most stream_window at a time; a
        # slot frees when its response has been written, so a slow reader slows the stream.
        window = asyncio.Semaphore(self.stream_window)
        responses: asyncio.Queue[pb.PredictResponse | None] = asyncio.Queue()
        in_flight: set[asyncio.Task] = set()

        async def answer(request: pb.PredictRequest) -> None:
            try:
                response = await self._predict(request)
            except CoreError as e:
                response = error_to_proto(e, request.request_id)
            except Exception as e:
                log.exception("PredictStream item %r failed", request.request_id)
                response = pb.PredictResponse(request_id=request.request_id, status=pb.Status(
                    code=grpc.StatusCode.INTERNAL.value[0], message=f"internal error: {e}"))
            await responses.put(response)

        async def read_requests() -> None:
            try:
                async for request in request_iterator:
                    await window.acquire()
                    task = asyncio.create_task(answer(request))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if in_flight:
                    await asyncio.gather(*in_flight)
            finally:
                await responses.put(None)

        reader = asyncio.create_task(read_requests())
        try:
            while (response := await responses.get()) is not None:
                yield response
                window.release()
            await reader  # re-raises a failure reading the request stream
        finally:
            reader.cancel()
            for task in list(in_flight):
                task.cancel()

    @_maps_core_errors
    async def Evaluate(self, request_iterator: AsyncIterator[pb.EvaluateRequest],
                       context: Any) -> pb.EvaluateResponse:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None:
            raise InvalidRequest("no labelled images were sent; an evaluation needs at least one")
        options = first.options

        async def items() -> AsyncIterator[tuple[bytes, str]]:
            if first.image or first.label:
                yield first.image, first.label
            async for request in requests:
                if request.HasField("options"):
                    raise InvalidRequest("EvaluateRequest.options may only be set on the first "
                                         "message of the stream")
                yield request.image, request.label

        result = await self.core.evaluate(
            items(), model=options.model, version=options.version,
            tta=requested_tta(options.tta_mode, options.tta, unset="off"),
            min_confused=options.min_confused or 1)
        return evaluation_to_proto(result)

    @_maps_core_errors
    async def ListModels(self, request: pb.ListModelsRequest,
                         context: Any) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[model_info_to_proto(info) for info in self.core.list_models()],
            default_model=self.core.config.default_model,
            provider=provider_to_proto(self.core.provider),
        )

    @_maps_core_errors
    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.ModelInfo:
        return model_info_to_proto(
            self.core.get_model(request.name, request.version))


# ---- the server

# Drain (``service.core.drain``): how long no new RPC must have arrived before grpc's own
# shutdown begins (calls on their way are handed to the servicer and refused with UNAVAILABLE,
# not cancelled by core), and the services a drain neither refuses nor waits for (health watches
# stay open until cancelled).
DRAIN_QUIET_S = 0.1
DRAIN_EXEMPT = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class DrainInterceptor(grpc.aio.ServerInterceptor):
    """Counts the RPCs in flight in ``drain`` and, once it drains, refuses new ones with
    ``ShuttingDown`` (UNAVAILABLE)."""

    def __init__(self, drain: Drain) -> None:
        self.drain = drain

    async def intercept_service(self, continuation: Callable[..., Awaitable[Any]],
                                handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(DRAIN_EXEMPT):
            return handler
        refusal = self.drain.arrived()
        if refusal is not None:
            return _refusing(handler, refusal)
        return _counted(handler, self.drain)


def _counted(handler: Any, drain: Drain) -> Any:
    """``handler`` with its behaviour counted in ``drain.in_flight`` while it runs, within the
    call's gRPC deadline (``service.core.deadlines``: one wrapper for every service)."""
    if handler.unary_unary or handler.stream_unary:  # one response: a coroutine
        behaviour = handler.unary_unary or handler.stream_unary

        async def counted(request: Any, context: Any) -> Any:
            with drain.serving(), deadlines.within(context.time_remaining()):
                return await behaviour(request, context)
    else:  # a response stream: an async generator
        behaviour = handler.unary_stream or handler.stream_stream

        async def counted(request: Any, context: Any) -> Any:  # type: ignore[misc]
            with drain.serving(), deadlines.within(context.time_remaining()):
                async for response in behaviour(request, context):
                    yield response

    field = next(name for name in ("unary_unary", "unary_stream", "stream_unary",
                                   "stream_stream") if getattr(handler, name))
    return handler._replace(**{field: counted})


def _refusing(handler: Any, error: CoreError) -> Any:
    """A handler of the same shape as ``handler`` that answers ``error`` (its status)."""
    if handler.unary_unary or handler.stream_unary:
        async def refuse(request: Any, context: Any) -> Any:
            await context.abort(status_code(error), str(error))
    else:
        async def refuse(request: Any, context: Any) -> Any:  # type: ignore[misc]
            await context.abort(status_code(error), str(error))
            yield  # an async generator, as a streaming behaviour must be

    field = next(name for name in ("unary_unary", "unary_stream", "stream_unary",
                                   "stream_stream") if getattr(handler, name))
    return handler._replace(**{field: refuse})


class GrpcServer:
    """A grpc.aio server around a *started* core: Classifier + KServe v2 + health + reflection."""

    def __init__(self, core: InferenceCore, config: GrpcConfig,
                 security: Security = NO_SECURITY) -> None:
        self.core = core
        self.config = config
        self.security = security  # TLS and tokens: service.security
        limit = config.max_message_bytes or default_max_message_bytes(core.config.max_image_bytes)
        self.drain = Drain(DRAIN_QUIET_S)
        auth = [TokenInterceptor(security.authorizer)] if security.authorizer else []
        self.server = grpc.aio.server(
            interceptors=[DrainInterceptor(self.drain), *auth],
            options=[("grpc.max_receive_message_length", limit),
                     ("grpc.max_send_message_length", limit),
                     # Without this a second server on a taken port binds too (SO_REUSEPORT)
                     # and the two silently share its connections.
                     ("grpc.so_reuseport", int(config.reuse_port))],
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        )
        pb_grpc.add_ClassifierServicer_to_server(
            ClassifierServicer(core, stream_window=config.stream_window), self.server)
        oip_service = oip_grpc.add_to_server(core, self.server)  # KServe v2, same port
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, oip_service, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self.server)
        self.port: int | None = None

    async def start(self) -> int:
        """Bind, start serving and report SERVING; returns the bound port."""
        address = f"{self.config.host}:{self.config.port}"
        problem = f"cannot listen on {address}; is the port in use? (choose --port)"
        try:
            # grpcio (1.85) raises RuntimeError ("Failed to bind to address ..."); older
            # releases returned 0.
            if self.security.tls is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(
                    address, self.security.tls.grpc_credentials())
        except RuntimeError as e:
            raise OSError(problem) from e
        if self.port == 0:
            raise OSError(problem)
        await self.server.start()
        for service in HEALTH_SERVICES:
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain, then stop: NOT_SERVING, new RPCs refused with UNAVAILABLE, in-flight ones
        finish (``grace_s`` seconds in all), then grpc's shutdown cancels whatever is left."""
        grace_s = self.config.grace_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace_s
        self.drain.begin()
        await self.health.enter_graceful_shutdown()
        if grace_s > 0 and not await self.drain.drained(grace_s):
            log.warning("%d RPC(s) still in flight after the %.0f s grace period; cancelling "
                        "them", self.drain.in_flight, grace_s)
        await self.server.stop(max(0.0, deadline - time.monotonic()))
