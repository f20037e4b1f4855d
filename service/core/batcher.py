"""Dynamic batching: concurrent requests to one model version share one forward pass.

Each served model version owns one ``DynamicBatcher`` and its worker thread (ONNX Runtime
releases the GIL, so the event loops stay free). A request submits a block of model-input rows
with the number of *images* it stands for -- one image's row, one image's TTA views (one image,
V rows), or several preprocessed images (one row each) -- and gets a
``concurrent.futures.Future`` of exactly those rows' outputs (``submit``); asyncio callers await
``run`` instead, whose answers reach their event loop in one wake-up per pass. The worker takes
the first waiting block, then gathers more until ``max_batch_size`` rows (what a pass's memory
grows with: a TTA request brings V of them) or ``max_wait_ms`` after the first, runs one forward
pass and hands each block its own slice. It waits for company only while company is on its
way: when the core has no more requests admitted (``in_flight``) than the worker has gathered,
the pass runs at once, so a lone request pays no batching delay and a loaded server still forms
batches.
A block is never split across passes, so TTA views always run
together; a block is never held back either: one larger than ``max_batch_size`` rows runs
in a pass of its own (the core submits preprocessed images in blocks of at most
``max_batch_size``). ``max_batch_size=1`` turns batching off (one request per pass, no
waiting), for benchmarks.
A lone request (nothing queued, nothing else admitted) whose pass is cheap -- at most
``INLINE_MAX_S`` by the latest measured pass -- runs inline on its event loop's thread
(``run``): the thread hand-off there and back would cost more than the pass itself.

Work nobody waits for is never computed: a block whose caller gave up (a cancelled task or
future: a cancelled gRPC call, a closed HTTP connection) or whose deadline (``deadline``, a
``time.monotonic()`` time; ``service.core.deadlines``) has passed is dropped when the worker
takes it from the queue -- before it takes room in a pass -- and counted in the stats
(``record_dropped``); an expired block's caller gets DeadlineExceeded. Without this, a server
offered more than it can do computes answers its clients stopped waiting for (congestion
collapse: goodput falls far below capacity).

The queue itself is unbounded here: the core bounds it, per model (``max_queue``) and in all
(``max_pending``), when it admits a request.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import NamedTuple

import numpy as np

from service.core.deadlines import expired
from service.core.errors import DeadlineExceeded, ModelUnavailable
from service.core.stats import CoreStats, RequestTimes

log = logging.getLogger(__name__)

_STOP = object()
# A lone request's pass runs on the caller's thread when it should take at most this long: the
# hand-off to the worker thread and back costs ~0.1-0.3 ms, more than a cheap model's pass.
INLINE_MAX_S = 0.002
# What a submitted block's answer goes to: a thread-safe future (submit) or an asyncio one (run).
Waiter = Future | asyncio.Future


class _Block(NamedTuple):
    """One request's rows in the queue, and where their answer goes."""

    rows: np.ndarray
    waiter: Waiter
    images: int
    times: RequestTimes | None
    submitted_ns: int
    deadline: float | None  # time.monotonic(); None: none


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
        self._row_s: float | None = None  # the latest pass's seconds per row (``_alone``)
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name=f"batcher-{name}", daemon=True)

    def start(self) -> DynamicBatcher:
        self._thread.start()
        return self

    def submit(self, rows: np.ndarray, images: int = 1, times: RequestTimes | None = None,
               deadline: float | None = None) -> Future:
        """Queue (R, ...) model-input rows standing for ``images`` images (1 for one image's TTA
        views, R for preprocessed images); the future resolves to their (R, C) outputs.
        ``times`` gets the block's queue wait and forward-pass duration; past ``deadline``
        (``time.monotonic()``) the block is dropped instead of run (DeadlineExceeded)."""
        future: Future = Future()
        self._enqueue(_Block(rows, future, max(1, images), times, 0, deadline))
        return future

    async def run(self, rows: np.ndarray, images: int = 1, times: RequestTimes | None = None,
                  deadline: float | None = None) -> np.ndarray:
        """``submit`` for asyncio callers, without a thread-safe future per block: the answers
        of one pass reach each event loop in one ``call_soon_threadsafe`` (one wake-up of the
        loop for a pass of 32 requests, where ``wrap_future`` costs one per request)."""
        waiter: asyncio.Future = asyncio.get_running_loop().create_future()
        block = _Block(rows, waiter, max(1, images), times, 0, deadline)
        if self._alone(len(rows), images):  # a lone cheap pass: here, no thread hand-off
            self._run_batch([block._replace(submitted_ns=time.perf_counter_ns())])
        else:
            self._enqueue(block)
        return await waiter  # cancelled with its task: the worker then skips the block

    def _alone(self, rows: int, images: int) -> bool:
        """Whether this block may run inline on the caller's (event loop) thread: nothing is
        queued or on its way besides it, and its pass is expected to take at most
        ``INLINE_MAX_S`` (a pass already measured here; a slow model never blocks the loop)."""
        cost = self._row_s
        # Batching off (max_batch_size 1: benchmarks, the overload tests) keeps every pass on
        # the worker, so a request's blocks queue there as the queue's bounds expect.
        return (cost is not None and cost * rows <= INLINE_MAX_S and not self._closed
                and self.max_batch_size > 1
                and self._in_flight is not None and self._in_flight() <= images
                and self._queue.empty())

    def _enqueue(self, block: _Block) -> None:
        with self._close_lock:
            if self._closed:
                raise ModelUnavailable(f"{self.name} is shutting down; retry the request")
            self._queue.put(block._replace(submitted_ns=time.perf_counter_ns()))

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
            if carried is not None:  # claimed already
                item, carried = carried, None
            else:
                item = self._queue.get()
                if item is _STOP:
                    break
                if not self._wanted(item):
                    continue
            batch, rows = [item], len(item.rows)
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
                if not self._wanted(item):
                    continue
                if rows + len(item.rows) > self.max_batch_size:
                    carried = item  # first in the next pass
                    break
                batch.append(item)
                rows += len(item.rows)
            self._run_batch(batch)
        log.debug("batcher %s stopped", self.name)

    def _wanted(self, block: _Block) -> bool:
        """Claim the block for a pass, unless its caller gave up or its deadline passed: then
        drop it uncomputed (the caller gets DeadlineExceeded) and count it."""
        if not _claim(block.waiter):
            self.count_dropped("cancelled")
            return False
        if expired(block.deadline):
            self.count_dropped("deadline")
            waited_ms = (time.perf_counter_ns() - block.submitted_ns) / 1e6
            _deliver([(block.waiter, DeadlineExceeded(
                f"the request's deadline passed after {waited_ms:.0f} ms in {self.name}'s "
                "queue; it was not computed (send a longer timeout, or retry when the server "
                "is less busy)"))])
            return False
        return True

    def count_dropped(self, reason: str) -> None:
        """Count one request dropped uncomputed (also for the core's drops before queueing)."""
        if self._stats is not None:
            self._stats.record_dropped(self._stats_key, reason)

    def _company_expected(self, gathered: int) -> bool:
        """More admitted requests than blocks in hand: someone is decoding and will submit."""
        return self._in_flight is None or self._in_flight() > gathered

    def _run_batch(self, batch: list[_Block]) -> None:
        # Claimed in _wanted; an asyncio caller may still have given up since (_settle skips it).
        live = batch
        images = sum(item.images for item in live)
        rows = sum(len(item.rows) for item in live)
        try:
            # All of the pass, joining the blocks and the stats included: whatever raises fails
            # these futures only, and the worker goes on to the next pass.
            joining = time.perf_counter_ns()
            x = live[0].rows if len(live) == 1 else np.concatenate([item.rows for item in live])
            start = time.perf_counter_ns()
            out = self._run(x)
            infer_ns = time.perf_counter_ns() - start
            seconds = infer_ns / 1e9
            self._row_s = seconds / len(x)
            if self._stats is not None:
                self._stats.record_batch(self._stats_key, images, len(x), seconds)
        except Exception as e:
            log.exception("forward pass of %s failed (%d images, %d rows)",
                          self.name, images, rows)
            error = ModelUnavailable(f"the forward pass of {self.name} failed: {e}")
            _deliver([(item.waiter, error) for item in live])
            return
        log.debug("%s: batch of %d images in %d blocks (%d rows) in %.1f ms",
                  self.name, images, len(live), len(x), seconds * 1000)
        handing_out = time.perf_counter_ns()
        offset, answers = 0, []
        for block, waiter, _, times, submitted, _ in live:
            if times is not None:
                times.observe_pass(joining - submitted, infer_ns)
            answers.append((waiter, out[offset:offset + len(block)]))
            offset += len(block)
        _deliver(answers)
        if self._stats is not None:
            self._stats.record_execution(
                self._stats_key, self._stats_version, images, input_ns=start - joining,
                infer_ns=infer_ns, output_ns=time.perf_counter_ns() - handing_out)


def _claim(waiter: Waiter) -> bool:
    """False when the caller gave up; a claimed thread-safe future can no longer be cancelled
    (an asyncio one still can: ``_settle`` skips it then)."""
    if isinstance(waiter, Future):
        return waiter.set_running_or_notify_cancel()
    return not waiter.cancelled()


def _deliver(outcomes: list[tuple[Waiter, np.ndarray | BaseException]]) -> None:
    """Resolve each waiter: thread-safe futures here, asyncio ones on their own loop, one
    ``call_soon_threadsafe`` per loop for the whole pass."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for waiter, outcome in outcomes:
        if isinstance(waiter, Future):
            if isinstance(outcome, BaseException):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)
        else:
            by_loop.setdefault(waiter.get_loop(), []).append((waiter, outcome))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:  # that loop is closed: nobody is waiting there any more
            log.debug("batcher: an event loop closed before its answers arrived")


def _settle(outcomes: list[tuple[asyncio.Future, np.ndarray | BaseException]]) -> None:
    """On the waiters' loop: set what the pass produced, unless the caller gave up meanwhile."""
    for waiter, outcome in outcomes:
        if waiter.done():
            continue
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)
