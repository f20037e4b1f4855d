"""A front-end worker process: gRPC and HTTP over a core whose forward passes run elsewhere.

The worker runs the ordinary serving process (``service.process.runner``: its front ends, its
drain, its signals) over an ordinary ``InferenceCore`` -- decoding, the evaluation transform,
TTA views and their combination, top-k, errors, admission and statistics are the core's own,
written once -- except that each model version's graph is ``RemoteGraph``: its ``run`` writes
the pass's rows into shared memory and asks the inference process (``service.workers.engine``)
to run them in its batcher, beside every other worker's. No ONNX Runtime session is made here.

Why the core's ``open_version`` is replaced in this process (``use_remote_graphs``) rather
than passed in: the worker is a process of its own that never opens a model file itself, and
the core keeps one way to load a version; the replacement is the whole difference.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from service.core import CoreConfig, errors
from service.core.loading import ModelLoadError, OpenedGraph
from service.model_repository import ModelRepository, ModelRepositoryError
from service.workers.shared_rows import RowSegments

log = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 600.0  # a pass the inference process never answers (it died): give up


class WorkerLink:
    """The worker's end of its connection: requests out, answers matched to their futures."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.segments = RowSegments()
        self._ids = itertools.count()
        self._waiting: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._receiver = threading.Thread(target=self._receive, name="worker-link", daemon=True)
        self._receiver.start()

    def ask(self, *message: Any) -> Any:
        """Send ``(kind, id, *message[1:])`` and block for the answer; CoreError on an error."""
        request_id = next(self._ids)
        future: Future = Future()
        with self._lock:
            self._waiting[request_id] = future
            try:
                self.conn.send((message[0], request_id, *message[1:]))
            except (OSError, ValueError) as e:
                self._waiting.pop(request_id, None)
                raise errors.ModelUnavailable("the inference process is gone; retry") from e
        return future.result(timeout=ANSWER_TIMEOUT_S)

    def _receive(self) -> None:
        while True:
            try:
                kind, request_id, *rest = self.conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                future = self._waiting.pop(request_id, None)
            if future is None:
                continue
            if kind == "ok":
                future.set_result(rest[0])
            else:
                future.set_exception(_core_error(*rest))
        with self._lock:  # the inference process is gone: fail whatever still waits
            waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            future.set_exception(errors.ModelUnavailable("the inference process is gone; retry"))
        log.warning("the inference process is gone; this worker drains and exits")
        os.kill(os.getpid(), signal.SIGTERM)  # an orphaned worker must not serve on


def _core_error(kind: str, message: str) -> Exception:
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, errors.CoreError):
        return cls(message)
    return errors.ModelUnavailable(f"the forward pass failed in the inference process: {message}")


class RemoteGraph:
    """``OpenedGraph.run`` for one model version: rows via shared memory, outputs back."""

    def __init__(self, link: WorkerLink, name: str, version: int) -> None:
        self.link, self.name, self.version = link, name, version

    def run(self, x: np.ndarray) -> np.ndarray:
        segment, shape = self.link.segments.write(x)
        try:
            return self.link.ask("run", self.name, self.version, segment.name, shape)
        except errors.ModelNotFound as e:  # the inference process swapped versions meanwhile
            raise errors.ModelUnavailable(f"{e} (the version changed meanwhile; retry)") from e
        finally:
            self.link.segments.release(segment)


def use_remote_graphs(link: WorkerLink) -> None:
    """In this process, the core opens a version as its model card plus a ``RemoteGraph``."""
    from service.core import models

    def open_remote(repository: ModelRepository, name: str, version: int, config: CoreConfig,
                    plan: Any) -> tuple[Any, OpenedGraph]:
        try:
            resolved = repository.resolve(name, version)
        except ModelRepositoryError as e:
            raise ModelLoadError(str(e)) from e
        try:
            provider, variant = link.ask("open", name, version)
        except errors.CoreError as e:
            raise ModelLoadError(f"the inference process does not serve it: {e}") from e
        return resolved, OpenedGraph(None, provider, variant,
                                     RemoteGraph(link, name, version).run)

    models.open_version = open_remote  # type: ignore[assignment]


def main(conn: Connection, core_config: CoreConfig, grpc_config: Any, http_config: Any,
         log_level: str, security_config: Any = None) -> None:
    """The worker process's entry (``multiprocessing`` spawn): serve until SIGTERM."""
    import sys

    from service.process.runner import serve

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s "
                        "[worker %(process)d] %(message)s")
    os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor only: it drains the workers
    link = WorkerLink(conn)
    use_remote_graphs(link)
    try:
        code = serve(core_config, grpc_config, http_config, security_config)
    finally:
        link.segments.close()
    log.info("worker exits with %d", code)
    # Everything is answered, stopped and unlinked. The interpreter's own teardown in a spawned
    # worker then sat ~17 s in native code (no Python frame on any thread: library teardown
    # at exit), past a drain's budget: end the process here instead.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
