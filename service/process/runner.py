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
from typing import Any, Protocol

from service.core import CoreConfig, InferenceCore
from service.grpc.server import GrpcConfig, GrpcServer
from service.http.patches import require as require_http_patches
from service.http.server import HttpConfig, HttpServer
from service.security.config import NO_SECURITY, Security, SecurityConfig
from service.security.tls import TlsFiles

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


def startup_message(core: InferenceCore, listening: dict[str, str],
                    security: Security = NO_SECURITY) -> str:
    """``serving cifar10 v1 on CPUExecutionProvider (...); gRPC listening on HOST:PORT; ...;
    TLS off (plaintext); token authorisation off (...)``: what is served, where, and to whom."""
    models = ", ".join(f"{m.name} v{m.version}" for m in core.list_models())
    c = core.config
    batching = (f"batches of up to {c.max_batch_size} images, {c.max_wait_ms:g} ms wait"
                if c.batching else "batching off")
    wires = "; ".join(f"{wire} listening on {address}" for wire, address in listening.items())
    return (f"serving {models} on {core.provider} (version policy {c.version_policy}; "
            f"{batching}); {wires}; {security.describe()}")


def serve(core_config: CoreConfig, grpc_config: GrpcConfig | None,
          http_config: HttpConfig | None, security_config: SecurityConfig | None = None) -> int:
    """Serve the front ends given until SIGTERM/SIGINT; the exit code (0 = stopped by a signal).

    Start-up errors (CoreError, OSError for a port in use, ValueError for a TLS or token
    setting: checked before the models load) propagate: the CLI prints them."""
    security = security_config.load() if security_config is not None else NO_SECURITY
    if (warning := security.expiry_warning()) is not None:
        log.warning(warning)
    return 0 if asyncio.run(_serve(core_config, grpc_config, http_config, security)) else 1


async def _serve(core_config: CoreConfig, grpc_config: GrpcConfig | None,
                 http_config: HttpConfig | None, security: Security = NO_SECURITY) -> bool:
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
            grpc_server = GrpcServer(core, grpc_config, security)
            listening["gRPC"] = f"{grpc_config.host}:{await grpc_server.start()}"
            started.append(grpc_server)
        if http_config is not None:
            http_server = HttpServer(core, http_config, security)
            listening["HTTP"] = f"{http_config.host}:{await http_server.start()}"
            started.append(http_server)
            watched.add(http_server.finished)
        log.info(startup_message(core, listening, security))
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
                timeout_s: float = 2.0, tls: TlsFiles | None = None) -> int:
    """0 (healthy) when the gRPC health service says SERVING or HTTP /readyz answers 200, else 1.

    The Dockerfile's HEALTHCHECK runs ``sys.exit(healthcheck())``. gRPC is asked first (a closed
    port fails at once); each probe waits at most ``timeout_s``, inside the HEALTHCHECK's 10 s.
    A server on TLS (``tls``, else the ``TTA_SERVE_TLS_*`` variables the container runs with)
    is probed over TLS, as ``TlsFiles.probe_context`` / ``grpc_probe`` say.
    """
    if tls is None:
        tls = SecurityConfig.from_env().tls_files()
    if tls is not None:
        http_url = http_url.replace("http://", "https://", 1)
    return 0 if _grpc_serving(grpc_address, timeout_s, tls) or \
        _http_ready(http_url, timeout_s, tls) else 1


def _grpc_serving(address: str, timeout_s: float, tls: TlsFiles | None = None) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    options: list[tuple[str, Any]] = [("grpc.enable_http_proxy", 0)]
    try:
        if tls is None:
            channel = grpc.insecure_channel(address, options=options)
        else:
            credentials, names = tls.grpc_probe()
            channel = grpc.secure_channel(address, credentials, options=options + names)
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=timeout_s)
    except (grpc.RpcError, ValueError):  # ValueError: TLS files that cannot be read
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _http_ready(url: str, timeout_s: float, tls: TlsFiles | None = None) -> bool:
    import urllib.request

    handlers: list[Any] = [urllib.request.ProxyHandler({})]  # never via a proxy
    if tls is not None:
        handlers.append(urllib.request.HTTPSHandler(context=tls.probe_context()))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=timeout_s) as response:
            return response.status == 200
    except OSError:  # refused, timed out, or an HTTP error status (503 = not ready)
        return False
