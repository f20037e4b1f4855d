"""The servers under load: how to start each (ours, the plain grpcio, plain BentoML and KServe
peers), when one is ready, its peak RSS, and one closed-loop bench.loadgen run on a wire."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    RESULTS,
    ROOT,
    BenchModel,
    images_for,
    process_tree,
    tree_cpu_seconds,
)
from bench.serve_process import free_port
from bench.serving.settings import PY, SETTINGS, Durations


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
                  "--device", SETTINGS.device, "--poll-interval-s", "0", "--log-level", "WARNING"]
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
    if not SETTINGS.kserve or (python := kserve_python()) is None:
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



def run_loadgen(spec: ServerSpec | Wire, model: BenchModel, tta: bool, concurrency: int,
                d: Durations, images: str | None = None) -> dict[str, Any]:
    """One closed-loop run of bench.loadgen (its own process) on one wire of a server."""
    wire = spec.wires[0] if isinstance(spec, ServerSpec) else spec
    command = [PY, "-m", "bench.loadgen", wire.protocol, wire.target,
               "--images", images or model.key, "--concurrency", str(concurrency),
               "--duration", str(d.measure_s), "--warmup", str(d.warmup_s),
               "--http-field", wire.http_field, "--oip-model", wire.oip_model or model.name,
               "--oip-http-bytes", wire.oip_http_bytes]
    if SETTINGS.photos:
        command += ["--photos", SETTINGS.photos]
    if tta:
        command.append("--tta")
    elif wire.label.startswith("ours"):
        # our models are calibrated with tta=auto by default: a plain row asks for plain answers
        # (one view), the work the peers do
        command += ["--tta-mode", "off"]
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
