"""tta=auto against always-TTA over gRPC: closed-loop throughput at one concurrency.

Two ``tta-serve grpc`` servers run side by side: the calibrated model (its evidence-chosen views)
and the same graph as it was before calibration (its recipe's views; the issue's "today's 2
views" for cifar10). Each round runs, in a rotating order, bench.loadgen on
- the calibrated model with ``tta_mode=auto``,
- the calibrated model with ``tta_mode=on`` (always-TTA, the same views),
- the model before calibration with ``tta=true`` (always-TTA with its recipe's views),
so every configuration sees the same machine load; a ratio is taken within each round and the
median of the rounds is reported. Used by bench.calibration.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import ROOT, images_for
from bench.serve_process import free_port
from bench.serving.servers import RunningServer, ServerSpec
from bench.serving.settings import PY

CONFIGS = (("auto", "after", "auto"), ("always-TTA", "after", "on"),
           ("always-TTA before calibration", "before", "on"))


def _spec(label: str, repo: Path, name: str) -> ServerSpec:
    port = free_port()
    return ServerSpec(label, "grpc",
                      [PY, "-m", "service.cli", "grpc", "--models-dir", str(repo),
                       "--model", name, "--device", "cpu", "--poll-interval-s", "0",
                       "--log-level", "WARNING", "--host", "127.0.0.1", "--port", str(port)],
                      {"PYTHONPATH": str(ROOT)}, f"127.0.0.1:{port}", "core", [],
                      log=ROOT / "bench" / "results" / "logs" / f"calibration-{label}.log")


def _load(target: str, mode: str, concurrency: int, warmup_s: float, measure_s: float,
          photos: Path | None) -> dict[str, Any]:
    command = [PY, "-m", "bench.loadgen", "grpc", target, "--images", "cifar10",
               "--concurrency", str(concurrency), "--duration", str(measure_s),
               "--warmup", str(warmup_s), "--tta-mode", mode]
    if photos is not None:
        command += ["--photos", str(photos)]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                         timeout=warmup_s + measure_s + 120)
    if out.returncode != 0:
        raise RuntimeError(f"load client failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def throughput(before: Path, after: Path, name: str, *, rounds: int = 3, concurrency: int = 32,
               warmup_s: float = 4.0, measure_s: float = 15.0,
               photos: Path | None = None) -> dict[str, Any]:
    """Requests per second of each configuration per round, and the medians of the ratios."""
    image = images_for("cifar10", 1)[0]
    servers = {"after": RunningServer(_spec("after", after, name), image),
               "before": RunningServer(_spec("before", before, name), image)}
    runs: list[dict[str, float]] = []
    try:
        for r in range(rounds):
            order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
            row: dict[str, float] = {}
            for label, which, mode in order:
                result = _load(servers[which].spec.target, mode, concurrency, warmup_s,
                               measure_s, photos)
                if result["errors"]:
                    raise RuntimeError(f"{label}: {result['errors']} failed requests, e.g. "
                                       f"{result['error_samples']}")
                row[label] = float(result["throughput"])
                print(f"  round {r + 1}: {label}: {row[label]:.1f} requests/s", file=sys.stderr,
                      flush=True)
            runs.append(row)
    finally:
        for server in servers.values():
            server.stop()
    ratio = [r["auto"] / r["always-TTA"] for r in runs]
    ratio_before = [r["auto"] / r["always-TTA before calibration"] for r in runs]
    return {"concurrency": concurrency, "rounds": runs, "measure_s": measure_s,
            "median_rps": {k: statistics.median(r[k] for r in runs) for k in runs[0]},
            "auto_vs_always_tta": statistics.median(ratio),
            "auto_vs_always_tta_before": statistics.median(ratio_before)}
