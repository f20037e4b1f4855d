"""Dynamic batching: concurrent requests to one model version share one forward pass.

Each served model version owns one ``DynamicBatcher`` and its worker thread (ONNX Runtime
releases the GIL, so the event loops stay free). A request submits a block of model-input rows
with the number of *images* it stands for -- one image's row, one image's TTA views (one image,
V rows), or several preprocessed images (one row each) -- and gets a
``concurrent.futures.Future`` of exactly those rows' outputs; asyncio callers await it with
``asyncio.wrap_future``. The worker takes the first waiting block, then gathers more until
``max_batch_size`` rows (what a pass's memory grows with: a TTA request brings V of them) or
``max_wait_ms`` after the first, runs one forward pass and hands
each block its own slice. It waits for company only while company is on its way: when the core
has no more requests admitted (``in_flight``) than the worker has gathered, the pass runs at
once, so a lone request pays no batching delay and a loaded server still forms batches.
A block is never split across passes, so TTA views always run
together; a block is never held back either: one larger than ``max_batch_size`` rows runs
in a pass of its own (the core submits preprocessed images in blocks of at most
``max_batch_size``). ``max_batch_size=1`` turns batching off (one request per pass, no
waiting), for benchmarks.

The queue itself is unbounded: the core admits at most ``max_pending`` requests (its
back-pressure), so at most that many requests' blocks can ever be queued here.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from service.core.errors import ModelUnavailable
from service.core.stats import CoreStats, RequestTimes

log = logging.getLogger(__name__)

_STOP = object()


class DynamicBatcher:
    """Gathers submitted row blocks into forward passes of ``run`` on one worker thread."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        name: str,
        max_batch_size: int,
        max_wait_ms: float,
        stats: CoreStats | None = None,
        stats_key: str | None = None,
        stats_version: int = 0,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        """``in_flight``: requests admitted and not yet answered (None: always wait)."""
        self._stats_version = stats_version
        self._run = run
        self._in_flight = in_flight
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0 if max_batch_size > 1 else 0.0
        self._stats = stats
        self._stats_key = stats_key or name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name=f"batcher-{name}", daemon=True)

    def start(self) -> DynamicBatcher:
        self._thread.start()
        return self

    def submit(self, rows: np.ndarray, images: int = 1,
               times: RequestTimes | None = None) -> Future:
        """Queue (R, ...) model-input rows standing for ``images`` images (1 for one image's TTA
        views, R for preprocessed images); the future resolves to their (R, C) outputs.
        ``times`` gets the block's queue wait and forward-pass duration."""
        future: Future = Future()
        with self._close_lock:
            if self._closed:
                raise ModelUnavailable(f"{self.name} is shutting down; retry the request")
            self._queue.put((rows, future, max(1, images), times, time.perf_counter_ns()))
        return future

    def close(self, wait: bool = False, timeout: float | None = None) -> None:
        """Stop after the requests already queued have been answered."""
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        if wait and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def _work(self) -> None:
        stopping = False
        carried = None  # a block taken from the queue that did not fit the last pass
        while not stopping:
            item = carried if carried is not None else self._queue.get()
            carried = None
            if item is _STOP:
                break
            batch, rows = [item], len(item[0])
            deadline = time.monotonic() + self.max_wait_s
            while rows < self.max_batch_size:
                try:
                    item = self._queue.get_nowait()  # what is already here joins this pass
                except queue.Empty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._company_expected(len(batch)):
                        break
                    try:
                        item = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if item is _STOP:
                    stopping = True
                    break
                if rows + len(item[0]) > self.max_batch_size:
                    carried = item  # first in the next pass
                    break
                batch.append(item)
                rows += len(item[0])
            self._run_batch(batch)
        log.debug("batcher %s stopped", self.name)

    def _company_expected(self, gathered: int) -> bool:
        """More admitted requests than blocks in hand: someone is decoding and will submit."""
        return self._in_flight is None or self._in_flight() > gathered

    def _run_batch(self, batch: list[tuple[np.ndarray, Future, int, RequestTimes | None, int]],
                   ) -> None:
        # Requests whose caller gave up (cancelled) are dropped before the pass.
        live = [item for item in batch if item[1].set_running_or_notify_cancel()]
        if not live:
            return
        images = sum(item[2] for item in live)
        rows = sum(len(item[0]) for item in live)
        try:
            # All of the pass, joining the blocks and the stats included: whatever raises fails
            # these futures only, and the worker goes on to the next pass.
            joining = time.perf_counter_ns()
            x = live[0][0] if len(live) == 1 else np.concatenate([item[0] for item in live])
            start = time.perf_counter_ns()
            out = self._run(x)
            infer_ns = time.perf_counter_ns() - start
            seconds = infer_ns / 1e9
            if self._stats is not None:
                self._stats.record_batch(self._stats_key, images, len(x), seconds)
        except Exception as e:
            log.exception("forward pass of %s failed (%d images, %d rows)",
                          self.name, images, rows)
            error = ModelUnavailable(f"the forward pass of {self.name} failed: {e}")
            for item in live:
                item[1].set_exception(error)
            return
        log.debug("%s: batch of %d images in %d blocks (%d rows) in %.1f ms",
                  self.name, images, len(live), len(x), seconds * 1000)
        handing_out = time.perf_counter_ns()
        offset = 0
        for block, fut, _, times, submitted in live:
            if times is not None:
                times.observe_pass(joining - submitted, infer_ns)
            fut.set_result(out[offset:offset + len(block)])
            offset += len(block)
        if self._stats is not None:
            self._stats.record_execution(
                self._stats_key, self._stats_version, images, input_ns=start - joining,
                infer_ns=infer_ns, output_ns=time.perf_counter_ns() - handing_out)
