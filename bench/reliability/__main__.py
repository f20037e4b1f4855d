"""``python -m bench.reliability [PROBE ...] [--quick]``: run the probes, print their figures and
write bench/results/reliability-latest.json."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench.reliability as reliability
from bench.reliability.fuzz import fuzz_cases, mutation_cases, run_case, still_serving
from bench.reliability.inputs import digit_pngs, model_repository
from bench.reliability.kill9 import kill9_then_resume
from bench.reliability.memory import PeakRss, soak
from bench.reliability.sigterm import sigterm_under_load
from bench.reliability.swap import hot_swap_under_load
from bench.serve_process import ServeProcess


def _section(title: str) -> None:
    print(f"\n## {title}\n", flush=True)


def run_sigterm(quick: bool, workdir: Path) -> dict[str, Any]:
    _section("SIGTERM under load (16 clients; every request answered, refused or lost)")
    out: dict[str, Any] = {}
    for kind in ("grpc", "http", "all"):
        for run in range(1 if quick else 4):
            folder = workdir / f"{kind}-{run}"
            with ServeProcess(kind, model_repository(folder), folder) as server:
                r = sigterm_under_load(server.wait_ready(), load_s=2 if quick else 5)
            print(r.line(), flush=True)
            for example in r.lost_examples:
                print(f"      lost: {example}")
            out.setdefault(kind, []).append(r.__dict__)
    return out


def run_soak(quick: bool, workdir: Path) -> dict[str, Any]:
    n = 3000 if quick else 24_000
    _section(f"Soak: RSS slope of each front end's serving process over {n:,} requests")
    out = []
    with ServeProcess("all", model_repository(workdir), workdir) as server:
        server.wait_ready()
        for protocol, route in (("grpc", "Predict"), ("http", "/predict"), ("http", "/livez")):
            r = soak(server, protocol, route, n)
            print(r.line(), flush=True)
            out.append(r.__dict__)
    return {"soak": out}


def run_bombs(quick: bool, workdir: Path) -> dict[str, Any]:
    _section("Compressed and archived input: peak RSS growth of the HTTP worker per request")
    out = []
    bombs = [c for c in fuzz_cases(digit_pngs(4)) if "bomb" in c.name and c.wire == "http"]
    with ServeProcess("http", model_repository(workdir), workdir) as server:
        server.wait_ready()
        for case in bombs:
            with PeakRss(server.http_worker()) as peak:
                outcome = run_case(server, case)
            print(f"{case.name}: {outcome.got} in {outcome.seconds:.2f} s, peak RSS "
                  f"{peak.start_mb:.0f} -> {peak.peak_mb:.0f} MB (+{peak.growth_mb:.0f} MB)",
                  flush=True)
            out.append({"case": case.name, "status": outcome.got, "seconds": outcome.seconds,
                        "start_mb": peak.start_mb, "peak_mb": peak.peak_mb})
    return {"bombs": out}


def run_fuzz(quick: bool, workdir: Path) -> dict[str, Any]:
    images = digit_pngs(64)
    cases = fuzz_cases(images) + mutation_cases(images, 100 if quick else 2000)
    _section(f"Fuzz: {len(cases)} cases over both front ends and the OIP")
    wrong, server_errors, hangs, broken = [], 0, 0, []
    with ServeProcess("all", model_repository(workdir), workdir) as server:
        server.wait_ready()
        for case in cases:
            outcome = run_case(server, case)
            if not outcome.ok:
                wrong.append(outcome)
                print(f"  WRONG {case.name}: expected {case.expected} got {outcome.got}: "
                      f"{outcome.text[:200]}", flush=True)
            server_errors += isinstance(outcome.got, int) and outcome.got >= 500 or \
                outcome.got in ("INTERNAL", "UNKNOWN", "CANCELLED")
            hangs += outcome.seconds > 30
            if not case.name.startswith("mutated") and not still_serving(server, images[0]):
                broken.append(case.name)
        tracebacks = server.log.count("Traceback")
    print(f"{len(cases)} cases: {len(wrong)} wrong statuses, {server_errors} 5xx/INTERNAL, "
          f"{hangs} hangs, server broken after {len(broken)}; {tracebacks} tracebacks logged")
    return {"cases": len(cases), "wrong": [w.__dict__ for w in wrong],
            "server_errors": server_errors, "hangs": hangs, "broken_after": broken,
            "tracebacks": tracebacks}


def run_swap(quick: bool, workdir: Path) -> dict[str, Any]:
    _section("Hot swap under load: v2 (good) then v3 (broken) published while clients predict")
    with ServeProcess("all", model_repository(workdir), workdir) as server:
        server.wait_ready()
        r = hot_swap_under_load(server, workdir / "models", phase_s=2 if quick else 10)
        refused_v3 = "digits" in server.log and "3" in server.log
    print(r.line(), flush=True)
    for failure in r.failures[:10]:
        print(f"      failed: {failure}")
    return {**r.__dict__, "log_mentions_v3": refused_v3}


def run_kill9(quick: bool, workdir: Path) -> dict[str, Any]:
    _section("kill -9 during training, then --resume")
    out = []
    for i, delay in enumerate((0.0,) if quick else (0.0, 2.0)):
        r = kill9_then_resume(workdir / str(i), delay_s=delay)
        print(r.line(), flush=True)
        out.append(r.__dict__)
    return {"kill9": out}


PROBES: dict[str, Callable[[bool, Path], dict[str, Any]]] = {
    "sigterm": run_sigterm,
    "soak": run_soak,
    "bombs": run_bombs,
    "fuzz": run_fuzz,
    "swap": run_swap,
    "kill9": run_kill9,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability",
                                     description=reliability.__doc__.split("\n\n")[0])
    parser.add_argument("probes", nargs="*", metavar="PROBE",
                        help=f"which probes (default: all of {', '.join(PROBES)})")
    parser.add_argument("--quick", action="store_true", help="the CI sizes")
    args = parser.parse_args(argv)
    unknown = [p for p in args.probes if p not in PROBES]
    if unknown:
        parser.error(f"unknown probe(s) {unknown}; choose from {list(PROBES)}")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tta-reliability-") as tmp:
        for name in args.probes or list(PROBES):
            results[name] = PROBES[name](args.quick, Path(tmp) / name)
    from bench.common import machine, write_results

    path = write_results("reliability", {"machine": machine(), "quick": args.quick,
                                         "results": results})
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
