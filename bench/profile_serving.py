"""Where one request's time goes: py-spy on a running server under closed-loop load.

Starts ``tta-serve grpc`` or ``tta-serve http`` on the bundled cifar10 model, drives it with
bench.loadgen (real CIFAR-10 JPEGs) and samples every thread of the server process with py-spy
(a sampling profiler: the server runs unmodified, at full speed). Prints the functions with the
most samples, self ("own" code) and inclusive (anywhere on the stack), as a share of the
samples in which the server was busy (idle threads are not sampled).

    .venv/bin/python -m bench.profile_serving grpc --concurrency 1 --seconds 10
    .venv/bin/python -m bench.profile_serving http --concurrency 32

py-spy comes from pip into its own venv (.cache/tools-venv, git-ignored) on first use.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, ensure_model, images_for, write_results
from bench.serve_process import free_port
from bench.serving.servers import RunningServer, ServerSpec
from bench.serving.settings import PY

TOOLS = ROOT / ".cache" / "tools-venv"
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def py_spy() -> Path:
    """The py-spy binary, installed into its own venv on first use."""
    binary = TOOLS / "bin" / "py-spy"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TOOLS)], check=True)
        subprocess.run([str(TOOLS / "bin" / "pip"), "install", "-q", "py-spy"], check=True)
    return binary


def short(frame: str) -> str:
    """'func (path/to/site-packages/pkg/mod.py:12)' -> 'pkg/mod.py:func'."""
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"].split("site-packages/")[-1].replace(str(ROOT) + "/", "")
    return f"{path}:{m['func']}"


def summarise(collapsed: str, top: int) -> dict[str, list[tuple[str, float]]]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";")[1:]]  # [0] is the thread
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    share = (lambda c: [(f, 100.0 * n / total) for f, n in c.most_common(top)]) if total else (
        lambda c: [])
    return {"samples": [("busy samples", float(total))], "self": share(own),
            "inclusive": share(inclusive)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("protocol", choices=["grpc", "http"])
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--label", default="", help="a name for this profile (before/after)")
    args = parser.parse_args(argv)
    model = ensure_model("cifar10")
    port = free_port()
    target = (f"127.0.0.1:{port}" if args.protocol == "grpc"
              else f"http://127.0.0.1:{port}/predict")
    spec = ServerSpec(f"ours {args.protocol}", args.protocol,
                      [PY, "-m", "service.cli", args.protocol, "--models-dir",
                       str(model.models_dir), "--model", model.name, "--device", "cpu",
                       "--poll-interval-s", "0", "--log-level", "WARNING", "--host",
                       "127.0.0.1", "--port", str(port)], {}, target, "core", [],
                      log=ROOT / "bench" / "results" / "logs" / f"profile-{args.protocol}.log")
    server = RunningServer(spec, images_for("cifar10", 1)[0])
    out = ROOT / "bench" / "results" / "logs" / f"profile-{args.protocol}.txt"
    try:
        load = subprocess.Popen([PY, "-m", "bench.loadgen", args.protocol, target, "--images",
                                 "cifar10", "--concurrency", str(args.concurrency), "--duration",
                                 str(args.seconds + 2), "--warmup", "1"], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        # The HTTP service's API runs in BentoML's worker: a child of the CLI process.
        pids = [server.proc.pid] + [c.pid for c in __import__("psutil").Process(
            server.proc.pid).children(recursive=True)]
        pid = pids[-1] if args.protocol == "http" else pids[0]
        subprocess.run([str(py_spy()), "record", "--pid", str(pid), "--duration",
                        str(int(args.seconds)), "--rate", str(args.rate), "--format", "raw",
                        "--output", str(out), "--nonblocking"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        loadgen = json.loads(load.communicate()[0].strip().splitlines()[-1])
    finally:
        server.stop()
    summary = summarise(out.read_text(), args.top)
    print(f"{args.protocol} c={args.concurrency}: {loadgen['throughput']:.0f} req/s, p50 "
          f"{loadgen['p50_ms']:.2f} ms; {summary['samples'][0][1]:.0f} busy samples\n")
    for kind in ("self", "inclusive"):
        print(f"| {kind} % | function |\n|---:|---|")
        for func, pct in summary[kind]:
            print(f"| {pct:.1f} | `{func}` |")
        print()
    write_results(f"profile-{args.protocol}-c{args.concurrency}" +
                  (f"-{args.label}" if args.label else ""),
                  {"protocol": args.protocol, "concurrency": args.concurrency,
                   "load": loadgen, **summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
