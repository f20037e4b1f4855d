"""One process for both front ends (issue 18): memory of ``tta-serve``'s whole process tree and
throughput per wire, for this checkout and optionally another one (the code before), interleaved.

    .venv/bin/python -m bench.one_process                              # this checkout
    .venv/bin/python -m bench.one_process --before /tmp/before         # + a checkout, interleaved
    .venv/bin/python -m bench.one_process --before /tmp/before --checkout /tmp/after

Each round starts plain ``tta-serve`` (gRPC + HTTP) from each checkout on the bundled models
(``models/``: cifar10, the default, and digits) and measures, in this order: the tree's memory
once both front ends answer (idle), gRPC ``Predict`` then HTTP ``/predict`` throughput at
``--concurrency`` with real CIFAR-10 JPEGs (``tests/data/cifar10_heldout``), the tree's memory
after that load, and SIGTERM's exit code. Each wire is loaded alone, then both at once
(``--concurrency`` clients on each); each phase also records the server's CPU time per
answered request (all its processes and threads), which the shared box's load moves less than
requests per second. Memory is the sum over the tree of RSS (what the goal
names; pages shared between processes count once per process) and of PSS (shared pages split
between their processes: the tree's real footprint). The client runs in this process (one
asyncio loop: a grpc.aio channel and an httpx pool), on the same cores, the same for both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import process_tree, tree_cpu_seconds
from bench.serve_process import ServeProcess

ROOT = Path(__file__).resolve().parents[1]
JPEGS = sorted((ROOT / "tests/data/cifar10_heldout").glob("*/*.jpg"))
RESULTS = ROOT / "bench/results"


@dataclass
class Memory:
    processes: int
    rss_mb: float
    pss_mb: float


@dataclass
class Run:
    checkout: str
    round: int
    idle: Memory
    loaded: Memory
    grpc_rps: float
    http_rps: float
    both_rps: float  # gRPC and HTTP clients at once, both wires' answers per second
    cpu_ms: dict[str, float]  # server CPU (all its processes and threads) per answer, per phase
    errors: int
    exit_code: int


def tree_memory(pid: int) -> Memory:
    """Read after each phase too, so a server that died mid-run stops the bench here."""
    tree = process_tree(pid)
    if not tree:
        raise RuntimeError(f"the server (pid {pid}) is gone")
    rss = pss = 0
    for p in tree:
        info = p.memory_full_info()
        rss += info.rss
        pss += info.pss
    return Memory(len(tree), rss / 2**20, pss / 2**20)


def _server(checkout: Path, models_dir: Path, workdir: Path) -> ServeProcess:
    """Plain ``tta-serve`` started from ``checkout`` (its ``service`` package, this interpreter):
    no tuning flags, the default command, so any revision understands it."""
    return ServeProcess("all", models_dir, workdir, grace_s=None, tuning=(), cwd=checkout,
                        env={"PYTHONPATH": str(checkout)}, name_kind=False)


def _stop(server: ServeProcess) -> int:
    """SIGTERM, and its exit code (-9: it did not stop within 60 s and was killed)."""
    try:
        return server.terminate(60)
    except subprocess.TimeoutExpired:
        return -9


async def _load(wires: tuple[str, ...], server: ServeProcess, images: list[bytes], concurrency: int,
                seconds: float) -> tuple[dict[str, int], int]:
    """Requests answered per wire, and errors, in ``seconds`` of ``concurrency`` clients per wire,
    each sending one request after another (every wire in ``wires`` at the same time)."""
    import grpc
    import httpx

    from service._proto.tta_serve.v1 import classifier_pb2 as pb
    from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc

    answered = dict.fromkeys(wires, 0)
    errors = 0
    deadline = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=60,
                              limits=httpx.Limits(max_connections=concurrency)) as client:
        stub = pb_grpc.ClassifierStub(channel)

        async def one_client(wire: str, k: int) -> None:
            nonlocal errors
            i = k
            while time.monotonic() < deadline:
                image = images[i % len(images)]
                i += concurrency
                try:
                    if wire == "grpc":
                        await stub.Predict(pb.PredictRequest(image=image), timeout=60)
                    else:
                        r = await client.post("/predict",
                                              files={"image": ("p.jpg", image, "image/jpeg")})
                        r.raise_for_status()
                    answered[wire] += 1
                except (grpc.RpcError, httpx.HTTPError):
                    errors += 1

        await asyncio.gather(*(one_client(w, k) for w in wires for k in range(concurrency)))
    return answered, errors


def measure(checkout: Path, models_dir: Path, round_: int, concurrency: int,
            seconds: float) -> Run:
    images = [p.read_bytes() for p in JPEGS]
    rps: dict[str, float] = {}
    cpu_ms: dict[str, float] = {}
    errors = 0
    with tempfile.TemporaryDirectory(prefix="one-process-") as workdir:
        server = _server(checkout, models_dir, Path(workdir))
        try:
            server.wait_ready()
            time.sleep(3)  # let start-up settle
            idle = tree_memory(server.process.pid)
            asyncio.run(_load(("grpc", "http"), server, images, concurrency, 2))  # warm-up
            for name, wires in (("grpc", ("grpc",)), ("http", ("http",)),
                                ("both", ("grpc", "http"))):
                cpu_before = tree_cpu_seconds(server.process.pid)
                answered, failed = asyncio.run(_load(wires, server, images, concurrency,
                                                     seconds))
                rps[name] = sum(answered.values()) / seconds
                cpu_ms[name] = 1000 * (tree_cpu_seconds(server.process.pid) - cpu_before) / max(
                    1, sum(answered.values()))
                errors += failed
            loaded = tree_memory(server.process.pid)
        finally:
            code = _stop(server)
    return Run(str(checkout), round_, idle, loaded, rps["grpc"], rps["http"], rps["both"],
               cpu_ms, errors, code)


def summary(runs: list[Run]) -> dict[str, dict[str, float]]:
    """Medians per checkout."""
    out: dict[str, dict[str, float]] = {}
    for checkout in dict.fromkeys(r.checkout for r in runs):
        mine = [r for r in runs if r.checkout == checkout]
        out[checkout] = {
            "processes": mine[0].idle.processes,
            "idle_rss_mb": statistics.median(r.idle.rss_mb for r in mine),
            "idle_pss_mb": statistics.median(r.idle.pss_mb for r in mine),
            "loaded_rss_mb": statistics.median(r.loaded.rss_mb for r in mine),
            "loaded_pss_mb": statistics.median(r.loaded.pss_mb for r in mine),
            "grpc_rps": statistics.median(r.grpc_rps for r in mine),
            "http_rps": statistics.median(r.http_rps for r in mine),
            "both_rps": statistics.median(r.both_rps for r in mine),
            **{f"{phase}_cpu_ms_per_request": statistics.median(r.cpu_ms[phase] for r in mine)
               for phase in ("grpc", "http", "both")},
            "errors": sum(r.errors for r in mine),
            "exit_codes": sorted({r.exit_code for r in mine}),
        }
    return out


def paired_ratios(runs: list[Run], before: str, after: str) -> dict[str, float]:
    """Median over rounds of after / before, each round's two runs taken minutes apart."""
    metrics = {"idle_rss": lambda r: r.idle.rss_mb, "loaded_rss": lambda r: r.loaded.rss_mb,
               "idle_pss": lambda r: r.idle.pss_mb, "loaded_pss": lambda r: r.loaded.pss_mb,
               "grpc_rps": lambda r: r.grpc_rps, "http_rps": lambda r: r.http_rps,
               "both_rps": lambda r: r.both_rps,
               "grpc_cpu_ms": lambda r: r.cpu_ms["grpc"], "http_cpu_ms": lambda r: r.cpu_ms["http"],
               "both_cpu_ms": lambda r: r.cpu_ms["both"]}
    by_round = {(r.round, r.checkout): r for r in runs}
    rounds = sorted({r.round for r in runs})
    return {name: statistics.median(get(by_round[n, after]) / get(by_round[n, before])
                                    for n in rounds)
            for name, get in metrics.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, default=None,
                        help="another checkout to measure the same way (e.g. a git worktree of "
                             "the code before), interleaved with this one")
    parser.add_argument("--checkout", type=Path, default=ROOT,
                        help="the checkout measured as 'after' (default: this one)")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="load per wire per round")
    args = parser.parse_args(argv)
    checkouts = [c for c in (args.before, args.checkout) if c is not None]
    runs = []
    for round_ in range(1, args.rounds + 1):
        # Alternate which checkout goes first (ABBA): the shared box's load drifts.
        for checkout in checkouts if round_ % 2 else checkouts[::-1]:
            run = measure(checkout.resolve(), args.models_dir.resolve(), round_,
                          args.concurrency, args.seconds)
            print(f"round {round_} {checkout}: {run.idle.processes} processes, idle RSS "
                  f"{run.idle.rss_mb:.0f} MB (PSS {run.idle.pss_mb:.0f}), loaded RSS "
                  f"{run.loaded.rss_mb:.0f} MB (PSS {run.loaded.pss_mb:.0f}); gRPC "
                  f"{run.grpc_rps:.0f}/s, HTTP {run.http_rps:.0f}/s, both at once "
                  f"{run.both_rps:.0f}/s; server CPU ms per request "
                  f"{', '.join(f'{k} {v:.2f}' for k, v in run.cpu_ms.items())}; "
                  f"{run.errors} errors; "
                  f"exit {run.exit_code}", flush=True)
            runs.append(run)
    result = {"command": " ".join(sys.argv), "concurrency": args.concurrency,
              "seconds": args.seconds, "inputs": f"{len(JPEGS)} CIFAR-10 JPEGs",
              "summary": summary(runs), "runs": [asdict(r) for r in runs]}
    if len(checkouts) == 2:
        result["after_over_before"] = paired_ratios(runs, str(checkouts[0].resolve()),
                                                    str(checkouts[1].resolve()))
    print(json.dumps({k: result[k] for k in ("summary", "after_over_before") if k in result},
                     indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "one-process-latest.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
