"""``python -m bench.serving``: the command line (see the package docstring)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bench.serving as package
from bench.common import (
    ROOT,
    describe_machine,
    ensure_model,
    machine,
    markdown_table,
    write_results,
)
from bench.serving.key import bench_key_comparison
from bench.serving.report import report, targets
from bench.serving.runtime import bench_core, bench_raw_ort, gpu_name
from bench.serving.servers import bench_servers
from bench.serving.settings import SETTINGS, durations


@contextlib.contextmanager
def _stage(label: str) -> Iterator[None]:
    t0 = time.perf_counter()
    print(f"{label} ...", file=sys.stderr, flush=True)
    yield
    print(f"{label}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=package.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cifar10", "xresnet50"],
                        choices=["cifar10", "digits", "xresnet50", "resnet18-32"])
    parser.add_argument("--photos", default=None, metavar="DIR",
                        help="cifar10's inputs: class folders of photos (e.g. "
                             "data/cifar10/train) instead of the 100 held-out ones")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="our servers and raw ORT on this device (the peers stay on the CPU)")
    parser.add_argument("--no-kserve", action="store_true",
                        help="leave out the KServe peer (its venv is made on first use)")
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer variants")
    parser.add_argument("--key-comparison", type=int, default=0, metavar="ROUNDS",
                        help="only the interleaved target comparison, ROUNDS rounds")
    parser.add_argument("--warmup-s", type=float, default=None, help="override the warm-up")
    parser.add_argument("--measure-s", type=float, default=None,
                        help="override the measured window (see durations())")
    parser.add_argument("--only", nargs="*", default=None,
                        help="servers whose name contains one of these (e.g. gRPC peer)")
    return parser


def _key_comparison(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """--key-comparison ROUNDS: the goals, interleaved; medians printed, serving-key-latest."""
    for key in args.models:
        with _stage(f"{key}: key comparison"):
            results["models"][key] = bench_key_comparison(
                ensure_model(key), args.key_comparison, args.quick,
                set(args.only) if args.only else None)
    path = write_results("serving-key", results)
    print(f"Machine: {describe_machine(results['machine'])}\n")
    for key, r in results["models"].items():
        print(f"### {key}: medians over {args.key_comparison} interleaved rounds\n")
        print(markdown_table([{"figure": k, "value": v} for k, v in r["median"].items()],
                             [("figure", "figure", ""), ("value", "value", ",.2f")]))
        print("\nidle RSS MB: " + ", ".join(f"{k} {v:.0f}"
                                            for k, v in r["idle_rss_mb"].items()))
        print()
    print(f"JSON: {path.relative_to(ROOT)}")


def _every_table(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Raw ORT, the core alone and every server, per model; the report and serving-latest."""
    for key in args.models:
        with _stage(f"{key}: model"):
            model = ensure_model(key)
        d = durations(model, args.quick)
        with _stage(f"{key}: raw ONNX Runtime"):
            raw = bench_raw_ort(model, args.quick)
        with _stage(f"{key}: core alone"):
            core = bench_core(model, d, args.quick)
        with _stage(f"{key}: servers"):
            servers = bench_servers(model, d, args.quick, set(args.only) if args.only else None)
        results["models"][key] = {
            "model": {"key": key, "source": model.source, "size": model.size,
                      "tta_views": model.tta_views, "onnx": str(model.onnx_path)},
            "durations": d.__dict__, "raw_ort": raw, "core": core, "servers": servers,
            "targets": targets(model, raw, core, servers)}
    results["machine_after"] = {"load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}
    path = write_results("serving", results)
    print(report(results))
    print(f"\nJSON: {path.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    SETTINGS.device = args.device
    SETTINGS.kserve = not args.no_kserve
    SETTINGS.photos = str(Path(args.photos).resolve()) if args.photos else None
    SETTINGS.warmup_s, SETTINGS.measure_s = args.warmup_s, args.measure_s
    results: dict[str, Any] = {"machine": {**machine(), "gpu": gpu_name()}, "quick": args.quick,
                               "command": " ".join(["python -m bench.serving", *(argv or
                                                                                 sys.argv[1:])]),
                               "models": {}}
    if args.key_comparison:
        _key_comparison(args, results)
    else:
        _every_table(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
