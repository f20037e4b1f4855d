"""The targets (each goal: the two figures, their ratio, met or not) and the markdown report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.common import (
    BenchModel,
    describe_machine,
    markdown_table,
)


def _find(rows: list[dict], **match: Any) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def targets(model: BenchModel, raw: list[dict], core: list[dict],
            servers: list[dict]) -> list[dict[str, Any]]:
    """Each target: what was compared, the two figures, the ratio or gap, and whether met."""
    out: list[dict[str, Any]] = []
    best_raw = max(raw, key=lambda r: r["throughput"])
    k = model.tta_views

    def add(name: str, ours: dict | None, ours_key: str, ref: float | None, ref_label: str,
            check: Callable[[float, float], bool], how: str) -> None:
        if ours is None or ref is None or "error" in ours:
            out.append({"model": model.key, "target": name, "met": "not measured"})
            return
        value = ours[ours_key]
        out.append({"model": model.key, "target": name, "ours": value, "reference": ref,
                    "reference_is": ref_label, "ratio": value / ref if ref else None,
                    "met": "yes" if check(value, ref) else "NO", "rule": how})

    grpc32 = _find(servers, server="ours gRPC (batching on)", tta=False, concurrency=32)
    http32 = _find(servers, server="ours HTTP (batching on)", tta=False, concurrency=32)
    plain_grpc32 = _find(servers, server="plain grpcio peer", concurrency=32)
    plain_bento32 = _find(servers, server="plain BentoML peer", concurrency=32)
    raw_label = f"raw ORT best ({best_raw['runtime']}, batch {best_raw['batch']})"
    if model.key != "xresnet50":
        add("gRPC c=32 >= 0.6x best raw ORT", grpc32, "throughput", best_raw["throughput"],
            raw_label, lambda v, r: v >= 0.6 * r, "images/s ratio >= 0.6")
        add("gRPC c=32 >= 2x plain grpcio", grpc32, "throughput",
            plain_grpc32 and plain_grpc32["throughput"], "plain grpcio c=32",
            lambda v, r: v >= 2 * r, "images/s ratio >= 2")
        add("HTTP c=32 >= 2x plain BentoML", http32, "throughput",
            plain_bento32 and plain_bento32["throughput"], "plain BentoML c=32",
            lambda v, r: v >= 2 * r, "images/s ratio >= 2")
        raw1_best = min((r for r in raw if r["batch"] == 1), key=lambda r: r["p99_ms"])
        add("gRPC c=1 p99 within 2 ms of raw ORT batch-1", _find(
            servers, server="ours gRPC (batching on)", tta=False, concurrency=1), "p99_ms",
            raw1_best["p99_ms"], f"raw ORT batch-1 p99 ({raw1_best['runtime']})",
            lambda v, r: v <= r + 2.0, "p99 gap <= 2 ms")
    else:
        add("gRPC c=32 >= 0.95x raw ORT", grpc32, "throughput", best_raw["throughput"],
            raw_label, lambda v, r: v >= 0.95 * r, "images/s ratio >= 0.95")
    raw_k = min((r for r in raw if r["batch"] == k), key=lambda r: r["p50_ms"])
    add(f"TTA ({k} views), core alone c=1 <= 1.1x raw ORT batch of {k}",
        _find(core, tta=True, concurrency=1), "p50_ms", raw_k["p50_ms"],
        f"raw ORT batch-{k} p50", lambda v, r: v <= 1.1 * r, "p50 latency ratio <= 1.1")
    add(f"TTA ({k} views), gRPC c=1 <= 1.1x raw ORT batch of {k}",
        _find(servers, server="ours gRPC (batching on)", tta=True, concurrency=1), "p50_ms",
        raw_k["p50_ms"], f"raw ORT batch-{k} p50", lambda v, r: v <= 1.1 * r,
        "p50 latency ratio <= 1.1")
    return out


# ----------------------------------------------------------------------------- report


RAW_COLUMNS = [("runtime", "runtime", ""), ("batch", "batch", "d"),
               ("throughput", "images/s", ",.0f"), ("p50_ms", "p50 ms/call", ".2f"),
               ("p99_ms", "p99 ms/call", ".2f")]
CORE_COLUMNS = [("tta", "TTA", ""), ("concurrency", "concurrency", "d"),
                ("throughput", "images/s", ",.0f"), ("p50_ms", "p50 ms", ".2f"),
                ("p95_ms", "p95 ms", ".2f"), ("p99_ms", "p99 ms", ".2f")]
SERVER_COLUMNS = [("server", "server", ""), ("tta", "TTA", ""),
                  ("concurrency", "concurrency", "d"), ("throughput", "images/s", ",.0f"),
                  ("p50_ms", "p50 ms", ".1f"), ("p95_ms", "p95 ms", ".1f"),
                  ("p99_ms", "p99 ms", ".1f"), ("peak_rss_mb", "peak RSS MB", ".0f"),
                  ("errors", "errors", "d"), ("client_cpu_s_per_s", "client CPU", ".2f")]
TARGET_COLUMNS = [("target", "target", ""), ("ours", "ours", ",.2f"),
                  ("reference", "reference", ",.2f"), ("reference_is", "reference is", ""),
                  ("ratio", "ratio", ".2f"), ("met", "met", "")]


def report(results: dict[str, Any]) -> str:
    parts = [f"Machine: {describe_machine(results['machine'])}", ""]
    for key, r in results["models"].items():
        parts += [f"### {key}: {r['model']['source']}", "",
                  "Raw ONNX Runtime (pre-processed arrays; per-call latency):", "",
                  markdown_table(r["raw_ort"], RAW_COLUMNS), "",
                  "Inference core alone (in-process; decode + preprocess + batcher + infer):", "",
                  markdown_table(r["core"], CORE_COLUMNS), "",
                  "Servers (closed loop, bench.loadgen in its own process):", "",
                  markdown_table([s for s in r["servers"] if "error" not in s], SERVER_COLUMNS),
                  "", "Targets:", "", markdown_table(r["targets"], TARGET_COLUMNS), ""]
        failed = [s for s in r["servers"] if "error" in s]
        parts += [f"- {s['server']}: {s['error']}" for s in failed]
    return "\n".join(parts)
