"""Counters the core keeps about itself: batch sizes formed, forward-pass time, request outcomes.

Plain thread-safe counters (the batchers run in their own threads), readable with
``snapshot()``; ``prometheus_collector()`` exposes the same numbers to prometheus_client without
touching its global registry, so several cores (tests) can live in one process. A front end
registers it where it serves /metrics::

    registry.register(core.stats.prometheus_collector())
"""

from __future__ import annotations

import bisect
import copy
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

# Images per forward pass (each image with all its TTA views).
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
FORWARD_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last = above the largest bound
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((repr(float(bound)), running))
        out.append(("+Inf", self.n))
        return out


@dataclass
class Duration:
    """How many times something happened and how long it took in all (Triton's
    StatisticDuration)."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += max(0, int(ns))


@dataclass
class BatchDurations:
    """Forward passes of one batch size: joining the rows, the pass, handing out the rows."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class RequestTimes:
    """One request's stages in ns, filled in along its path (the core and the batcher). A
    request of several images (or blocks) keeps each stage's longest: they run side by side."""

    queue: int = 0  # submitted to the batcher -> its forward pass starts
    compute_input: int = 0  # decoding + evaluation transform (or the pixel checks)
    compute_infer: int = 0  # the forward pass it ran in
    compute_output: int = 0  # model output -> the request's predictions

    def observe_pass(self, queue_ns: int, infer_ns: int) -> None:
        """Called by the batcher's one worker thread for each block of the request."""
        self.queue = max(self.queue, queue_ns)
        self.compute_infer = max(self.compute_infer, infer_ns)

    def merge(self, other: RequestTimes) -> None:
        self.queue = max(self.queue, other.queue)
        self.compute_input = max(self.compute_input, other.compute_input)
        self.compute_infer = max(self.compute_infer, other.compute_infer)
        self.compute_output = max(self.compute_output, other.compute_output)


@dataclass
class VersionStats:
    """Triton's ModelStatistics for one model version, from the requests this core served.

    success/fail count requests (a request of N images is one) with their whole duration;
    queue and compute_* count successful requests; inference_count counts the images of
    successful requests; execution_count counts forward passes, whose sizes (images) are in
    ``batches``.
    """

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchDurations] = field(default_factory=dict)


class CoreStats:
    """What the core has done since it started; safe to update from any thread."""

    def __init__(self, pending: Callable[[], int] = lambda: 0) -> None:
        self._lock = threading.Lock()
        self._pending = pending
        self._batch_sizes: dict[str, Counter[int]] = defaultdict(Counter)  # exact sizes
        self._batch_hist: dict[str, _Histogram] = {}
        self._forward_hist: dict[str, _Histogram] = {}
        self._rows: Counter[str] = Counter()
        self._requests: Counter[tuple[str, str]] = Counter()
        self._dropped: Counter[tuple[str, str]] = Counter()
        self._versions: dict[tuple[str, int], VersionStats] = {}
        self._answers: Counter[tuple[str, str, str]] = Counter()  # (model, mode, path)
        self._unsure: Counter[str] = Counter()

    def pending(self) -> int:
        """Requests admitted by the core and not yet answered."""
        return self._pending()

    def record_batch(self, model: str, images: int, rows: int, seconds: float) -> None:
        """One forward pass of ``images`` requests = ``rows`` model-input rows."""
        with self._lock:
            self._batch_sizes[model][images] += 1
            self._batch_hist.setdefault(model, _Histogram(BATCH_SIZE_BUCKETS)).observe(images)
            self._forward_hist.setdefault(model, _Histogram(FORWARD_SECONDS_BUCKETS)).observe(
                seconds)
            self._rows[model] += rows

    def record_request(self, model: str, outcome: str) -> None:
        """outcome: "ok" or a CoreError kind."""
        with self._lock:
            self._requests[(model, outcome)] += 1

    def record_dropped(self, model: str, reason: str, requests: int = 1) -> None:
        """Queued work given up before it was computed: reason "deadline" (its deadline passed
        before its turn) or "cancelled" (its caller went away: a cancelled call, a closed
        connection). Counted where the work was dropped (the batcher, or the core before
        decoding), so a request is counted once."""
        with self._lock:
            self._dropped[(model, reason)] += requests

    def dropped(self, model: str | None = None) -> Counter[str]:
        """Requests dropped before computing, by reason, for one model or all."""
        with self._lock:
            out: Counter[str] = Counter()
            for (name, reason), n in self._dropped.items():
                if model is None or name == model:
                    out[reason] += n
            return out

    def record_answers(self, model: str, answers: Sequence[Any]) -> None:
        """Answers given (``service.core.prediction.Prediction``s): by the TTA mode asked, the
        path taken ("plain" or "tta": with mode "auto", both happen) and whether unsure."""
        with self._lock:
            for answer in answers:
                self._answers[(model, answer.tta_mode, answer.path)] += 1
                self._unsure[model] += bool(answer.unsure)

    def answers(self, model: str | None = None) -> Counter[tuple[str, str]]:
        """How many answers took each (mode, path), for one model or all."""
        with self._lock:
            out: Counter[tuple[str, str]] = Counter()
            for (name, mode, path), n in self._answers.items():
                if model is None or name == model:
                    out[(mode, path)] += n
            return out

    def record_execution(self, model: str, version: int, images: int, *, input_ns: int,
                         infer_ns: int, output_ns: int) -> None:
        """One forward pass of ``images`` images on that version (Triton's batch_stats)."""
        with self._lock:
            stats = self._versions.setdefault((model, version), VersionStats())
            stats.execution_count += 1
            batch = stats.batches.setdefault(images, BatchDurations())
            batch.compute_input.add(input_ns)
            batch.compute_infer.add(infer_ns)
            batch.compute_output.add(output_ns)

    def record_inference(self, model: str, version: int, *, ok: bool, images: int,
                         duration_ns: int, times: RequestTimes | None = None) -> None:
        """One request's outcome on that version: ``images`` it asked about, its whole duration
        and (successful ones) its stages."""
        with self._lock:
            stats = self._versions.setdefault((model, version), VersionStats())
            if not ok:
                stats.fail.add(duration_ns)
                return
            stats.success.add(duration_ns)
            stats.inference_count += images
            stats.last_inference_ms = int(time.time() * 1000)
            times = times or RequestTimes()
            stats.queue.add(times.queue)
            stats.compute_input.add(times.compute_input)
            stats.compute_infer.add(times.compute_infer)
            stats.compute_output.add(times.compute_output)

    def version_stats(self) -> dict[tuple[str, int], VersionStats]:
        """A copy of every (model, version)'s statistics recorded so far."""
        with self._lock:
            return copy.deepcopy(self._versions)

    def batch_sizes(self, model: str | None = None) -> Counter[int]:
        """How many forward passes had each batch size (images), for one model or all."""
        with self._lock:
            out: Counter[int] = Counter()
            for name, sizes in self._batch_sizes.items():
                if model is None or name == model:
                    out.update(sizes)
            return out

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready numbers: batches per size, rows, forward time, requests by outcome."""
        with self._lock:
            return {
                "pending": self._pending(),
                "models": {
                    name: {
                        "batch_sizes": dict(sorted(sizes.items())),
                        "batches": sum(sizes.values()),
                        "rows": self._rows[name],
                        "forward_seconds": self._forward_hist[name].total,
                    }
                    for name, sizes in self._batch_sizes.items()
                },
                "requests": {f"{m}/{o}": n for (m, o), n in sorted(self._requests.items())},
                "dropped": {f"{m}/{r}": n for (m, r), n in sorted(self._dropped.items())},
                "answers": {f"{m}/{mode}/{path}": n
                            for (m, mode, path), n in sorted(self._answers.items())},
                "unsure": dict(sorted(self._unsure.items())),
            }

    def prometheus_collector(self) -> Any:
        """A prometheus_client collector over these counters (register it on a registry)."""
        return _PrometheusCollector(self)


class _PrometheusCollector:
    def __init__(self, stats: CoreStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        s = self.stats
        batch = HistogramMetricFamily("tta_serve_batch_size",
                                      "Images per forward pass (dynamic batching)",
                                      labels=["model"])
        forward = HistogramMetricFamily("tta_serve_forward_seconds",
                                        "Forward-pass (session.run) time", labels=["model"])
        rows = CounterMetricFamily("tta_serve_model_input_rows",
                                   "Model-input rows run (images x TTA views)", labels=["model"])
        requests = CounterMetricFamily("tta_serve_requests", "Requests by outcome",
                                       labels=["model", "outcome"])
        dropped = CounterMetricFamily(
            "tta_serve_dropped_requests",
            "Queued requests dropped before they were computed (deadline passed, caller gone)",
            labels=["model", "reason"])
        answers = CounterMetricFamily(
            "tta_serve_answers", "Answers by TTA mode asked and path taken (tta=auto: plain when "
            "the plain view was sure enough, tta when the other views ran)",
            labels=["model", "mode", "path"])
        unsure = CounterMetricFamily("tta_serve_unsure_answers",
                                     "Answers below min_confidence (unsure: true)",
                                     labels=["model"])
        with s._lock:
            for (name, reason), n in s._dropped.items():
                dropped.add_metric([name, reason], n)
            for name, hist in s._batch_hist.items():
                batch.add_metric([name], hist.cumulative(), sum_value=hist.total)
                fwd = s._forward_hist[name]
                forward.add_metric([name], fwd.cumulative(), sum_value=fwd.total)
                rows.add_metric([name], s._rows[name])
            for (name, outcome), n in s._requests.items():
                requests.add_metric([name, outcome], n)
            for (name, mode, path), n in s._answers.items():
                answers.add_metric([name, mode, path], n)
            for name, n in s._unsure.items():
                unsure.add_metric([name], n)
        yield batch
        yield forward
        yield rows
        yield requests
        yield dropped
        yield answers
        yield unsure
        yield GaugeMetricFamily("tta_serve_pending_requests",
                                "Requests admitted and not yet answered", value=s._pending())
