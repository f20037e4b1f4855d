"""Memory under load: the RSS slope of a soak, and the peak RSS while one request is served."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

import numpy as np
import psutil

from bench.reliability.clients import ANSWERED, GrpcPredictor
from bench.reliability.inputs import digit_pngs
from bench.serve_process import ServeProcess


@dataclass
class SoakResult:
    protocol: str
    route: str
    requests: int
    slope_mb_per_1000: float  # least squares over the samples after the warm-up
    start_mb: float
    end_mb: float
    requests_per_s: float

    def line(self) -> str:
        return (f"{self.protocol:>4} {self.route:<9}: {self.requests} requests "
                f"({self.requests_per_s:.0f}/s), RSS {self.start_mb:.1f} -> {self.end_mb:.1f} MB, "
                f"slope {self.slope_mb_per_1000:+.3f} MB per 1,000")


def soak(server: ServeProcess, protocol: str, route: str, requests: int, *, warmup: int = 500,
         samples: int = 20, images: list[bytes] | None = None) -> SoakResult:
    """Send ``warmup`` then ``requests`` requests one after another over one connection and fit
    the serving process's RSS (sampled ``samples`` times) against the request count."""
    images = images or digit_pngs(16)
    if protocol == "grpc":
        predictor = GrpcPredictor(server.grpc_target)

        def one(i: int) -> None:
            outcome, detail = predictor(images[i % len(images)])
            assert outcome == ANSWERED, detail
    else:
        import httpx

        client = httpx.Client(base_url=server.http_url, timeout=60)

        def one(i: int) -> None:
            if route == "/livez":
                r = client.get("/livez")
            else:
                r = client.post("/predict", files={"image": ("d.png", images[i % len(images)],
                                                             "image/png")})
            assert r.status_code == 200, r.text
    try:
        for i in range(warmup):
            one(i)
        xs, ys = [0], [server.serving_rss_mb(protocol)]
        step = max(1, requests // samples)
        t0 = time.monotonic()
        for i in range(1, requests + 1):
            one(i)
            if i % step == 0:
                xs.append(i)
                ys.append(server.serving_rss_mb(protocol))
        elapsed = time.monotonic() - t0
    finally:
        (predictor if protocol == "grpc" else client).close()
    slope = float(np.polyfit(np.array(xs, float), np.array(ys, float), 1)[0]) * 1000
    return SoakResult(protocol, route, requests, slope, ys[0], ys[-1], requests / elapsed)


class PeakRss:
    """Samples a process's RSS every 10 ms while the block runs; ``growth_mb`` above the start."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.start_mb = self.peak_mb = process.memory_info().rss / 2**20
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            with contextlib.suppress(psutil.Error):
                self.peak_mb = max(self.peak_mb, self.process.memory_info().rss / 2**20)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.05)
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return self.peak_mb - self.start_mb
