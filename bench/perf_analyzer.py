"""NVIDIA's perf_analyzer against our servers: input files, one run, and the concurrency sweep.

``bash bench/perf_analyzer.sh sweep`` installs perf_analyzer and runs ``main`` here:

    .venv/bin/python -m bench.perf_analyzer --perf-analyzer PATH [--quick]

It starts ``tta-serve grpc`` and ``tta-serve http`` on the model repository, and for each wire
and input -- encoded PNG digits and photo-sized JPEGs (``image``, BYTES) and preprocessed pixels
(the model input, FP32) -- runs perf_analyzer at concurrency 1, 2, 4, 8, 16, 32 (synchronous
requests, batch 1), printing a markdown table (throughput, p50/p90/p99 latency, the server's
queue and compute times as it reports them through the statistics extension) and writing
bench/results/perf_analyzer-*.json. tests/oip/test_perf_analyzer.py uses ``write_inputs`` and
``run`` for its short pass.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import re
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.imaging import decode_image, stack_views
from service.model_repository import ModelRepository

if TYPE_CHECKING:
    from bench.serving.servers import ServerSpec

# perf_analyzer's CSV (-f) column -> our key; latencies and stages are microseconds.
CSV_COLUMNS = {
    "Concurrency": "concurrency", "Inferences/Second": "throughput",
    "Server Queue": "queue_us", "Server Compute Input": "compute_input_us",
    "Server Compute Infer": "compute_infer_us", "Server Compute Output": "compute_output_us",
    "p50 latency": "p50_us", "p90 latency": "p90_us", "p95 latency": "p95_us",
    "p99 latency": "p99_us",
}
CONCURRENCY = (1, 2, 4, 8, 16, 32)
QUICK_CONCURRENCY = (1, 8, 32)


def bytes_element(data: bytes) -> str:
    """A BYTES tensor element as perf_analyzer's ``b64`` takes it: the serialized tensor, i.e.
    the 4-byte little-endian length, then the bytes."""
    return base64.b64encode(struct.pack("<I", len(data)) + data).decode()


def write_inputs(folder: Path, models_dir: Path, model: str,
                 images: dict[str, list[bytes]]) -> dict[str, Path]:
    """perf_analyzer --input-data files: one per image kind (BYTES ``image``, one step per
    image), and ``fp32``: the first kind's images preprocessed to the served version's input
    (its evaluation transform; the model input name and size from its model.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    card = ModelRepository(models_dir).resolve(model).card
    files = {}
    for kind, blobs in images.items():
        steps = [{"image": {"b64": bytes_element(b)}} for b in blobs]
        files[kind] = folder / f"{model}-{kind}.json"
        files[kind].write_text(json.dumps({"data": steps}))
    first = next(iter(images.values()))
    pixels = stack_views([decode_image(b) for b in first], card.eval_spec, None)
    steps = [{card.input_name: {"content": [round(float(v), 6) for v in p.reshape(-1)],
                                "shape": list(p.shape)}} for p in pixels]
    files["fp32"] = folder / f"{model}-fp32.json"
    files["fp32"].write_text(json.dumps({"data": steps}))
    return files


@dataclass
class Run:
    command: list[str]
    returncode: int
    output: str
    rows: list[dict[str, Any]]

    @property
    def errors(self) -> list[str]:
        """perf_analyzer's error lines (a failed request ends the run with one)."""
        return [line.strip() for line in self.output.splitlines()
                if re.search(r"error|failed", line, re.IGNORECASE)]


def run(perf_analyzer: str | Path, *, model: str, protocol: str, url: str, input_file: Path,
        concurrency: int | str, measurement_ms: int = 2000, max_trials: int = 5,
        stability_pct: int = 25, request_count: int = 0, timeout_s: float = 300,
        extra: list[str] | None = None) -> Run:
    """One perf_analyzer invocation (synchronous requests, batch 1); its CSV rows parsed.

    Measured in time windows until three agree within ``stability_pct`` (at most
    ``max_trials``), or, with ``request_count``, over that many requests in one measurement
    (no stability search: what a short CI pass on a busy machine needs)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.csv"
        if request_count:
            measure = ["--request-count", str(request_count)]
        else:
            measure = ["--measurement-interval", str(measurement_ms), "--max-trials",
                       str(max_trials), "--stability-percentage", str(stability_pct)]
        command = [str(perf_analyzer), "-m", model, "-u", url, "-i", protocol,
                   "--input-data", str(input_file), "--concurrency-range", str(concurrency),
                   *measure, "-f", str(report), *(extra or [])]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        rows = []
        if report.exists():
            with report.open() as f:
                for record in csv.DictReader(f):
                    rows.append({key: float(record[col]) for col, key in CSV_COLUMNS.items()
                                 if record.get(col) not in (None, "")})
    return Run(command, done.returncode, done.stdout + done.stderr, rows)


def _table(rows: list[dict[str, Any]]) -> str:
    from bench.common import markdown_table

    shown = [{**r, **{k: r[k] / 1000 for k in ("p50_us", "p90_us", "p99_us") if k in r},
              "server_us": sum(r.get(k, 0.0) for k in ("queue_us", "compute_input_us",
                                                      "compute_infer_us", "compute_output_us"))}
             for r in rows]
    return markdown_table(shown, [
        ("wire", "wire", ""), ("input", "input", ""), ("concurrency", "concurrency", ".0f"),
        ("mode", "measured", ""),
        ("throughput", "infer/s", ".0f"), ("p50_us", "p50 ms", ".2f"),
        ("p90_us", "p90 ms", ".2f"), ("p99_us", "p99 ms", ".2f"),
        ("queue_us", "server queue µs", ".0f"), ("compute_input_us", "decode+preprocess µs", ".0f"),
        ("compute_infer_us", "infer µs", ".0f"), ("server_us", "server total µs", ".0f"),
    ])


def _sweep(args: argparse.Namespace, spec: ServerSpec, files: dict[str, Path],
           concurrency: Sequence[int], rows: list[dict], failures: list[str]) -> None:
    """perf_analyzer on one server: every input kind at every concurrency; a row, or a
    failure, each."""
    url = spec.target.removeprefix("http://").removesuffix("/predict")
    for kind in ("png", "jpeg", "fp32"):
        for c in concurrency:
            result = run(args.perf_analyzer, model=args.model, protocol=spec.protocol,
                         url=url, input_file=files[kind], concurrency=c,
                         measurement_ms=args.measurement_ms,
                         stability_pct=args.stability_pct)
            mode = "windows"
            if "Failed to obtain stable measurement" in result.output:
                # A busy machine: one fixed-size measurement instead of the search.
                result = run(args.perf_analyzer, model=args.model,
                             protocol=spec.protocol, url=url, input_file=files[kind],
                             concurrency=c, request_count=max(1000, 100 * c))
                mode = "count"
            label = f"{spec.protocol} {kind} c={c}"
            if result.returncode != 0 or not result.rows:
                failures.append(f"{label}: {result.errors or result.output[-500:]}")
                print(f"{label}: FAILED", file=sys.stderr)
                continue
            row = {"wire": spec.protocol, "input": kind, "mode": mode,
                   **result.rows[-1]}
            rows.append(row)
            print(f"{label}: {row['throughput']:.0f} infer/s, p99 "
                  f"{row['p99_us'] / 1000:.2f} ms", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from bench.common import (
        RESULTS,
        ROOT,
        describe_machine,
        digit_pngs,
        machine,
        photo_jpegs,
        write_results,
    )
    from bench.serve_process import free_port
    from bench.serving.servers import RunningServer, ServerSpec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perf-analyzer", required=True, help="the perf_analyzer command")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--quick", action="store_true", help=f"concurrency {QUICK_CONCURRENCY}")
    parser.add_argument("--measurement-ms", type=int, default=2000)
    parser.add_argument("--stability-pct", type=int, default=25,
                        help="perf_analyzer's -s: 3 windows within this %% count as stable")
    args = parser.parse_args(argv)

    work = RESULTS / "logs" / "perf_analyzer"
    files = write_inputs(work, args.models_dir, args.model,
                         {"png": digit_pngs(16), "jpeg": photo_jpegs(8)})
    probe = digit_pngs(1)[0]
    common = ["--models-dir", str(args.models_dir), "--model", args.model, "--host", "127.0.0.1",
              "--poll-interval-s", "0", "--log-level", "WARNING"]
    grpc_port, http_port = free_port(), free_port()
    cli = [sys.executable, "-m", "service.cli"]
    specs = [
        ServerSpec("tta-serve grpc", "grpc", [*cli, "grpc", *common, "--port", str(grpc_port)],
                   {}, f"127.0.0.1:{grpc_port}", "dynamic", [], log=work / "grpc.log"),
        ServerSpec("tta-serve http", "http", [*cli, "http", *common, "--port", str(http_port)],
                   {}, f"http://127.0.0.1:{http_port}/predict", "dynamic", [],
                   log=work / "http.log"),
    ]
    concurrency = QUICK_CONCURRENCY if args.quick else CONCURRENCY
    rows, failures = [], []
    for spec in specs:
        server = RunningServer(spec, probe)
        try:
            _sweep(args, spec, files, concurrency, rows, failures)
        finally:
            server.stop()
    table = _table(rows)
    info = machine()
    path = write_results("perf_analyzer", {"machine": info, "model": args.model,
                                           "command": "bash bench/perf_analyzer.sh sweep "
                                                      + " ".join(argv or sys.argv[1:]),
                                           "rows": rows, "failures": failures})
    print(f"{describe_machine(info)}\n\n{table}\n\nwritten to {path.relative_to(ROOT)}")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
