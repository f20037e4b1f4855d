"""Process trees of ``tta-serve http`` and ``tta-serve all``: BentoML's server beside ours.

``bentoml serve`` runs the HTTP service in a supervisor process (circus) with worker processes
of its own; they get the core's settings through ``TTA_SERVE_*`` environment variables
(``service.serve_env``). A worker that cannot start its core is restarted by the supervisor
forever, so ``tta-serve http`` first starts (and stops) one core itself: a missing model or an
impossible ``--device cuda`` ends the command with the core's one-line error, as for gRPC.

``tta-serve all``: this process serves gRPC (``service.grpc_server.GrpcServer``; its core fails
fast on the same start-up errors) and runs ``bentoml serve`` as its child. SIGTERM/SIGINT stops
both at once, each with the same grace for in-flight requests; the exit code is 0 when both
stopped cleanly. If the HTTP service dies on its own, gRPC is stopped too and the exit code is 1,
so a container supervisor sees one failed service, never half of one.

``healthcheck``: the serving image's HEALTHCHECK; healthy when either front end answers, so an
image run as ``tta-serve``, ``tta-serve grpc`` or ``tta-serve http`` is reported correctly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from service.core import CoreConfig, InferenceCore
from service.grpc_server import GrpcConfig, running, stop_on_signals
from service.serve_env import LOG_LEVEL_ENV, core_config_to_env

log = logging.getLogger(__name__)

SERVICE = "service.http_service:Classifier"
# What the HEALTHCHECK probes: the default ports of ``tta-serve grpc`` / ``tta-serve http``.
HEALTH_GRPC_ADDRESS = "127.0.0.1:50051"
HEALTH_HTTP_URL = "http://127.0.0.1:3000/readyz"
# The folder holding the ``service`` package: bentoml serve imports SERVICE from there.
WORKING_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class HttpConfig:
    host: str = "0.0.0.0"
    port: int = 3000
    grace_s: float = 10.0  # on SIGTERM: time in-flight requests get to finish
    log_level: str = "INFO"


def http_command(http: HttpConfig) -> list[str]:
    """``bentoml serve`` of the HTTP service, run by this interpreter."""
    return [sys.executable, "-m", "bentoml", "serve", SERVICE, "--working-dir", str(WORKING_DIR),
            "--host", http.host, "--port", str(http.port),
            "--timeout-graceful-shutdown", str(max(1, round(http.grace_s)))]


def http_environment(core_config: CoreConfig, http: HttpConfig) -> dict[str, str]:
    """This environment plus the core's settings; BentoML's usage tracking off unless asked."""
    env = {**os.environ, **core_config_to_env(core_config), LOG_LEVEL_ENV: http.log_level}
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")  # a model server should not phone home
    return env


def check_core_starts(core_config: CoreConfig) -> None:
    """Start and stop a core: raises the CoreError a BentoML worker would otherwise loop on."""
    InferenceCore.create(core_config).start().stop()


def serve_http(core_config: CoreConfig, http: HttpConfig) -> NoReturn:
    """``tta-serve http``: check the core starts, then become ``bentoml serve``."""
    check_core_starts(core_config)
    command = http_command(http)
    log.info("start-up check passed; starting the HTTP service: %s", " ".join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, http_environment(core_config, http))


def serve_all(core_config: CoreConfig, grpc_config: GrpcConfig, http: HttpConfig) -> int:
    """``tta-serve all``: gRPC in this process, the HTTP service as a child, stopped together."""
    return 0 if asyncio.run(_serve_all(core_config, grpc_config, http)) else 1


async def _serve_all(core_config: CoreConfig, grpc_config: GrpcConfig, http: HttpConfig) -> bool:
    """Serve until SIGTERM/SIGINT or until the HTTP service dies; whether both stopped cleanly.

    ``grpc_server.serve`` plus the child: it is started first (BentoML imports for seconds while
    the core loads here) and stopped while the gRPC server finishes its in-flight requests.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    restore_signals = stop_on_signals(stop)
    child = subprocess.Popen(http_command(http), env=http_environment(core_config, http))
    child_exit = loop.run_in_executor(None, child.wait)
    log.info("HTTP service starting in process %d, listening on %s:%d", child.pid, http.host,
             http.port)
    http_stopped: asyncio.Future[bool] | None = None
    try:
        async with running(core_config, grpc_config):
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({stopping, child_exit}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            restore_signals()  # a second signal ends the process at once
            http_died = child_exit.done() and not stop.is_set()
            if http_died:
                log.error("the HTTP service exited on its own (code %s); stopping gRPC too",
                          child.returncode)
            # Stops the child while leaving the block stops the gRPC server.
            http_stopped = asyncio.ensure_future(
                asyncio.to_thread(_stop_child, child, http.grace_s + 15))
        clean = await http_stopped and not http_died
    finally:
        if http_stopped is None and child.poll() is None:  # start-up failed: no child left
            await asyncio.to_thread(_stop_child, child, http.grace_s + 15)
    log.info("stopped")
    return clean


def _stop_child(child: subprocess.Popen, timeout_s: float) -> bool:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL; whether it stopped cleanly."""
    if child.poll() is not None:
        return child.returncode == 0
    log.info("stopping the HTTP service (process %d)", child.pid)
    child.send_signal(signal.SIGTERM)
    try:
        code = child.wait(timeout_s)
    except subprocess.TimeoutExpired:
        log.error("the HTTP service did not stop within %.0f s; killing it", timeout_s)
        child.kill()
        child.wait()
        return False
    # -SIGTERM: it was still starting up (no handler of its own yet) when told to stop.
    return code in (0, -signal.SIGTERM)


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
