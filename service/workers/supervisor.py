"""``tta-serve --workers N``: N front-end worker processes over one inference process.

One Python process has one GIL and one event loop: parsing, decoding and the wire's own work
for every request share one core of the machine. Here each worker process
(``service.workers.worker``) serves gRPC and HTTP on the same ports (``SO_REUSEPORT``: the
kernel spreads connections over them) and does that per-request work on its own core, while
this process holds each model once (ONNX Runtime sessions, its threads, GPU memory) and runs
every worker's passes through one batcher per model (``service.workers.engine``), so a pass
can hold requests from several workers. Pixels go by shared memory
(``service.workers.shared_rows``).

Lifecycle:
- start: the core starts here first (no model or no GPU ends the command before anything
  listens), then the workers, each checked to come up;
- a worker that dies (killed, crashed) is replaced; the others keep serving;
- SIGTERM/SIGINT: every worker drains as a single process does (NOT_SERVING / 503 to new
  requests, in-flight ones answered within the grace period), then exits; the inference
  process answers their last passes, and stops the core once every worker has gone.

What does not add up yet (each worker answers for itself): ``/metrics`` and the statistics
RPCs report the worker that answers the scrape -- its requests, its decode and wire timings --
with the passes it sent; the batch sizes of the shared batcher are this process's, logged at
shutdown.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess
from typing import Any

from service.core import CoreConfig, InferenceCore
from service.workers.engine import EngineLink

log = logging.getLogger(__name__)

RESTART_PAUSE_S = 1.0  # between a worker's death and its replacement (a crash loop slows down)
EXIT_MARGIN_S = 15.0  # beyond the grace period, for a worker's own shutdown after its drain


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    link: EngineLink
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    """The inference process: the core, the workers, their restarts and the shutdown."""

    def __init__(self, core_config: CoreConfig, grpc_config: Any, http_config: Any,
                 workers: int, security_config: Any = None) -> None:
        self.core_config = core_config
        self.security_config = security_config  # each worker's front ends check TLS/tokens
        self.grpc_config = grpc_config and replace(grpc_config, reuse_port=True)
        self.http_config = http_config and replace(http_config, reuse_port=True)
        self.count = workers
        self.core = InferenceCore.create(core_config)
        self.workers: dict[int, _Worker] = {}
        self.restarts = 0
        self._stopping = threading.Event()
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded process

    def start(self) -> Supervisor:
        """Ports checked free (a worker binding a taken one would die and be restarted in a
        loop: here it is the CLI's one-line error), the core started, the workers spawned."""
        from service.http.server import listening_socket

        for config, flag in ((self.grpc_config, "--grpc-port"), (self.http_config, "--http-port")):
            if config is not None:
                listening_socket(config.host, config.port, flag).close()
        self.core.start()
        for index in range(self.count):
            self._spawn(index)
        return self

    def _spawn(self, index: int) -> None:
        from service.workers import worker

        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=worker.main, name=f"tta-serve-worker-{index}",
            args=(theirs, self.core_config, self.grpc_config, self.http_config,
                  logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                  self.security_config))
        process.start()
        theirs.close()
        link = EngineLink(self.core, ours, f"worker-{index} (pid {process.pid})").start()
        self.workers[index] = _Worker(index, process, link)
        log.info("worker %d started (pid %d)", index, process.pid)

    def watch(self) -> None:
        """Replace dead workers until ``stop``; returns when stopping."""
        while not self._stopping.wait(0.2):
            for index, w in list(self.workers.items()):
                if w.process.exitcode is None or self._stopping.is_set():
                    continue
                log.warning("worker %d (pid %s) exited with %s; starting a new one", index,
                            w.process.pid, w.process.exitcode)
                w.link.conn.close()
                self.restarts += 1
                if time.monotonic() - w.started < RESTART_PAUSE_S:
                    time.sleep(RESTART_PAUSE_S)
                self._spawn(index)

    def stop(self, grace_s: float) -> bool:
        """Drain every worker (SIGTERM), wait for them, then stop the core; True when every
        worker exited cleanly (0)."""
        self._stopping.set()
        for w in self.workers.values():
            if w.process.exitcode is None and w.process.pid is not None:
                os.kill(w.process.pid, signal.SIGTERM)
        clean = True
        deadline = time.monotonic() + grace_s + EXIT_MARGIN_S
        for w in self.workers.values():
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.exitcode is None:
                log.error("worker %d did not stop in time; killing it", w.index)
                w.process.kill()
                w.process.join()
                clean = False
            elif w.process.exitcode != 0:
                clean = False
            w.link.conn.close()
            log.info("worker %d exited with %s", w.index, w.process.exitcode)
        self.core.stop()
        log.info("inference core stopped")
        for name, numbers in self.core.stats.snapshot()["models"].items():
            log.info("%s: forward passes by batch size (images), all workers: %s", name,
                     numbers["batch_sizes"])
        return clean


def serve_workers(core_config: CoreConfig, grpc_config: Any, http_config: Any,
                  workers: int, security_config: Any = None) -> int:
    """Serve with ``workers`` front-end processes until SIGTERM/SIGINT; the exit code."""
    supervisor = Supervisor(core_config, grpc_config, http_config, workers,
                            security_config).start()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    watcher = threading.Thread(target=supervisor.watch, name="worker-watch", daemon=True)
    watcher.start()
    wires = ", ".join(f"{name} on {c.host}:{c.port}" for name, c in
                      (("gRPC", grpc_config), ("HTTP", http_config)) if c is not None)
    log.info("serving with %d front-end workers (%s); models in this process", workers, wires)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    grace = max(c.grace_s for c in (grpc_config, http_config) if c is not None)
    log.info("shutting down: draining %d workers (grace %.0f s)", len(supervisor.workers), grace)
    clean = supervisor.stop(grace)
    log.info("stopped")
    return 0 if clean else 1
