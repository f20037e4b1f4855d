"""The interleaved key comparison: the goals measured round after round, servers kept running."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    BenchModel,
    images_for,
    timed_loop,
)
from bench.serving.runtime import bench_raw_ort
from bench.serving.servers import RunningServer, run_loadgen, server_specs
from bench.serving.settings import SETTINGS, Durations, durations


def decode_ms(model: BenchModel, images: list[bytes]) -> float:
    """p50 of one image's decode + evaluation view + model input on one thread: what a server
    adds to raw ORT for an encoded image (service.imaging, at the model's decode side)."""
    from service.imaging import decode_image, decode_side, eval_view, to_model_input
    from service.model_repository import ModelRepository

    card = ModelRepository(model.models_dir).resolve(model.name, model.version).card
    side = decode_side(card.eval_spec, card.tta)
    i = iter(range(10**9))

    def one() -> None:
        data = images[next(i) % len(images)]
        to_model_input(eval_view(decode_image(data, min_side=side), card.eval_spec))

    times = timed_loop(one, min_seconds=0.5, min_iters=max(5, min(len(images), 50)), warmup=2)
    return float(np.median(times)) * 1000.0


# Which servers the interleaved comparison starts, per model: everything on the real model;
# only our gRPC server (against raw ORT) on the 224 px one.
# The core's decode pool size on this machine (CoreConfig's default): with decode_p50_ms, the
# most images/s decoding alone allows, beside raw ORT's best (what a GPU run needs to know).
DECODE_THREADS = max(2, min(os.cpu_count() or 1, 8))
KEY_SERVERS = ("ours gRPC (batching on)", "ours HTTP (batching on)", "plain grpcio peer",
               "plain BentoML peer", "KServe peer")


def _key_round(model: BenchModel, running: list[RunningServer], d: Durations,
               big: bool, r: int) -> dict[str, Any]:
    """One round: raw ORT (+ decode), then every wire of every server at c=32 and c=1."""
    raw = bench_raw_ort(model, quick=True)
    best = max(raw, key=lambda x: x["throughput"])
    row: dict[str, Any] = {
        "round": r + 1, "load_avg_1": round(os.getloadavg()[0], 2),
        "raw_best": best["throughput"], "raw_best_is": f"{best['runtime']}, batch "
        f"{best['batch']}", "raw_b1_p50_ms": min(x["p50_ms"] for x in raw if x["batch"] == 1),
        "raw_bk_p50_ms": min(x["p50_ms"] for x in raw if x["batch"] == model.tta_views),
        "raw_cpu_ms": min(x["cpu_ms_per_image"] for x in raw if x["runtime"] == "core options")}
    row["decode_p50_ms"] = decode_ms(model, images_for(model.key, photos=_photos()))
    if not big:
        row["decode_12mp_p50_ms"] = decode_ms(model, images_for("phone"))
    for server in running:
        for wire in server.spec.wires:
            for concurrency in ((32,) if big else (32, 1)):
                cpu0 = server.cpu_seconds()
                result = run_loadgen(wire, model, False, concurrency, d)
                served = max(1.0, result["throughput"] * (d.warmup_s + d.measure_s))
                row[f"{wire.label} c={concurrency} cpu"] = (
                    (server.cpu_seconds() - cpu0) * 1000.0 / served)
                row[f"{wire.label} c={concurrency}"] = result["throughput"]
                row[f"{wire.label} c={concurrency} p50"] = result["p50_ms"]
                row[f"{wire.label} c={concurrency} p99"] = result["p99_ms"]
                row[f"{wire.label} c={concurrency} errors"] = result["errors"]
        if server.spec.name == "ours gRPC (batching on)" and not big:
            row["ours gRPC TTA c=1 p50"] = run_loadgen(server.spec, model, True, 1, d)["p50_ms"]
            row["ours gRPC 12 MP c=1 p50"] = run_loadgen(
                server.spec, model, False, 1, Durations(2.0, d.measure_s), "phone")["p50_ms"]
    print(f"  round {r + 1} (load {row['load_avg_1']}): " + ", ".join(
        f"{k} {v:.0f}" for k, v in row.items()
        if isinstance(v, float) and k.endswith("c=32")), file=sys.stderr, flush=True)
    return row


def _photos() -> Path | None:
    return Path(SETTINGS.photos) if SETTINGS.photos else None


def bench_key_comparison(model: BenchModel, rounds: int, quick: bool,
                         only: set[str] | None = None) -> dict[str, Any]:
    """The goals' comparisons, interleaved: every server runs at once (idle unless loaded) and
    each round measures raw ORT, then each server's wires at concurrency 32 and 1, back to
    back. On a CPU shared with other work, round-by-round ratios are far steadier than figures
    taken minutes apart; the medians over rounds are reported."""
    d = durations(model, quick)
    big = model.key == "xresnet50"
    image = images_for(model.key, 1)[0]
    wanted = KEY_SERVERS[:1] if big else KEY_SERVERS
    specs = [s for s in server_specs(model, quick) if s.name in wanted
             and (not only or any(o in s.name for o in only))]
    running: list[RunningServer] = []
    per_round: list[dict[str, Any]] = []
    try:
        for spec in specs:
            print(f"  starting {spec.name} ...", file=sys.stderr, flush=True)
            try:
                running.append(RunningServer(spec, image))
            except RuntimeError as e:  # e.g. its free port was taken meanwhile: new ports
                print(f"  {e}; retrying once", file=sys.stderr, flush=True)
                again = next(s for s in server_specs(model, quick) if s.name == spec.name)
                running.append(RunningServer(again, image))
        rss = {server.spec.name: server.rss_bytes() / 2**20 for server in running}
        for r in range(rounds):
            per_round.append(_key_round(model, running, d, big, r))
    finally:
        for server in running:
            server.stop()
    return {"rounds": per_round, "durations": d.__dict__, "idle_rss_mb": rss,
            "median": key_summary(model, per_round)}


def key_summary(model: BenchModel, per_round: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over rounds of each figure, and of each round's ratio (never a ratio of
    medians): the goals of issue 18 first."""
    def med(key: str) -> float | None:
        values = [r[key] for r in per_round if key in r]
        return float(np.median(values)) if values else None

    def ratio(a: str, b: str) -> float | None:
        values = [r[a] / r[b] for r in per_round if a in r and b in r and r[b]]
        return float(np.median(values)) if values else None

    def gap(a: str, *bs: str) -> float | None:
        values = [r[a] - sum(r[b] for b in bs) for r in per_round
                  if a in r and all(b in r for b in bs)]
        return float(np.median(values)) if values else None

    g, h = "ours gRPC (batching on)", "ours HTTP (batching on)"
    k = model.tta_views
    summary = {
        "load average (1 min) at the rounds": med("load_avg_1"),
        "raw ORT best images/s": med("raw_best"),
        "raw ORT batch-1 p50 ms": med("raw_b1_p50_ms"),
        "raw ORT CPU ms per image (core options, best batch)": med("raw_cpu_ms"),
        "decode + preprocess p50 ms (1 thread)": med("decode_p50_ms"),
        "decode-bound images/s (decode threads / decode p50)": (
            med("decode_p50_ms") and DECODE_THREADS * 1000.0 / med("decode_p50_ms")),
        "GOAL gRPC c=32 / plain grpcio c=32 (>= 2)": ratio(f"{g} c=32", "plain grpcio peer c=32"),
        "GOAL gRPC c=32 / KServe gRPC c=32 (>= 2)": ratio(f"{g} c=32", "KServe peer c=32"),
        "GOAL HTTP c=32 / plain BentoML c=32 (>= 1.5)": ratio(f"{h} c=32",
                                                             "plain BentoML peer c=32"),
        "GOAL gRPC c=1 p50 - (raw ORT batch-1 + decode) ms (<= 1)": gap(
            f"{g} c=1 p50", "raw_b1_p50_ms", "decode_p50_ms"),
        "GOAL 12 MP gRPC c=1 p50 ms (<= 30)": med("ours gRPC 12 MP c=1 p50"),
        "12 MP decode + preprocess p50 ms (1 thread)": med("decode_12mp_p50_ms"),
        "GOAL gRPC c=32 / raw ORT best (>= 0.95, 224 px model)": (
            ratio(f"{g} c=32", "raw_best") if model.key == "xresnet50" else None),
        "gRPC c=32 / raw ORT best": ratio(f"{g} c=32", "raw_best"),
        "ours OIP gRPC c=32 / KServe gRPC c=32 (same wire)": ratio("ours OIP gRPC c=32",
                                                                   "KServe peer c=32"),
        "ours OIP HTTP c=32 / KServe REST c=32": ratio("ours OIP HTTP c=32",
                                                       "KServe peer REST c=32"),
        f"gRPC TTA ({k} views) c=1 p50 ms": med("ours gRPC TTA c=1 p50"),
        f"raw ORT batch-{k} p50 ms": med("raw_bk_p50_ms"),
    }
    labels = sorted({key.rsplit(" c=", 1)[0] for r in per_round for key in r
                     if " c=32" in key or " c=1" in key} - {"ours gRPC TTA", "ours gRPC 12 MP"})
    for label in labels:
        for c in (32, 1):
            summary[f"{label} c={c} images/s"] = med(f"{label} c={c}")
            summary[f"{label} c={c} p50 ms"] = med(f"{label} c={c} p50")
            summary[f"{label} c={c} errors"] = med(f"{label} c={c} errors")
            summary[f"{label} c={c} server CPU ms/request"] = med(f"{label} c={c} cpu")
    return {key: value for key, value in summary.items() if value is not None}
