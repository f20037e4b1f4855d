"""Serving benchmark: our gRPC and HTTP servers against the raw runtime and three peers.

In one run, on one machine, with one load client (bench.loadgen), for each model:

1. raw ONNX Runtime on pre-processed float arrays, batch 1, k (TTA views), 8 and 32 -- the limit;
   with the core's session options and with ONNX Runtime's defaults, the best counted;
2. the inference core alone, in-process (decode + preprocess + dynamic batcher + infer);
3. servers under closed-loop load at concurrency 1, 8, 32: ours over gRPC and HTTP (batching on
   and off, single view and TTA), the plain grpcio, plain BentoML and KServe peers -- images/s,
   p50/p95/p99 latency and the peak RSS of the server's process tree.

    .venv/bin/python -m bench.serving --key-comparison 3   # the goals, interleaved (~12 min)
    .venv/bin/python -m bench.serving --key-comparison 1 --quick --models cifar10  # ~3 min
    .venv/bin/python -m bench.serving                      # every table (~15 minutes)
    .venv/bin/python -m bench.serving --models cifar10 --quick --photos data/cifar10/train

Models: cifar10 (the bundled default, real CIFAR-10 JPEGs; 12 MP phone JPEGs for the 12 MP
goal) and a random-weight xresnet50 at 224 px (photo-sized JPEGs). Peers beside ours: raw
ONNX Runtime (+ the decode time), the plain grpcio and plain BentoML servers (bench/peers), and
KServe's Python model server (bench/peers/kserve_model.py, in its own venv made by
bench/peers/kserve_setup.sh on first use; ``--no-kserve`` leaves it out). Ours and KServe are
also measured over the Open Inference Protocol on both wires.

Prints markdown tables and a targets table, writes bench/results/serving-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.common import (
    RESULTS,
    ROOT,
    BenchModel,
    describe_machine,
    ensure_model,
    images_for,
    latency_ms,
    machine,
    markdown_table,
    process_tree,
    timed_loop,
    tree_cpu_seconds,
    write_results,
)
from bench.loadgen import run_load

PY = sys.executable


@dataclass(frozen=True)
class Durations:
    warmup_s: float
    measure_s: float


MEASURE_OVERRIDE: dict[str, float] = {}  # set from --warmup-s / --measure-s


def durations(model: BenchModel, quick: bool) -> Durations:
    """Long enough for a steady state: the 224 px model's batches take about a second each.

    Throughput is completions per window, so when answers come back in bursts (a pass of 32
    xresnet50 images every ~1.5-2 s) its resolution is one burst per window: 32 / 6 s = 5.3
    images/s with --quick. Use --measure-s 30 or more to compare such figures within 5%."""
    if MEASURE_OVERRIDE:
        base = _default_durations(model, quick)
        return Durations(MEASURE_OVERRIDE.get("warmup_s", base.warmup_s),
                         MEASURE_OVERRIDE.get("measure_s", base.measure_s))
    return _default_durations(model, quick)


def _default_durations(model: BenchModel, quick: bool) -> Durations:
    if model.key != "xresnet50":
        return Durations(1.0, 2.5 if quick else 5.0)
    return Durations(3.0, 6.0 if quick else 12.0)


# ----------------------------------------------------------------------------- raw runtime


DEVICE: list[str] = ["cpu"]  # --device: where our servers and raw ORT run


def gpu_name() -> str:
    """nvidia-smi's name of the first GPU, or "none" (bench.common.machine says "none")."""
    import shutil

    if shutil.which("nvidia-smi") is None:
        return "none"
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    return lines[0] if out.returncode == 0 and lines else "none"


def providers() -> list:
    """Raw ORT's providers on --device: CUDA as the core configures it (runtime.py), or CPU."""
    if DEVICE[0] == "cuda":
        return [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}),
                "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def bench_raw_ort(model: BenchModel, quick: bool) -> list[dict[str, Any]]:
    """session.run on ready-made (B, 3, S, S) float32 arrays: no decode, no resize, no queue."""
    import onnxruntime as ort

    from service.core.config import default_threads
    from service.core.runtime import session_options

    rows = []
    variants = {"core options": session_options(default_threads()),
                "ORT defaults": ort.SessionOptions()}
    rng = np.random.default_rng(0)
    min_s = (0.5 if quick else 1.5) if model.key != "xresnet50" else (2.0 if quick else 4.0)
    for label, options in variants.items():
        session = ort.InferenceSession(str(model.onnx_path), options, providers=providers())
        for batch in sorted({1, model.tta_views, 8, 32}):
            x = rng.random((batch, 3, model.size, model.size), dtype=np.float32)
            cpu0 = time.process_time()
            times = timed_loop(lambda x=x, s=session: s.run(["probabilities"], {"pixels": x}),
                               min_seconds=min_s, min_iters=3, warmup=2)
            cpu_ms = (time.process_time() - cpu0) * 1000.0 / ((len(times) + 2) * batch)
            rows.append({"runtime": label, "batch": batch,
                         "throughput": batch / float(np.median(times)),
                         **latency_ms(times), "calls": len(times), "cpu_ms_per_image": cpu_ms})
    return rows


# ----------------------------------------------------------------------------- core alone


def bench_core(model: BenchModel, d: Durations, quick: bool) -> list[dict[str, Any]]:
    """InferenceCore.predict driven in-process by the load client's loop (no network)."""
    from service.core import CoreConfig, InferenceCore

    images = images_for(model.key)
    rows = []
    core = InferenceCore.create(CoreConfig(models_dir=model.models_dir, default_model=model.name,
                                           device=DEVICE[0], poll_interval_s=0)).start()
    try:
        plan = [(False, 1), (True, 1), (False, 32)] + ([] if quick else [(True, 32)])
        for tta, concurrency in plan:
            async def send(image: bytes, tta: bool = tta) -> None:
                await core.predict(image, tta=tta)

            result = asyncio.run(run_load(send, images, concurrency=concurrency,
                                          duration_s=d.measure_s, warmup_s=d.warmup_s))
            rows.append({"tta": tta, **result})
    finally:
        core.stop()
    return rows


# ----------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Wire:
    """One way into a server: what the load client speaks and where."""

    label: str  # e.g. "ours OIP gRPC"
    protocol: str  # grpc | http | oip-grpc | oip-http (bench.loadgen)
    target: str  # host:port or URL
    http_field: str = "image"
    oip_http_bytes: str = "binary"
    oip_model: str = ""


@dataclass
class ServerSpec:
    """How to start one server and what load to put on it."""

    name: str  # e.g. "ours gRPC"
    protocol: str  # grpc | http | oip-grpc | oip-http
    command: list[str]
    env: dict[str, str]
    target: str  # host:port or URL
    batching: str  # what batches requests, in words
    runs: list[tuple[bool, int]]  # (tta, concurrency)
    http_field: str = "image"
    log: Path = field(default_factory=Path)
    oip_model: str = ""
    oip_http_bytes: str = "binary"
    extra_wires: list[Wire] = field(default_factory=list)  # same process, other protocols
    cwd: Path = ROOT  # where it starts: `python -m` imports from here first

    @property
    def wires(self) -> list[Wire]:
        return [Wire(self.name, self.protocol, self.target, self.http_field,
                     self.oip_http_bytes, self.oip_model), *self.extra_wires]


def _ready(spec: ServerSpec, image: bytes) -> bool:
    """One real prediction answered: the server is up, its model loaded and warm."""
    try:
        if spec.protocol == "oip-grpc":
            import grpc

            from bench.loadgen import _oip_grpc_request
            from service._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc

            with grpc.insecure_channel(spec.target) as channel:
                oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    _oip_grpc_request(spec.oip_model, image, False), timeout=30)
            return True
        if spec.protocol == "grpc":
            import grpc

            from service._proto.tta_serve.v1 import classifier_pb2 as pb
            from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc

            with grpc.insecure_channel(spec.target) as channel:
                pb_grpc.ClassifierStub(channel).Predict(pb.PredictRequest(image=image), timeout=30)
            return True
        import httpx

        response = httpx.post(spec.target, files={spec.http_field: ("image", image)}, timeout=30)
        return response.status_code == 200
    except Exception:
        return False


class RunningServer:
    """A server subprocess (its own process group), its readiness and its peak RSS."""

    def __init__(self, spec: ServerSpec, image: bytes, timeout_s: float = 180) -> None:
        self.spec = spec
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(spec.log, "w")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(spec.command, env={**os.environ, **spec.env}, cwd=spec.cwd,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._peak = 0
        self._stop = threading.Event()
        deadline = time.monotonic() + timeout_s
        while not _ready(spec, image):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{spec.name} did not become ready; see {spec.log}")
            time.sleep(0.5)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def rss_bytes(self) -> int:
        total = 0
        for p in process_tree(self.proc.pid):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += p.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._peak = max(self._peak, self.rss_bytes())

    def reset_peak(self) -> None:
        self._peak = self.rss_bytes()

    @property
    def peak_rss_mb(self) -> float:
        return self._peak / 2**20

    def stop(self) -> None:
        self._stop.set()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group only
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def server_specs(model: BenchModel, quick: bool) -> list[ServerSpec]:
    """Ours (gRPC, HTTP; batching on and off) and the two peers, with the runs each gets."""
    logs = RESULTS / "logs"
    version_dir = str(model.models_dir / model.name / str(model.version))
    core_flags = ["--models-dir", str(model.models_dir), "--model", model.name,
                  "--device", DEVICE[0], "--poll-interval-s", "0", "--log-level", "WARNING"]
    all_c = [1, 8, 32]
    big = model.key == "xresnet50"

    def ours(protocol: str, batch: int, runs: list[tuple[bool, int]]) -> ServerSpec:
        port = free_port()
        label = "on" if batch > 1 else "off"
        grpc_wire = protocol == "grpc"
        target = f"127.0.0.1:{port}" if grpc_wire else f"http://127.0.0.1:{port}/predict"
        oip = (Wire("ours OIP gRPC", "oip-grpc", target, oip_model=model.name) if grpc_wire else
               Wire("ours OIP HTTP", "oip-http",
                    f"http://127.0.0.1:{port}/v2/models/{model.name}/infer"))
        return ServerSpec(f"ours {'gRPC' if grpc_wire else 'HTTP'} (batching {label})",
                          protocol,
                          [PY, "-m", "service.cli", protocol, *core_flags, "--host", "127.0.0.1",
                           "--port", str(port), "--max-batch-size", str(batch)], {}, target,
                          f"core, up to {batch} req/pass" if batch > 1 else "off", runs,
                          log=logs / f"ours-{protocol}-b{batch}.log", extra_wires=[oip])

    plain_grpc_port, plain_bento_port = free_port(), free_port()
    tta_runs = [(True, 1), (True, 8)] if big else [(True, c) for c in all_c]
    single = [(False, c) for c in all_c]
    specs = [
        ours("grpc", 32, single + ([] if quick else tta_runs)),
        ours("grpc", 1, [(False, 32)] if quick or big else single),
        ours("http", 32, single + ([] if quick else [(True, 1), (True, 32)])),
        ours("http", 1, [(False, 32)]) if not quick else None,
        ServerSpec("plain grpcio peer", "grpc",
                   [PY, "bench/peers/plain_grpc_server.py", "--model-dir", version_dir,
                    "--port", str(plain_grpc_port)], {}, f"127.0.0.1:{plain_grpc_port}",
                   "none (1 image per call, 10 threads)", [(False, 1), (False, 32)] if big
                   else single, log=logs / "plain-grpc.log"),
        ServerSpec("plain BentoML peer", "http",
                   [PY, "-m", "bentoml", "serve",
                    "bench.peers.plain_bentoml_service:PlainClassifier", "--host", "127.0.0.1",
                    "--port", str(plain_bento_port)],
                   {"PLAIN_BENTOML_MODEL_DIR": version_dir, "BENTOML_DO_NOT_TRACK": "True"},
                   f"http://127.0.0.1:{plain_bento_port}/predict",
                   "BentoML adaptive (max 32)", [(False, 1), (False, 32)] if big else single,
                   http_field="images", log=logs / "plain-bentoml.log"),
        kserve_spec(model, version_dir, [(False, 1), (False, 32)] if big else single, logs),
    ]
    return [s for s in specs if s is not None]


KSERVE_SETUP = ROOT / "bench" / "peers" / "kserve_setup.sh"


def kserve_python() -> str | None:
    """The KServe venv's python (made by bench/peers/kserve_setup.sh on first use), or None
    when it cannot be made here (then the KServe rows say why)."""
    out = subprocess.run(["bash", str(KSERVE_SETUP)], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"  KServe peer unavailable: {out.stderr[-500:]}", file=sys.stderr)
        return None
    return out.stdout.strip().splitlines()[-1]


def kserve_spec(model: BenchModel, version_dir: str, runs: list[tuple[bool, int]],
                logs: Path) -> ServerSpec | None:
    """KServe's Python model server with bench/peers/kserve_model.py: OIP gRPC and REST."""
    if NO_KSERVE or (python := kserve_python()) is None:
        return None
    grpc_port, http_port = free_port(), free_port()
    return ServerSpec(
        "KServe peer", "oip-grpc",
        [python, "bench/peers/kserve_model.py", "--model_dir", version_dir, "--model_name",
         model.name, "--http_port", str(http_port), "--grpc_port", str(grpc_port),
         "--enable_latency_logging", "false", "--configure_logging", "false"],
        {"PYTHONPATH": str(ROOT)}, f"127.0.0.1:{grpc_port}", "none (1 image per call)", runs,
        log=logs / "kserve.log", oip_model=model.name,
        extra_wires=[Wire("KServe peer REST", "oip-http",
                          f"http://127.0.0.1:{http_port}/v2/models/{model.name}/infer",
                          oip_http_bytes="base64")])


NO_KSERVE = False  # set by --no-kserve


PHOTOS: list[str] = []  # --photos DIR, passed on to the load client


def run_loadgen(spec: ServerSpec | Wire, model: BenchModel, tta: bool, concurrency: int,
                d: Durations, images: str | None = None) -> dict[str, Any]:
    """One closed-loop run of bench.loadgen (its own process) on one wire of a server."""
    wire = spec.wires[0] if isinstance(spec, ServerSpec) else spec
    command = [PY, "-m", "bench.loadgen", wire.protocol, wire.target,
               "--images", images or model.key, "--concurrency", str(concurrency),
               "--duration", str(d.measure_s), "--warmup", str(d.warmup_s),
               "--http-field", wire.http_field, "--oip-model", wire.oip_model or model.name,
               "--oip-http-bytes", wire.oip_http_bytes]
    if PHOTOS:
        command += ["--photos", PHOTOS[0]]
    if tta:
        command.append("--tta")
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                         timeout=d.warmup_s + d.measure_s + 120)
    if out.returncode != 0:
        raise RuntimeError(f"load client failed on {wire.label}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_servers(model: BenchModel, d: Durations, quick: bool,
                  only: set[str] | None) -> list[dict[str, Any]]:
    image = images_for(model.key, 1)[0]
    rows = []
    for spec in server_specs(model, quick):
        if only and not any(o in spec.name for o in only):
            continue
        print(f"  {spec.name} ...", file=sys.stderr, flush=True)
        try:
            server = RunningServer(spec, image)
        except RuntimeError as e:
            print(f"  skipped: {e}", file=sys.stderr)
            rows.append({"server": spec.name, "error": str(e)})
            continue
        try:
            for tta, concurrency in spec.runs:
                server.reset_peak()
                result = run_loadgen(spec, model, tta, concurrency, d)
                rows.append({"server": spec.name, "batching": spec.batching, "tta": tta,
                             **result, "peak_rss_mb": server.peak_rss_mb})
                print(f"    tta={tta} c={concurrency}: {result['throughput']:.0f} img/s, "
                      f"p99 {result['p99_ms']:.1f} ms", file=sys.stderr, flush=True)
        finally:
            server.stop()
    return rows


# ----------------------------------------------------------------------------- key comparison


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
    return Path(PHOTOS[0]) if PHOTOS else None


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


# ----------------------------------------------------------------------------- targets


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


@contextlib.contextmanager
def _stage(label: str) -> Iterator[None]:
    t0 = time.perf_counter()
    print(f"{label} ...", file=sys.stderr, flush=True)
    yield
    print(f"{label}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__,
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
    args = parser.parse_args(argv)
    global NO_KSERVE
    NO_KSERVE = args.no_kserve
    DEVICE[0] = args.device
    if args.photos:
        PHOTOS.append(str(Path(args.photos).resolve()))
    if args.warmup_s is not None:
        MEASURE_OVERRIDE["warmup_s"] = args.warmup_s
    if args.measure_s is not None:
        MEASURE_OVERRIDE["measure_s"] = args.measure_s
    results: dict[str, Any] = {"machine": {**machine(), "gpu": gpu_name()}, "quick": args.quick,
                               "command": " ".join(["python -m bench.serving", *(argv or
                                                                                 sys.argv[1:])]),
                               "models": {}}
    if args.key_comparison:
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
        return 0
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
