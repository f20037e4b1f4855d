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

``images`` counts the images being decoded or batched: the batchers' "company is on its way"
signal (``service.core.batcher``).
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator

from service.core.errors import Overloaded


class Admission:
    """Counts admitted requests in all and per model; refuses beyond the bounds."""

    def __init__(self, max_pending: int, max_queue: int = 0) -> None:
        self.max_pending = max_pending
        self.max_queue = max_queue
        self.pending = 0  # admitted requests, every model
        self.images = 0  # images being decoded or batched
        self._queued: Counter[str] = Counter()  # admitted requests per model
        self._lock = threading.Lock()

    def queued(self, model: str) -> int:
        """Requests admitted for ``model`` and not yet answered."""
        return self._queued[model]

    @contextlib.contextmanager
    def admit(self, model: str) -> Iterator[None]:
        """One request for ``model`` while the block runs; Overloaded when a bound is reached."""
        with self._lock:
            if self.pending >= self.max_pending:
                raise Overloaded(
                    f"the server is overloaded: {self.pending} requests are in flight (limit "
                    f"{self.max_pending}, --max-pending); retry with backoff")
            if self.max_queue and self._queued[model] >= self.max_queue:
                raise Overloaded(
                    f"model {model!r} is overloaded: {self._queued[model]} requests are queued "
                    f"for it (limit {self.max_queue}, --max-queue); retry with backoff")
            self.pending += 1
            self._queued[model] += 1
        try:
            yield
        finally:
            with self._lock:
                self.pending -= 1
                self._queued[model] -= 1
                if not self._queued[model]:
                    del self._queued[model]

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
