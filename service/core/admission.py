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

Arrivals (``arrive``): a front end that still has to read a request's body (HTTP) asks first,
from its headers, whether the core would refuse it anyway, and answers the refusal at once,
before reading or parsing anything (parsing a body costs an HTTP server more than many
forward passes). The model is often named only in the body, so a request is refused when every
model it could name would refuse it. Requests still arriving count as queued for every model
until the core admits them, so that a storm is refused at the door instead of piling up in the
front end's parsers; each counts for ``ARRIVING_FOR_S`` at most, so that clients that stall
their bodies (slowloris) cannot hold the places of those that send them. The deadline check
then uses the larger of the model's recent core latency and its recent arrival-to-answer time.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

from service.core import deadlines
from service.core.errors import CoreError, DeadlineExceeded, Overloaded
from service.core.stats import CoreStats

LATENCY_WEIGHT = 0.2  # of the newest answer in the moving average
ARRIVING_FOR_S = 1.0  # longest time a request whose body is on its way counts as queued


@dataclass(eq=False)
class Arrival:
    """A request taken in by a front end, its body still on its way (``Admission.arrive``)."""

    started: float
    model: str | None = None  # the model the core admitted it for, once it did
    answered: bool = False


_ARRIVAL: ContextVar[Arrival | None] = ContextVar("tta_serve_arrival", default=None)


def _moving(average: dict[str, float], model: str, took: float) -> None:
    old = average.get(model)
    average[model] = took if old is None else (1 - LATENCY_WEIGHT) * old + LATENCY_WEIGHT * took


class Admission:
    """Counts admitted requests in all and per model; refuses beyond the bounds."""

    def __init__(self, max_pending: int, max_queue: int = 0) -> None:
        self.max_pending = max_pending
        self.max_queue = max_queue
        self.pending = 0  # admitted requests, every model
        self.images = 0  # images being decoded or batched
        self._queued: Counter[str] = Counter()  # admitted requests per model
        self._latency_s: dict[str, float] = {}  # moving average of answered requests' time
        self._whole_s: dict[str, float] = {}  # the same from arrival (arrive) to answer
        self._arriving: dict[Arrival, None] = {}  # not yet admitted, oldest first
        self._lock = threading.Lock()

    def queued(self, model: str) -> int:
        """Requests admitted for ``model`` and not yet answered."""
        return self._queued[model]

    def latency_s(self, model: str) -> float:
        """Recent time from admission to answer of ``model``'s requests (0 before any)."""
        return self._latency_s.get(model, 0.0)

    def arriving(self) -> int:
        """Requests on their way (``arrive``) that count as queued now."""
        with self._lock:
            self._prune(time.monotonic())
            return len(self._arriving)

    def _prune(self, now: float) -> None:
        while self._arriving:
            oldest = next(iter(self._arriving))
            if oldest.started + ARRIVING_FOR_S > now:
                return
            del self._arriving[oldest]

    def _refusal(self, model: str, deadline: float | None, now: float, ahead: int = 0,
                 expected: float = 0.0) -> CoreError | None:
        """What a request for ``model`` gets now, with ``ahead`` more requests counted as
        queued and answers expected to take ``expected`` seconds; None: admitted."""
        if self.pending + ahead >= self.max_pending:
            return Overloaded(
                f"the server is overloaded: {self.pending + ahead} requests are in flight "
                f"(limit {self.max_pending}, --max-pending); retry with backoff")
        queued = self._queued[model] + ahead
        if self.max_queue and queued >= self.max_queue:
            return Overloaded(
                f"model {model!r} is overloaded: {queued} requests are queued for it (limit "
                f"{self.max_queue}, --max-queue); retry with backoff")
        if deadline is not None and queued and now + expected > deadline:
            return DeadlineExceeded(
                f"the request has {max(0.0, deadline - now) * 1000:.0f} ms left and "
                f"{model!r}'s recent answers took {expected * 1000:.0f} ms; it was not "
                "computed (send a longer timeout, or retry when the server is less busy)")
        return None

    @contextlib.contextmanager
    def arrive(self, models: Sequence[str], deadline: float | None = None) -> Iterator[None]:
        """One request on its way for one of ``models`` while the block runs (until ``admit``
        takes it); the refusal every one of them would give it, raised now, when all would.
        Nested in another arrival (the same request), nothing more is counted."""
        if _ARRIVAL.get() is not None:
            yield
            return
        now = time.monotonic()
        with self._lock:
            self._prune(now)
            ahead = len(self._arriving)
            refusals = [self._refusal(m, deadline, now, ahead, max(
                self._latency_s.get(m, 0.0), self._whole_s.get(m, 0.0))) for m in models]
            first = refusals[0] if refusals else None
            if first is not None and all(refusals):
                raise first
            arrival = Arrival(now)
            self._arriving[arrival] = None
        token = _ARRIVAL.set(arrival)
        try:
            yield
        finally:
            _ARRIVAL.reset(token)
            with self._lock:
                self._arriving.pop(arrival, None)
                if arrival.answered and arrival.model is not None:
                    _moving(self._whole_s, arrival.model, time.monotonic() - now)

    @contextlib.contextmanager
    def admit(self, model: str, deadline: float | None = None) -> Iterator[None]:
        """One request for ``model`` while the block runs; Overloaded when a bound is reached,
        DeadlineExceeded when it could only be answered after ``deadline``."""
        now = time.monotonic()
        arrival = _ARRIVAL.get()
        with self._lock:
            if arrival is not None and arrival.model is None:  # it has arrived: now queued
                self._arriving.pop(arrival, None)
                arrival.model = model
            else:
                arrival = None
            refusal = self._refusal(model, deadline, now,
                                    expected=self._latency_s.get(model, 0.0))
            if refusal is not None:
                raise refusal
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
                    _moving(self._latency_s, model, time.monotonic() - now)
                    if arrival is not None:
                        arrival.answered = True

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


@contextlib.contextmanager
def arriving(admission: Admission, stats: CoreStats, models: Sequence[str],
             deadline: float | None) -> Iterator[None]:
    """``admission.arrive``, its refusal counted as the core counts its own (against the first
    of ``models``: the one named, or the default model)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(admission.arrive(models, deadline))
        except CoreError as e:
            stats.record_request(models[0], e.kind)
            if isinstance(e, DeadlineExceeded):
                stats.record_dropped(models[0], "deadline")
            raise
        yield
