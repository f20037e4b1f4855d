"""The run's settings (device, photos, KServe, durations) and how long each window lasts."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from bench.common import (
    BenchModel,
)

PY = sys.executable


@dataclass
class Settings:
    """What the command line sets for the whole run (``__main__`` sets it once)."""

    device: str = "cpu"  # --device: where our servers and raw ORT run
    photos: str | None = None  # --photos DIR, passed on to the load client
    kserve: bool = True  # --no-kserve clears it
    warmup_s: float | None = None  # --warmup-s / --measure-s override durations()
    measure_s: float | None = None


SETTINGS = Settings()


@dataclass(frozen=True)
class Durations:
    warmup_s: float
    measure_s: float


def durations(model: BenchModel, quick: bool) -> Durations:
    """Long enough for a steady state: the 224 px model's batches take about a second each.

    Throughput is completions per window, so when answers come back in bursts (a pass of 32
    xresnet50 images every ~1.5-2 s) its resolution is one burst per window: 32 / 6 s = 5.3
    images/s with --quick. Use --measure-s 30 or more to compare such figures within 5%."""
    base = _default_durations(model, quick)
    return Durations(base.warmup_s if SETTINGS.warmup_s is None else SETTINGS.warmup_s,
                     base.measure_s if SETTINGS.measure_s is None else SETTINGS.measure_s)


def _default_durations(model: BenchModel, quick: bool) -> Durations:
    if model.key != "xresnet50":
        return Durations(1.0, 2.5 if quick else 5.0)
    return Durations(3.0, 6.0 if quick else 12.0)
