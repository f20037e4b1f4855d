"""The inference process's side of the worker link: every worker's passes into one core.

The inference process holds the only ``InferenceCore`` with ONNX Runtime sessions: one copy of
each model, one ``DynamicBatcher`` per model version. Each front-end worker has one duplex
``multiprocessing`` connection to it, read by one thread here (``EngineLink.serve``). A worker
asks:

- ``("open", id, name, version)``: is this version served here? -> its provider and variant,
  loading it first when the repository has it but this process does not serve it yet (a hot
  reload a worker saw first);
- ``("run", id, name, version, segment, shape)``: one pass of rows, read in place from the
  worker's shared-memory segment -> ``("ok", id, outputs)`` (the (R, C) probabilities,
  pickled: a few floats per row) or ``("error", id, kind, message)``.

A block goes into the version's batcher as one unit, so the batcher forms passes from several
workers' blocks (``max_batch_size`` rows at most, a block never split).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import Future
from multiprocessing.connection import Connection

from service.core import CoreError, InferenceCore
from service.workers.shared_rows import AttachedSegments

log = logging.getLogger(__name__)


class EngineLink:
    """One worker's connection to the core: requests read on a thread, answers sent back."""

    def __init__(self, core: InferenceCore, conn: Connection, worker: str) -> None:
        self.core = core
        self.conn = conn
        self.worker = worker
        self._send_lock = threading.Lock()
        self._segments = AttachedSegments()
        self.thread = threading.Thread(target=self.serve, name=f"engine-{worker}", daemon=True)

    def start(self) -> EngineLink:
        self.thread.start()
        return self

    def serve(self) -> None:
        """Until the worker's end closes (it exited, or died)."""
        try:
            while True:
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):
                    break
                if message[0] == "run":
                    self._run(*message[1:])
                elif message[0] == "open":
                    self._open(*message[1:])
        finally:
            self._segments.close()
            log.debug("link to %s closed", self.worker)

    def _send(self, message: tuple) -> None:
        # OSError/ValueError: the worker is gone, nobody waits for this answer
        with self._send_lock, contextlib.suppress(OSError, ValueError):
            self.conn.send(message)

    def _open(self, request_id: int, name: str, version: int) -> None:
        try:
            try:
                info = self.core.get_model(name, version)
            except CoreError:
                self.core.load_model(name)  # the repository has it, this process not yet
                info = self.core.get_model(name, version)
        except CoreError as e:
            self._send(("error", request_id, type(e).__name__, str(e)))
            return
        self._send(("ok", request_id, (info.provider, getattr(info, "variant", None))))

    def _run(self, request_id: int, name: str, version: int, segment: str,
             shape: tuple[int, ...]) -> None:
        registry = self.core._require_registry()  # the one lease API: pin the exact version
        try:
            model = registry.acquire(name, version)
        except CoreError as e:
            self._send(("error", request_id, type(e).__name__, str(e)))
            return
        try:
            rows = self._segments.rows(segment, shape)
            future = model.batcher.submit(rows, images=len(rows))
        except Exception as e:
            registry.release(model)
            self._send(("error", request_id, type(e).__name__, str(e)))
            return

        def answered(done: Future) -> None:
            registry.release(model)
            error = done.exception()
            if error is None:
                self._send(("ok", request_id, done.result().copy()))
            else:
                self._send(("error", request_id, type(error).__name__, str(error)))

        future.add_done_callback(answered)
