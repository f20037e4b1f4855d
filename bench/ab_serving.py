"""Before/after for a hot-path change: our server at another commit against the working tree.

Checks REV out into a git worktree (.cache/ab/REV, git-ignored), starts ``tta-serve grpc`` or
``http`` from both trees on the bundled cifar10 model, and alternates the same closed-loop load
(bench.loadgen, real CIFAR-10 JPEGs) between them, round after round, so both see the same
machine load; reports the medians of each round's after/before ratio, and the server's CPU time
per request (its process tree's user + system time over the run / requests answered), which
other work on a shared machine moves far less than latency.

    .venv/bin/python -m bench.ab_serving HEAD --protocol grpc --rounds 3
    .venv/bin/python -m bench.ab_serving e1f3c05 --protocol http --concurrency 1 32 --images phone
    .venv/bin/python -m bench.ab_serving --after-flags "--max-batch-size 8" --concurrency 32
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ROOT, ensure_model, images_for, write_results
from bench.serve_process import free_port
from bench.serving.servers import RunningServer, ServerSpec, run_loadgen
from bench.serving.settings import PY, Durations


def worktree(rev: str) -> Path:
    """A detached checkout of ``rev`` under .cache/ab (made once, reused)."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    path = ROOT / ".cache" / "ab" / sha
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=ROOT,
                       check=True, capture_output=True)
    return path


def spec(name: str, tree: Path, protocol: str, flags: list[str]) -> ServerSpec:
    model = ensure_model("cifar10")
    port = free_port()
    target = f"127.0.0.1:{port}" if protocol == "grpc" else f"http://127.0.0.1:{port}/predict"
    return ServerSpec(name, protocol,
                      [PY, "-m", "service.cli", protocol, "--models-dir", str(model.models_dir),
                       "--model", model.name, "--device", "cpu", "--poll-interval-s", "0",
                       "--log-level", "WARNING", "--host", "127.0.0.1", "--port", str(port),
                       *flags],
                      {"PYTHONPATH": str(tree)}, target, "core", [],
                      log=ROOT / "bench" / "results" / "logs" / f"ab-{name}.log", cwd=tree)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.ab_serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev", nargs="?", default=None,
                        help="the 'before' commit (e.g. HEAD; default: the working tree too, "
                             "to compare --before-flags with --after-flags)")
    parser.add_argument("--before-flags", default="", help="extra tta-serve flags, 'before'")
    parser.add_argument("--after-flags", default="", help="extra tta-serve flags, 'after'")
    parser.add_argument("--after", default=None,
                        help="the 'after' commit (default: the working tree)")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--images", default="cifar10", choices=["cifar10", "phone"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measure-s", type=float, default=5.0)
    return parser


def _summary(args: argparse.Namespace, rounds: list[dict[str, Any]]) -> dict[int, Any]:
    """Medians over the rounds per concurrency, printed as a markdown table."""
    print(f"{args.protocol}, {args.images} images, {args.rounds} interleaved rounds, "
          f"before = {args.rev or 'the working tree'} {args.before_flags}, "
          f"after = {args.after or 'the working tree'} {args.after_flags}\n")
    print("| concurrency | before req/s | after req/s | after/before | before p50 ms | "
          "after p50 ms | p50 change ms | server CPU ms/request before | after |\n"
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for c in args.concurrency:
        med = {k: float(np.median([r[k] for r in rounds])) for k in
               (f"before c={c}", f"after c={c}", f"before c={c} p50", f"after c={c} p50",
                f"before c={c} cpu", f"after c={c} cpu")}
        ratio = float(np.median([r[f"after c={c}"] / r[f"before c={c}"] for r in rounds]))
        delta = float(np.median([r[f"after c={c} p50"] - r[f"before c={c} p50"]
                                 for r in rounds]))
        summary[c] = {**med, "ratio": ratio, "p50_change_ms": delta}
        print(f"| {c} | {med[f'before c={c}']:.0f} | {med[f'after c={c}']:.0f} | {ratio:.2f} | "
              f"{med[f'before c={c} p50']:.2f} | {med[f'after c={c} p50']:.2f} | "
              f"{delta:+.2f} | {med[f'before c={c} cpu']:.3f} | {med[f'after c={c} cpu']:.3f} |")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    model = ensure_model("cifar10")
    d = Durations(1.0, args.measure_s)
    image = images_for("cifar10", 1)[0]
    servers: dict[str, RunningServer] = {}
    trees = {"before": worktree(args.rev) if args.rev else ROOT,
             "after": worktree(args.after) if args.after else ROOT}
    flags = {"before": args.before_flags.split(), "after": args.after_flags.split()}
    for name, tree in trees.items():
        code = subprocess.run([PY, "-c", "import service.core.batcher as b; print(b.__file__)"],
                              cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                              capture_output=True, text=True).stdout.strip()
        assert code.startswith(str(tree)), f"{name} would import {code}, not {tree}'s code"
    rounds: list[dict[str, Any]] = []
    try:
        for name, tree in trees.items():
            servers[name] = RunningServer(spec(name, tree, args.protocol, flags[name]), image)
        for r in range(args.rounds):
            row: dict[str, Any] = {"round": r + 1, "load_avg_1": round(os.getloadavg()[0], 2)}
            for c in args.concurrency:
                order = ("before", "after") if r % 2 == 0 else ("after", "before")
                for name in order:
                    cpu0 = servers[name].cpu_seconds()
                    result = run_loadgen(servers[name].spec, model, False, c, d, args.images)
                    served = result["throughput"] * (d.warmup_s + d.measure_s)
                    row[f"{name} c={c}"] = result["throughput"]
                    row[f"{name} c={c} p50"] = result["p50_ms"]
                    row[f"{name} c={c} cpu"] = (servers[name].cpu_seconds() - cpu0) * 1e3 / served
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()
                                                 if k != "round"), file=sys.stderr, flush=True)
            rounds.append(row)
    finally:
        for server in servers.values():
            server.stop()
    summary = _summary(args, rounds)
    write_results(f"ab-{args.protocol}-{args.images}", {"rev": args.rev, "rounds": rounds,
                                                         "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
