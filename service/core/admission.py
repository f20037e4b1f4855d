"""What the core lets in: its back-pressure, counted in one place.

Two bounds, both answered at once with ``Overloaded`` (503 / UNAVAILABLE + Retry-After):

- ``max_pending`` (``--max-pending``): requests in flight in the whole process, every model
  together. It bounds memory: each admitted request holds its image bytes, decoded rows and
  answer.
- ``max_queue`` (``--max-queue``, 0 = none): requests in flight for *one model* (decoding,
  waiting in its batcher's queue, or in its forward pass), as Triton's per-model
  ``max_queue_size``. It bounds waiting time: a model computing C requests a second answers a
  queue of Q within about Q / C seconds, so a queue short enough to be served inside clients'
  deadlines keeps a server offered more than it can do answering in time what it admits, and
  refusing the rest before spending anything on them. A busy model fills its own queue, not
  the process's, so the other models keep being served.

A request with a deadline (``service.core.deadlines``) is also refused at once, with
DeadlineExceeded, when its model already has requests queued and recent answers of that model
took longer than the time the request has left: it could only be answered late, and computing
it would make the requests behind it late too. ``latency_s`` is that estimate, a moving average
of the time admitted requests of the model took to be answered (updated by each answer, so it
falls again as soon as the queue drains; with nothing queued a request is always admitted).

``images`` counts the images being decoded or batched: the batchers' "company is on its way"
signal (``service.core.batcher``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator

from service.core import deadlines
from service.core.errors import DeadlineExceeded, Overloaded
from service.core.stats import CoreStats

LATENCY_WEIGHT = 0.2  # of the newest answer in the moving average


class Admission:
    """Counts admitted requests in all and per model; refuses beyond the bounds."""

    def __init__(self, max_pending: int, max_queue: int = 0) -> None:
        self.max_pending = max_pending
        self.max_queue = max_queue
        self.pending = 0  # admitted requests, every model
        self.images = 0  # images being decoded or batched
        self._queued: Counter[str] = Counter()  # admitted requests per model
        self._latency_s: dict[str, float] = {}  # moving average of answered requests' time
        self._lock = threading.Lock()

    def queued(self, model: str) -> int:
        """Requests admitted for ``model`` and not yet answered."""
        return self._queued[model]

    def latency_s(self, model: str) -> float:
        """Recent time from admission to answer of ``model``'s requests (0 before any)."""
        return self._latency_s.get(model, 0.0)

    @contextlib.contextmanager
    def admit(self, model: str, deadline: float | None = None) -> Iterator[None]:
        """One request for ``model`` while the block runs; Overloaded when a bound is reached,
        DeadlineExceeded when it could only be answered after ``deadline``."""
        now = time.monotonic()
        with self._lock:
            if self.pending >= self.max_pending:
                raise Overloaded(
                    f"the server is overloaded: {self.pending} requests are in flight (limit "
                    f"{self.max_pending}, --max-pending); retry with backoff")
            if self.max_queue and self._queued[model] >= self.max_queue:
                raise Overloaded(
                    f"model {model!r} is overloaded: {self._queued[model]} requests are queued "
                    f"for it (limit {self.max_queue}, --max-queue); retry with backoff")
            expected = self._latency_s.get(model, 0.0)
            if deadline is not None and self._queued[model] and now + expected > deadline:
                raise DeadlineExceeded(
                    f"the request has {max(0.0, deadline - now) * 1000:.0f} ms left and "
                    f"{model!r}'s recent answers took {expected * 1000:.0f} ms; it was not "
                    "computed (send a longer timeout, or retry when the server is less busy)")
            self.pending += 1
            self._queued[model] += 1
        answered = False
        try:
            yield
            answered = True
        finally:
            with self._lock:
                self.pending -= 1
                self._queued[model] -= 1
                if not self._queued[model]:
                    del self._queued[model]
                if answered:
                    took = time.monotonic() - now
                    self._latency_s[model] = took if model not in self._latency_s else (
                        (1 - LATENCY_WEIGHT) * self._latency_s[model] + LATENCY_WEIGHT * took)

    @contextlib.contextmanager
    def on_the_way(self, images: int) -> Iterator[None]:
        """``images`` images being decoded or batched while the block runs."""
        with self._lock:
            self.images += images
        try:
            yield
        finally:
            with self._lock:
                self.images -= images


@contextlib.contextmanager
def admitted(admission: Admission, stats: CoreStats, model: str) -> Iterator[None]:
    """The core's admission of one request for ``model``: Overloaded at a bound, DeadlineExceeded
    when its deadline (``service.core.deadlines``) has passed or would pass first (counted as
    dropped); a request cancelled meanwhile (its caller went away) is counted too."""
    deadline = deadlines.current()
    with contextlib.ExitStack() as stack:
        try:
            deadlines.check(deadline, "before the request was admitted")
            stack.enter_context(admission.admit(model, deadline))
        except DeadlineExceeded:
            stats.record_dropped(model, "deadline")
            raise
        try:
            yield
        except asyncio.CancelledError:
            stats.record_request(model, "cancelled")
            raise
