"""The HTTP front end in this process: the BentoML service's ASGI app, served by uvicorn on the
running event loop, over a core the caller started (the one the gRPC server uses).

Why not ``bentoml serve``: it runs the service in processes of its own (a circus supervisor and
a worker), and each worker builds its own service instance and so its own ``InferenceCore``: a
second copy of every model, a second batcher per model, a second /metrics. BentoML 1.4's worker
itself does no more than ``Service.to_asgi()`` and ``uvicorn.Server(config).run()``
(``_bentoml_impl/worker/service.py``); ``HttpServer`` does the same beside the gRPC server, and
``service.http.service.provide_core`` hands the caller's core to the ``Classifier`` instance
BentoML creates in the app's lifespan. What differs from the worker, each on purpose:

- the socket is bound here first, so a port in use is the CLI's one-line error (uvicorn logs
  it and calls ``sys.exit``);
- uvicorn installs no signal handlers (``patches.QuietUvicorn``): the runner owns
  SIGTERM/SIGINT and calls ``stop()``, which drains as ``service.http.drain`` describes
  (503 + ``Connection: close`` to new requests, in-flight ones answered) before uvicorn's own
  shutdown;
- Prometheus in single-process mode: BentoML's client defaults to multiprocess mode, which
  reads metric files from ``$PROMETHEUS_MULTIPROC_DIR`` that ``bentoml serve`` sets up for its
  workers; one process has its metrics in prometheus_client's own registry.

Decoding and the forward passes already run off the event loop (the core's decode thread pool,
the batchers' threads; Pillow and ONNX Runtime release the GIL), so a second worker process
would add a second copy of the models rather than decoding capacity: raise ``--decode-threads``
instead, or run replicas.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

import uvicorn

from service.core import InferenceCore
from service.http import patches
from service.http.drain import DRAIN, drained
from service.security.config import NO_SECURITY, Security

log = logging.getLogger(__name__)

BACKLOG = 2048  # BentoML's worker default


@dataclass(frozen=True)
class HttpConfig:
    host: str = "0.0.0.0"
    port: int = 3000  # 0 = any free port (tests)
    grace_s: float = 10.0  # on SIGTERM: time in-flight requests get to finish
    keep_alive_s: int = 5  # idle keep-alive connections close after this (BentoML's default)
    port_flag: str = "--http-port"  # the option a port-in-use error tells the user to change


def listening_socket(host: str, port: int, port_flag: str = "--http-port") -> socket.socket:
    """A bound, listening TCP socket; OSError names the address and the option to change."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = info[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise OSError(f"cannot listen on {host}:{port} ({e})") from e
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}; is the port in use? "
                      f"(choose {port_flag})") from e
    sock.setblocking(False)
    return sock


def _app(core: InferenceCore, security: Security = NO_SECURITY) -> object:
    """The service's ASGI app as BentoML's worker builds it, its Classifier over ``core``, its
    token check (``service.security.asgi``) with ``security``'s tokens."""
    from service.http.service import Classifier, provide_core
    from service.security import asgi

    provide_core(core)
    asgi.provide(security)
    return patches.in_process_app(Classifier)


class HttpServer:
    """The HTTP service over a *started* core, on this event loop: ``start``, then ``stop``."""

    def __init__(self, core: InferenceCore, config: HttpConfig,
                 security: Security = NO_SECURITY) -> None:
        self.core = core
        self.config = config
        self.security = security  # TLS (uvicorn's) and tokens: service.security
        self.port: int | None = None
        self._server: patches.QuietUvicorn | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> int:
        """Bind, build the app, run its start-up (the Classifier instance); the bound port.

        ``UnsupportedDependency`` before binding when a BentoML/uvicorn target is not as the
        patches expect (``service.http.patches``)."""
        patches.require()
        sock = listening_socket(self.config.host, self.config.port, self.config.port_flag)
        DRAIN.reset()  # one drain per server (the state is the process's)
        self.port = sock.getsockname()[1]
        tls = self.security.tls.uvicorn_options() if self.security.tls else {}
        config = uvicorn.Config(
            app=_app(self.core, self.security), log_config=None,
            access_log=False,  # BentoML logs access
            backlog=BACKLOG, server_header=False,
            timeout_keep_alive=self.config.keep_alive_s,
            timeout_graceful_shutdown=max(1, round(self.config.grace_s)), **tls)
        self._server = patches.QuietUvicorn(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http")
        while not self._server.started:
            if self._task.done():
                sock.close()
                await self._task  # raises what stopped it
                raise RuntimeError("the HTTP service stopped while starting")
            await asyncio.sleep(0.01)
        return self.port

    @property
    def finished(self) -> asyncio.Task:
        """Done when uvicorn has stopped (after ``stop``, or on its own: a failure)."""
        assert self._task is not None, "start() first"
        return self._task

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain (``service.http.drain``: 503 to new requests, in-flight ones get ``grace_s``),
        then uvicorn's shutdown: connections closed, the lifespan's end."""
        if self._server is None or self._task is None:
            return
        grace_s = self.config.grace_s if grace_s is None else grace_s
        if not self._task.done():
            DRAIN.begin()
            log.info("HTTP draining: refusing new requests, finishing %d in flight (grace "
                     "%.0f s)", DRAIN.in_flight, grace_s)
            await drained(grace_s, self._server.server_state.connections)
            self._server.should_exit = True
        await asyncio.shield(self._task)
