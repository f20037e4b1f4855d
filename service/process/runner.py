"""The serving process: one event loop, one ``InferenceCore``, the front ends beside each other.

``tta-serve`` (= ``tta-serve all``) serves gRPC (``service.grpc.server.GrpcServer``) and HTTP
(``service.http.server.HttpServer``, the BentoML service's app on uvicorn) from this process
over one core: one copy of each model, one batcher per model fed by both wires, one /metrics and
one statistics view. ``tta-serve grpc`` / ``tta-serve http`` serve one of them the same way.
Front ends own their wires; this module owns the process: the core's start (its errors -- no
model, ``--device cuda`` without a GPU -- end the command before anything listens), the
start-up line naming the ORT provider, signals, and the order of the shutdown.

SIGTERM/SIGINT: every front end drains at once (NOT_SERVING / 503 on /readyz, new requests
refused with UNAVAILABLE / 503, those in flight get ``grace_s``), then the core finishes what
is queued and stops. A second signal ends the process at once. Exit code 0 when a signal
stopped it; 1 when a front end stopped on its own (the others are stopped too, so a container
supervisor sees one failed service, never half of one).

``healthcheck``: the serving image's HEALTHCHECK; healthy when either front end answers, so an
image run as ``tta-serve``, ``tta-serve grpc`` or ``tta-serve http`` is reported correctly.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Protocol

from service.core import CoreConfig, InferenceCore
from service.grpc.server import GrpcConfig, GrpcServer
from service.http.patches import require as require_http_patches
from service.http.server import HttpConfig, HttpServer

log = logging.getLogger(__name__)

# What the HEALTHCHECK probes: the default ports of ``tta-serve grpc`` / ``tta-serve http``.
HEALTH_GRPC_ADDRESS = "127.0.0.1:50051"
HEALTH_HTTP_URL = "http://127.0.0.1:3000/readyz"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class FrontEnd(Protocol):
    """What the runner needs of a front end (GrpcServer, HttpServer)."""

    async def start(self) -> int: ...  # the bound port

    async def stop(self) -> None: ...  # drain, then close


def stop_on_signals(stop: asyncio.Event) -> Callable[[], None]:
    """SIGTERM/SIGINT set ``stop``; the function returned removes the handlers again, so that a
    second signal ends the process at once."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)

    def restore() -> None:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)

    return restore


def startup_message(core: InferenceCore, listening: dict[str, str]) -> str:
    """``serving cifar10 v1 on CPUExecutionProvider (...); gRPC listening on HOST:PORT; ...``"""
    models = ", ".join(f"{m.name} v{m.version}" for m in core.list_models())
    c = core.config
    batching = (f"batches of up to {c.max_batch_size} images, {c.max_wait_ms:g} ms wait"
                if c.batching else "batching off")
    wires = "; ".join(f"{wire} listening on {address}" for wire, address in listening.items())
    return (f"serving {models} on {core.provider} (version policy {c.version_policy}; "
            f"{batching}); {wires}")


def serve(core_config: CoreConfig, grpc_config: GrpcConfig | None,
          http_config: HttpConfig | None) -> int:
    """Serve the front ends given until SIGTERM/SIGINT; the exit code (0 = stopped by a signal).

    Start-up errors (CoreError, OSError for a port in use) propagate: the CLI prints them."""
    return 0 if asyncio.run(_serve(core_config, grpc_config, http_config)) else 1


async def _serve(core_config: CoreConfig, grpc_config: GrpcConfig | None,
                 http_config: HttpConfig | None) -> bool:
    stop = asyncio.Event()
    restore_signals = stop_on_signals(stop)
    core = InferenceCore.create(core_config)
    started: list[FrontEnd] = []
    clean = False
    try:
        if http_config is not None:  # UnsupportedDependency before anything loads or listens
            require_http_patches()
        core.start()  # raises DeviceUnavailable / ModelNotFound before anything listens
        listening: dict[str, str] = {}
        stopping = asyncio.ensure_future(stop.wait())
        watched: set[asyncio.Future] = {stopping}
        if grpc_config is not None:
            grpc_server = GrpcServer(core, grpc_config)
            listening["gRPC"] = f"{grpc_config.host}:{await grpc_server.start()}"
            started.append(grpc_server)
        if http_config is not None:
            http_server = HttpServer(core, http_config)
            listening["HTTP"] = f"{http_config.host}:{await http_server.start()}"
            started.append(http_server)
            watched.add(http_server.finished)
        log.info(startup_message(core, listening))
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        clean = stop.is_set()
        if not clean:
            log.error("the HTTP service stopped on its own; stopping the others too")
    finally:
        restore_signals()  # from here a second signal ends the process at once
        if started:
            grace = max(c.grace_s for c in (grpc_config, http_config) if c is not None)
            log.info("shutting down: finishing in-flight requests (grace %.0f s)", grace)
            outcomes = await asyncio.gather(*(front.stop() for front in started),
                                            return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    log.error("a front end did not stop cleanly: %r", outcome)
                    clean = False
        await asyncio.to_thread(core.stop)
    for name, numbers in core.stats.snapshot()["models"].items():
        log.info("%s: forward passes by batch size (images): %s", name, numbers["batch_sizes"])
    log.info("stopped")
    return clean


def healthcheck(grpc_address: str = HEALTH_GRPC_ADDRESS, http_url: str = HEALTH_HTTP_URL,
                timeout_s: float = 2.0) -> int:
    """0 (healthy) when the gRPC health service says SERVING or HTTP /readyz answers 200, else 1.

    The Dockerfile's HEALTHCHECK runs ``sys.exit(healthcheck())``. gRPC is asked first (a closed
    port fails at once); each probe waits at most ``timeout_s``, inside the HEALTHCHECK's 10 s.
    """
    return 0 if _grpc_serving(grpc_address, timeout_s) or _http_ready(http_url, timeout_s) else 1


def _grpc_serving(address: str, timeout_s: float) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=timeout_s)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _http_ready(url: str, timeout_s: float) -> bool:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=timeout_s) as response:
            return response.status == 200
    except OSError:  # refused, timed out, or an HTTP error status (503 = not ready)
        return False
