"""Front-end workers (issue 28): ``tta-serve --workers N`` against one process and against N
plain copies of the server, each wire alone and both at once, interleaved over rounds.

    .venv/bin/python -m bench.workers --rounds 2 --workers 2 --model digits

Each round starts, in turn: plain ``tta-serve`` (one process), ``tta-serve --workers N`` (N
front-end processes over one inference process) and N plain ``tta-serve`` copies (each with its
own models; the clients split evenly over them, as a load balancer would), all on the bundled
models with ``--model`` as the default. Each is loaded with ``--concurrency`` clients per wire:
gRPC ``Predict`` alone, HTTP ``/predict`` alone, then both at once (``--images``: the digits
model's PNGs by default).
Per phase: requests answered per second and the server CPU per answer (every process and thread
of the server's tree: the steadier figure on a shared box). "both / sum" is the goal's ratio:
both wires at once over the sum of each alone. The clients are bench.loadgen (the load client
of bench.serving), one process per wire and server, on the same cores as the servers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import RESULTS, ROOT, tree_cpu_seconds
from bench.overload import Server

PHASES = (("grpc", ("grpc",)), ("http", ("http",)), ("both", ("grpc", "http")))


class Served(Server):
    """``tta-serve`` with extra options; ready when every worker listens."""

    def __init__(self, models_dir: Path, workdir: Path, options: list[str], workers: int) -> None:
        self.workers = workers
        super().__init__(ROOT, models_dir, workdir, options)

    def wait_ready(self) -> None:
        super().wait_ready()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            listening = 0
            for p in [psutil.Process(self.process.pid), *psutil.Process(
                    self.process.pid).children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    listening += any(c.status == psutil.CONN_LISTEN and
                                     c.laddr.port == self.http_port
                                     for c in p.net_connections(kind="tcp"))
            if listening >= self.workers:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.workers} workers not listening; see {self.log_path}")


def _loadgen(protocol: str, target: str, concurrency: int, seconds: float,
             images: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", protocol, target, "--images", images,
         "--concurrency", str(concurrency), "--duration", str(seconds), "--warmup", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _phase(servers: list[Served], wires: tuple[str, ...], concurrency: int, seconds: float,
           images: str) -> tuple[float, float, int]:
    """Answers per second, server CPU ms per answer, errors: ``concurrency`` clients per wire
    (bench.loadgen, one process per wire and server), split evenly over ``servers``."""
    share = max(1, concurrency // len(servers))
    cpu0 = sum(tree_cpu_seconds(s.process.pid) for s in servers)
    clients = [_loadgen(w, f"127.0.0.1:{s.grpc_port}" if w == "grpc" else
                        f"http://127.0.0.1:{s.http_port}/predict", share, seconds, images)
               for s in servers for w in wires]
    results = []
    for c in clients:
        out, err = c.communicate(timeout=seconds + 180)
        if c.returncode != 0:
            raise RuntimeError(f"load client failed: {err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    cpu = sum(tree_cpu_seconds(s.process.pid) for s in servers) - cpu0
    rps = sum(r["throughput"] for r in results)
    answered = max(1.0, rps * (seconds + 1))
    return rps, 1000 * cpu / answered, int(sum(r.get("errors", 0) for r in results))


def measure(label: str, options: list[list[str]], workers: int, models_dir: Path,
            concurrency: int, seconds: float, images: str) -> dict[str, float]:
    row: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="workers-bench-") as workdir:
        servers: list[Served] = []
        for i, o in enumerate(options):
            (Path(workdir) / str(i)).mkdir()
            servers.append(Served(models_dir, Path(workdir) / str(i), o, workers))
        try:
            for s in servers:
                s.wait_ready()
            _phase(servers, ("grpc", "http"), concurrency, 2, images)  # warm-up
            for name, wires in PHASES:
                rps, cpu_ms, errors = _phase(servers, wires, concurrency, seconds, images)
                row[f"{name} rps"], row[f"{name} cpu ms"] = rps, cpu_ms
                row["errors"] = row.get("errors", 0) + errors
        finally:
            row["exit codes"] = sum(abs(s.stop()) for s in servers)
    row["both / sum"] = row["both rps"] / (row["grpc rps"] + row["http rps"])
    print(f"  {label}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--images", default="digits",
                        help="bench.loadgen's image set: digits (PNGs), cifar10 (JPEGs) ...")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0, help="load per phase")
    args = parser.parse_args(argv)
    base = ["--model", args.model, "--device", args.device]
    n = args.workers
    setups = {"1 process": ([base], 1),
              f"--workers {n}": ([[*base, "--workers", str(n)]], n),
              f"{n} plain copies": ([base] * n, 1)}
    rounds: list[dict] = []
    for r in range(1, args.rounds + 1):
        print(f"round {r} (load {os.getloadavg()[0]:.1f})", flush=True)
        order = list(setups.items()) if r % 2 else list(setups.items())[::-1]
        rounds.append({"round": r, "load_avg_1": os.getloadavg()[0], **{
            label: measure(label, options, workers, args.models_dir.resolve(),
                           args.concurrency, args.seconds, args.images)
            for label, (options, workers) in order}})
    medians = {label: {k: statistics.median(rd[label][k] for rd in rounds)
                       for k in rounds[0][label]} for label in setups}
    ratios = {f"{label} / 1 process, {k}": [round(rd[label][k] / rd["1 process"][k], 2)
                                             for rd in rounds]
              for label in setups if label != "1 process" for k in ("both rps", "both cpu ms")}
    result = {"command": " ".join(sys.argv), "cores": os.cpu_count(), "rounds": rounds,
              "medians": medians, "ratios per round": ratios}
    print(json.dumps({"medians": medians, "ratios per round": ratios}, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "workers-latest.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
