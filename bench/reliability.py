"""Reliability, probed from outside: the long forms of ``tests/reliability`` (which run the short
forms of the same functions in CI), printing figures.

    .venv/bin/python -m bench.reliability                 # everything, long forms
    .venv/bin/python -m bench.reliability sigterm soak    # some of it
    .venv/bin/python -m bench.reliability --quick         # the CI sizes

Every probe starts real ``tta-serve`` processes (``grpc``, ``http`` or ``all``) on 127.0.0.1
over a copy of the bundled model repository (``models/digits``) and sends real digit images:

- ``sigterm``: SIGTERM under load (16 clients), counting every request sent as answered,
  refused (gRPC UNAVAILABLE / HTTP 503 / connection refused: safe to retry) or lost (anything
  else: CANCELLED, a reset connection, a 5xx ...). The goal is 0 lost.
- ``soak``: RSS slope per 1,000 requests of each front end's serving process (least squares over
  samples taken after a warm-up). The goal is <= 0.2 MB per 1,000.
- ``bombs``: peak RSS growth of the serving process while it refuses a gzip bomb on
  ``/v2/models/digits/infer`` and a zip bomb on ``/evaluate``. The goal is <= 100 MB each.
- ``fuzz``: every route of both front ends and the Open Inference Protocol with bad inputs;
  each case names its expected status. The goal: 0 wrong statuses, 0 5xx, 0 hangs, the server
  answering a good request after each case.
- ``swap``: hot swap under load: new and broken versions published while clients predict.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_MODELS = ROOT / "models"
START_TIMEOUT_S = 240  # BentoML on two busy cores


# ----------------------------------------------------------------------------- inputs


def digit_pngs(n: int = 64) -> list[bytes]:
    """Real handwritten digits (scikit-learn's set) as PNG files, as a client would send them."""
    from bench.common import digit_pngs as pngs

    return pngs(n)


def model_repository(workdir: Path) -> Path:
    """A private copy of the bundled model repository (digits v1 only): probes may publish."""
    repo = workdir / "models"
    shutil.copytree(BUNDLED_MODELS / "digits" / "1", repo / "digits" / "1")
    return repo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- servers


class ServeProcess:
    """``tta-serve KIND`` on 127.0.0.1 (free ports, its own session and BENTOML_HOME)."""

    def __init__(self, kind: str, models_dir: Path, workdir: Path, *,
                 flags: tuple[str, ...] = (), grace_s: float = 10.0,
                 env: dict[str, str] | None = None) -> None:
        assert kind in ("grpc", "http", "all"), kind
        self.kind = kind
        self.models_dir = Path(models_dir)
        self.grpc_port = free_port() if kind in ("grpc", "all") else None
        self.http_port = free_port() if kind in ("http", "all") else None
        ports: list[str] = []
        if kind == "grpc":
            ports = ["--port", str(self.grpc_port)]
        elif kind == "http":
            ports = ["--port", str(self.http_port)]
        else:
            ports = ["--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port)]
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{kind}-server.log"
        self.command = [sys.executable, "-m", "service.cli", kind, "--host", "127.0.0.1",
                        *ports, "--models-dir", str(models_dir), "--device", "cpu",
                        "--intra-op-threads", "1", "--poll-interval-s", "0.5",
                        "--grace-s", str(grace_s), *flags]
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "BENTOML_DO_NOT_TRACK": "True",
                       "BENTOML_HOME": str(workdir / "bentoml"), **(env or {})}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            env=environment, cwd=ROOT, start_new_session=True)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> ServeProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited with {self.process.returncode}:"
                                   f"\n{self.log[-4000:]}")
            if (self.grpc_port is None or _grpc_serving(self.grpc_target)) and \
                    (self.http_port is None or _http_ready(self.http_url)):
                return self
            time.sleep(0.25)
        self.kill()
        raise RuntimeError(f"{self.kind} server not ready after {timeout_s} s:\n"
                           f"{self.log[-4000:]}")

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def http_worker(self) -> psutil.Process:
        """The process that serves the HTTP routes: ``tta-serve`` itself (one process serves
        every front end over one core, ``service.process.runner``)."""
        return psutil.Process(self.process.pid)

    def serving_rss_mb(self, protocol: str) -> float:
        """RSS of the process serving ``protocol`` (the same process for both)."""
        return self.http_worker().memory_info().rss / 2**20

    def terminate(self, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # our own session only
            self.process.wait(10)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.terminate()
        finally:
            self.kill()


def _grpc_serving(target: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=2)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _http_ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# ----------------------------------------------------------------------------- clients

ANSWERED, REFUSED, LOST = "answered", "refused", "lost"


class GrpcPredictor:
    """Predict over one channel; outcome: answered / refused (UNAVAILABLE) / lost."""

    def __init__(self, target: str) -> None:
        import grpc

        from service._proto.tta_serve.v1 import classifier_pb2 as pb
        from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc

        self._grpc, self._pb = grpc, pb
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.ClassifierStub(self.channel)

    def __call__(self, image: bytes) -> tuple[str, str]:
        grpc = self._grpc
        try:
            reply = self.stub.Predict(self._pb.PredictRequest(image=image), timeout=60)
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                return REFUSED, f"UNAVAILABLE: {e.details()}"
            return LOST, f"{code.name}: {e.details()}"
        return (ANSWERED, "") if reply.classes else (LOST, "empty reply")

    def close(self) -> None:
        self.channel.close()


class HttpPredictor:
    """POST /predict (multipart) over one keep-alive connection; outcome as GrpcPredictor's.

    Refused: the connection was refused (nothing sent), or 503. Lost: the request was sent and
    no response came (reset or closed connection), or any other status.
    """

    def __init__(self, url: str) -> None:
        import httpx

        self._httpx = httpx
        self.client = httpx.Client(base_url=url, timeout=60)

    def __call__(self, image: bytes) -> tuple[str, str]:
        httpx = self._httpx
        try:
            r = self.client.post("/predict", files={"image": ("digit.png", image, "image/png")})
        except httpx.ConnectError as e:
            return REFUSED, f"connect: {e}"
        except httpx.HTTPError as e:
            return LOST, f"{type(e).__name__}: {e}"
        if r.status_code == 200:
            return ANSWERED, ""
        if r.status_code == 503:
            return REFUSED, "503"
        return LOST, f"{r.status_code}: {r.text[:200]}"

    def close(self) -> None:
        self.client.close()


# ----------------------------------------------------------------------------- SIGTERM


@dataclass
class SigtermResult:
    kind: str
    sent: int = 0
    answered: int = 0
    refused: int = 0
    lost: int = 0
    answered_after_signal: int = 0
    exit_code: int | None = None
    stop_s: float = 0.0  # signal -> process exit
    lost_examples: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.kind:>4}: {self.sent} sent, {self.answered} answered "
                f"({self.answered_after_signal} after SIGTERM), {self.refused} refused, "
                f"{self.lost} lost; exit {self.exit_code} {self.stop_s:.2f} s after the signal")


def sigterm_under_load(server: ServeProcess, *, clients: int = 16, load_s: float = 2.0,
                       images: list[bytes] | None = None) -> SigtermResult:
    """SIGTERM a loaded, ready server; every request is counted answered, refused or lost.

    Each client sends Predict after Predict (``all``: half over gRPC, half over HTTP) and stops
    at its first refusal or once the server has exited. The signal comes ``load_s`` after the
    load started; the server is waited for (its exit code and how long it took are recorded).
    """
    images = images or digit_pngs(32)
    result = SigtermResult(server.kind)
    lock = threading.Lock()
    signalled = threading.Event()
    protocols = {"grpc": ["grpc"], "http": ["http"], "all": ["grpc", "http"]}[server.kind]
    started = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        protocol = protocols[i % len(protocols)]
        send = GrpcPredictor(server.grpc_target) if protocol == "grpc" \
            else HttpPredictor(server.http_url)
        try:
            send(images[i % len(images)])  # connect and warm up; not counted
            started.wait()
            n = 0
            while True:
                after = signalled.is_set()
                outcome, detail = send(images[(i + n) % len(images)])
                n += 1
                with lock:
                    result.sent += 1
                    setattr(result, outcome, getattr(result, outcome) + 1)
                    if outcome == ANSWERED and after:
                        result.answered_after_signal += 1
                    if outcome == LOST and len(result.lost_examples) < 10:
                        result.lost_examples.append(f"{protocol}: {detail}")
                if outcome == REFUSED or server.process.poll() is not None:
                    return
        finally:
            send.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    started.wait(120)
    time.sleep(load_s)
    t0 = time.monotonic()
    signalled.set()
    server.process.send_signal(signal.SIGTERM)
    result.exit_code = server.process.wait(120)
    result.stop_s = time.monotonic() - t0
    for t in threads:
        t.join(120)
    return result


# ----------------------------------------------------------------------------- soak


@dataclass
class SoakResult:
    protocol: str
    route: str
    requests: int
    slope_mb_per_1000: float  # least squares over the samples after the warm-up
    start_mb: float
    end_mb: float
    requests_per_s: float

    def line(self) -> str:
        return (f"{self.protocol:>4} {self.route:<9}: {self.requests} requests "
                f"({self.requests_per_s:.0f}/s), RSS {self.start_mb:.1f} -> {self.end_mb:.1f} MB, "
                f"slope {self.slope_mb_per_1000:+.3f} MB per 1,000")


def soak(server: ServeProcess, protocol: str, route: str, requests: int, *, warmup: int = 500,
         samples: int = 20, images: list[bytes] | None = None) -> SoakResult:
    """Send ``warmup`` then ``requests`` requests one after another over one connection and fit
    the serving process's RSS (sampled ``samples`` times) against the request count."""
    images = images or digit_pngs(16)
    if protocol == "grpc":
        predictor = GrpcPredictor(server.grpc_target)

        def one(i: int) -> None:
            outcome, detail = predictor(images[i % len(images)])
            assert outcome == ANSWERED, detail
    else:
        import httpx

        client = httpx.Client(base_url=server.http_url, timeout=60)

        def one(i: int) -> None:
            if route == "/livez":
                r = client.get("/livez")
            else:
                r = client.post("/predict", files={"image": ("d.png", images[i % len(images)],
                                                             "image/png")})
            assert r.status_code == 200, r.text
    try:
        for i in range(warmup):
            one(i)
        xs, ys = [0], [server.serving_rss_mb(protocol)]
        step = max(1, requests // samples)
        t0 = time.monotonic()
        for i in range(1, requests + 1):
            one(i)
            if i % step == 0:
                xs.append(i)
                ys.append(server.serving_rss_mb(protocol))
        elapsed = time.monotonic() - t0
    finally:
        (predictor if protocol == "grpc" else client).close()
    slope = float(np.polyfit(np.array(xs, float), np.array(ys, float), 1)[0]) * 1000
    return SoakResult(protocol, route, requests, slope, ys[0], ys[-1], requests / elapsed)


# ----------------------------------------------------------------------------- crafted inputs


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (8-bit gray) and whose pixels are missing."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\0\0")) + _png_chunk(b"IEND", b""))


def gif_declaring(width: int, height: int) -> bytes:
    """A GIF whose screen and one frame declare width x height."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return screen + frame + b"\x02\x02\x44\x01\x00" + b";"


def tiff_declaring(width: int, height: int) -> bytes:
    """A 1x1 TIFF (Pillow's) with its ImageWidth/ImageLength tags rewritten."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    offset = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, offset)[0]):
        entry = offset + 2 + 12 * i
        tag = struct.unpack_from("<H", data, entry)[0]
        if tag in (256, 257):  # LONG, one value
            struct.pack_into("<HHII", data, entry, tag, 4, 1, width if tag == 256 else height)
    return bytes(data)


def gzip_bomb(size: int = 1 << 30) -> bytes:
    """``size`` zero bytes, gzip-compressed (~1 MB per GiB): one 16 MiB deflate block after a
    full flush is repeated, so building it costs a crc32, not a compression of ``size`` bytes."""
    block = 16 << 20
    assert size % block == 0
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = deflate.compress(bytes(block)) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.flush()
    crc = 0
    zeros = bytes(block)
    for _ in range(size // block):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + segment * (size // block) + tail + struct.pack("<II", crc, size & 0xFFFFFFFF)


def zip_bomb(entries: int = 64, entry_size: int = 17 * 10**6) -> bytes:
    """A zip of ``entries`` CLASS/image.png entries of ``entry_size`` zero bytes each (deflated:
    ~17 KB each); the entries share one compressed stream, so it is built in a second."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = deflate.compress(bytes(entry_size)) + deflate.flush()
    crc = zlib.crc32(bytes(entry_size))
    out, central = bytearray(), bytearray()
    for i in range(entries):
        name = f"{i % 10}/zeros-{i}.png".encode()
        offset = len(out)
        fields = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0x21, crc, len(data), entry_size)
        out += b"PK\x03\x04" + fields + struct.pack("<HH", len(name), 0) + name + data
        central += (b"PK\x01\x02" + struct.pack("<H", 20) + fields
                    + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, offset) + name)
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, entries, entries, len(central),
                                         len(out), 0)
    return bytes(out + central + end)


def truncated_png(images: list[bytes]) -> bytes:
    return images[0][: len(images[0]) // 2]


def zip_of(items: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in items.items():
            zf.writestr(name, data)
    return buf.getvalue()


# ----------------------------------------------------------------------------- peak RSS


class PeakRss:
    """Samples a process's RSS every 10 ms while the block runs; ``growth_mb`` above the start."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.start_mb = self.peak_mb = process.memory_info().rss / 2**20
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            with contextlib.suppress(psutil.Error):
                self.peak_mb = max(self.peak_mb, self.process.memory_info().rss / 2**20)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.05)
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return self.peak_mb - self.start_mb


# ----------------------------------------------------------------------------- fuzz cases

OK = "OK"  # the gRPC status name of a success; HTTP cases expect an int


@dataclass
class Case:
    """One bad (or tricky) request and the status it must get; ``send`` returns (status, text):
    an HTTP status code, or a gRPC status code's name."""

    name: str
    wire: str  # http | grpc
    expected: int | str
    send: Callable[[ServeProcess], tuple[int | str, str]]
    fragment: str = ""  # the answer's message must contain it


def _http(method: str, path: str, **kwargs: Any) -> Callable[[ServeProcess], tuple[int, str]]:
    """An HTTP request; a callable ``content`` or ``files`` is built when the case is sent."""

    def send(server: ServeProcess) -> tuple[int, str]:
        import httpx

        built = {k: v() if callable(v) else v for k, v in kwargs.items()}
        r = httpx.request(method, server.http_url + path, timeout=60, **built)
        return r.status_code, r.text[:500]

    return send


def _grpc(call: Callable[[Any], Any]) -> Callable[[ServeProcess], tuple[str, str]]:
    def send(server: ServeProcess) -> tuple[str, str]:
        import grpc

        with grpc.insecure_channel(server.grpc_target, options=[
                ("grpc.max_send_message_length", 64 << 20)]) as channel:
            try:
                call(channel)
            except grpc.RpcError as e:
                return e.code().name, e.details() or ""
        return OK, ""

    return send


def _predict(**fields: Any) -> Callable[[Any], Any]:
    from service._proto.tta_serve.v1 import classifier_pb2 as pb
    from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc

    return lambda channel: pb_grpc.ClassifierStub(channel).Predict(
        pb.PredictRequest(**fields), timeout=60)


def _evaluate(items: list[tuple[bytes, str]]) -> Callable[[Any], Any]:
    from service._proto.tta_serve.v1 import classifier_pb2 as pb
    from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc

    return lambda channel: pb_grpc.ClassifierStub(channel).Evaluate(
        iter([pb.EvaluateRequest(image=i, label=label) for i, label in items]), timeout=60)


def _get_model(name: str) -> Callable[[Any], Any]:
    from service._proto.tta_serve.v1 import classifier_pb2 as pb
    from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc

    return lambda channel: pb_grpc.ClassifierStub(channel).GetModel(
        pb.GetModelRequest(name=name), timeout=60)


def _model_infer(model: str, contents: list[bytes], datatype: str = "BYTES") -> Callable:
    from service._proto.inference import grpc_predict_v2_pb2 as v2
    from service._proto.inference import grpc_predict_v2_pb2_grpc as v2_grpc

    def call(channel: Any) -> Any:
        tensor = v2.ModelInferRequest.InferInputTensor(
            name="image", datatype=datatype, shape=[len(contents)],
            contents=v2.InferTensorContents(bytes_contents=contents))
        return v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            v2.ModelInferRequest(model_name=model, inputs=[tensor]), timeout=60)

    return call


def _infer_body(image: bytes) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 infer request for one encoded image (binary tensor data extension: a BYTES
    element is its 4-byte little-endian length and the bytes), and its headers."""
    element = struct.pack("<I", len(image)) + image
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": len(element)}}]}).encode()
    return head + element, {"content-type": "application/octet-stream",
                            "Inference-Header-Content-Length": str(len(head))}


def fuzz_cases(images: list[bytes], *, max_image_bytes: int = 16 << 20,
               bombs: bool = True) -> list[Case]:
    """Every route of both front ends and the OIP with the issue's bad inputs and more."""
    good = images[0]
    png = "image/png"
    over = b"\xff" * (max_image_bytes + 1)
    declared = {"png 40000x40000": png_declaring(40000, 40000),
                "gif 65535x65535": gif_declaring(65535, 65535),
                "tiff 100000x100000": tiff_declaring(100000, 100000),
                "png 8000x8000": png_declaring(8000, 8000)}
    deep = b"[" * 100_000 + b"]" * 100_000
    json_ct = {"content-type": "application/json"}
    body, body_headers = _infer_body(good)
    bomb_body, bomb_headers = _infer_body(png_declaring(40000, 40000))
    cases = [
        # ---- HTTP /predict
        Case("predict: not an image", "http", 400,
             _http("POST", "/predict", files={"image": ("x.png", b"definitely not", png)}),
             "not a recognised image"),
        Case("predict: empty file", "http", 400,
             _http("POST", "/predict", files={"image": ("x.png", b"", png)}), "empty"),
        Case("predict: truncated PNG", "http", 400,
             _http("POST", "/predict", files={"image": ("x.png", truncated_png(images), png)})),
        Case("predict: over --max-image-bytes", "http", 413,
             _http("POST", "/predict", files={"image": ("x.png", over, png)}),
             "--max-image-bytes"),
        *[Case(f"predict: {name}", "http", 413,
               _http("POST", "/predict", files={"image": ("x", data, png)}), "--max-pixels")
          for name, data in declared.items()],
        Case("predict: multipart Content-Type, JSON body", "http", 400,
             _http("POST", "/predict", content=b'{"image_base64": "abc"}',
                   headers={"content-type": "multipart/form-data; boundary=xyz"}),
             "not valid multipart"),
        Case("predict: multipart without a boundary", "http", 400,
             _http("POST", "/predict", content=b"--xyz\r\n",
                   headers={"content-type": "multipart/form-data"}), "boundary"),
        Case("predict: image as a text value (a URL)", "http", 400,
             _http("POST", "/predict", files={"tta": (None, "false")},
                   data={"image": "http://127.0.0.1:9/x.png"}), "never fetches URLs"),
        Case("predict: image as a urlencoded URL", "http", 400,
             _http("POST", "/predict", data={"image": "https://127.0.0.1:9/x.png"}),
             "never fetches URLs"),
        Case("predict: JSON body that is a URL", "http", 400,
             _http("POST", "/predict", content=b"http://127.0.0.1:9/x.png", headers=json_ct),
             "never fetches URLs"),
        Case("predict: wrong file field (file=@x.png)", "http", 400,
             _http("POST", "/predict", files={"file": ("x.png", good, png)}), "'file'"),
        Case("predict: two images", "http", 400,
             _http("POST", "/predict", files=[("image", ("a.png", good, png)),
                                              ("image", ("b.png", good, png))]), "one file"),
        Case("predict: no image", "http", 400,
             _http("POST", "/predict", json={"tta": True}), "exactly one image"),
        Case("predict: image and image_base64", "http", 400,
             _http("POST", "/predict", files={"image": ("a.png", good, png)},
                   data={"image_base64": "aGVsbG8="}), "exactly one image"),
        Case("predict: invalid base64", "http", 400,
             _http("POST", "/predict", json={"image_base64": "%%%"}), "base64"),
        Case("predict: JSON nested 100,000 deep", "http", 400,
             _http("POST", "/predict", content=deep, headers=json_ct)),
        Case("predict: not JSON", "http", 400,
             _http("POST", "/predict", content=b"{nope", headers=json_ct)),
        Case("predict: top_k -1", "http", 400,
             _http("POST", "/predict", files={"image": ("a.png", good, png)},
                   data={"top_k": "-1"}), "top_k"),
        Case("predict: top_k text", "http", 400,
             _http("POST", "/predict", files={"image": ("a.png", good, png)},
                   data={"top_k": "abc"})),
        Case("predict: tta maybe", "http", 400,
             _http("POST", "/predict", files={"image": ("a.png", good, png)},
                   data={"tta": "maybe"})),
        Case("predict: unknown model", "http", 404,
             _http("POST", "/predict", files={"image": ("a.png", good, png)},
                   data={"model": "cats"}), "cats"),
        Case("predict: unknown version", "http", 404,
             _http("POST", "/predict", files={"image": ("a.png", good, png)},
                   data={"version": "7"}), "version 7"),
        # ---- HTTP /predict_batch
        Case("predict_batch: images as text", "http", 400,
             _http("POST", "/predict_batch", data={"images": "http://127.0.0.1:9/x.png"}),
             "never fetches URLs"),
        Case("predict_batch: empty list", "http", 400,
             _http("POST", "/predict_batch", json={"images_base64": []})),
        Case("predict_batch: one bad image among good ones", "http", 200,
             _http("POST", "/predict_batch", files=[("images", ("a.png", good, png)),
                                                    ("images", ("b.png", b"bad", png))]),
             '"status":400'),
        # ---- HTTP /evaluate
        Case("evaluate: Swagger's images=null with a zip", "http", 200,
             _http("POST", "/evaluate", data={"images": "null", "labels": "null"},
                   files={"archive": ("a.zip", zip_of({"7/a.png": good}), "application/zip")}),
             '"n":1'),
        Case("evaluate: not a zip", "http", 400,
             _http("POST", "/evaluate",
                   files={"archive": ("a.zip", b"PK nope", "application/zip")}), "not a zip"),
        Case("evaluate: an entry outside a class folder", "http", 400,
             _http("POST", "/evaluate",
                   files={"archive": ("a.zip", zip_of({"a.png": good}), "application/zip")}),
             "class folder"),
        Case("evaluate: a label the model lacks", "http", 400,
             _http("POST", "/evaluate", files={"archive": (
                 "a.zip", zip_of({"cat/a.png": good}), "application/zip")}), "'cat'"),
        Case("evaluate: labels do not match images", "http", 400,
             _http("POST", "/evaluate", files=[("images", ("a.png", good, png))],
                   data={"labels": '["1", "2"]'}), "labels"),
        Case("evaluate: images as text", "http", 400,
             _http("POST", "/evaluate", data={"images": "http://127.0.0.1:9/x.png",
                                              "labels": '["1"]'}), "never fetches URLs"),
        Case("evaluate: nothing", "http", 400, _http("POST", "/evaluate", json={}),
             "exactly one of"),
        # ---- HTTP GET routes
        Case("GET /models/cats", "http", 404, _http("GET", "/models/cats"), "cats"),
        Case("GET /models/digits?version=abc", "http", 400,
             _http("GET", "/models/digits?version=abc"), "whole number"),
        Case("GET an unknown evaluation's PNG", "http", 404,
             _http("GET", "/evaluations/nope/confusion.png")),
        # ---- OIP over HTTP
        Case("v2 infer: not JSON", "http", 400,
             _http("POST", "/v2/models/digits/infer", content=b"{nope", headers=json_ct),
             "not valid JSON"),
        Case("v2 infer: JSON nested 100,000 deep", "http", 400,
             _http("POST", "/v2/models/digits/infer", content=deep, headers=json_ct),
             "nested too deeply"),
        Case("v2 infer: inputs not a list", "http", 400,
             _http("POST", "/v2/models/digits/infer", json={"inputs": 3}), "inputs"),
        Case("v2 infer: BYTES element a number", "http", 400,
             _http("POST", "/v2/models/digits/infer", json={"inputs": [
                 {"name": "image", "datatype": "BYTES", "shape": [1], "data": [10**12]}]})),
        Case("v2 infer: bad gzip", "http", 400,
             _http("POST", "/v2/models/digits/infer", content=b"\x1f\x8bnot gzip",
                   headers={**json_ct, "content-encoding": "gzip"}), "gzip"),
        Case("v2 infer: truncated deflate", "http", 400,
             _http("POST", "/v2/models/digits/infer", content=zlib.compress(body)[:-8],
                   headers={**body_headers, "content-encoding": "deflate"}), "deflate"),
        Case("v2 infer: Content-Encoding br", "http", 400,
             _http("POST", "/v2/models/digits/infer", content=b"{}",
                   headers={**json_ct, "content-encoding": "br"}), "not supported"),
        Case("v2 infer: gzip body", "http", 200,
             _http("POST", "/v2/models/digits/infer", content=gzip.compress(body),
                   headers={**body_headers, "content-encoding": "gzip"}), "probabilities"),
        Case("v2 infer: bogus header length", "http", 400,
             _http("POST", "/v2/models/digits/infer", content=body,
                   headers={**body_headers, "Inference-Header-Content-Length": "x"})),
        Case("v2 infer: a bomb image", "http", 413,
             _http("POST", "/v2/models/digits/infer", content=bomb_body,
                   headers=bomb_headers), "--max-pixels"),
        Case("v2 infer: unknown model", "http", 404,
             _http("POST", "/v2/models/cats/infer", content=body, headers=body_headers)),
        Case("v2 metadata: unknown model", "http", 404, _http("GET", "/v2/models/cats")),
        # ---- gRPC Classifier
        Case("Predict: not an image", "grpc", "INVALID_ARGUMENT", _grpc(_predict(image=b"no")),
             "not a recognised image"),
        Case("Predict: empty", "grpc", "INVALID_ARGUMENT", _grpc(_predict(image=b""))),
        Case("Predict: over --max-image-bytes", "grpc", "RESOURCE_EXHAUSTED",
             _grpc(_predict(image=over)), "--max-image-bytes"),
        *[Case(f"Predict: {name}", "grpc", "RESOURCE_EXHAUSTED", _grpc(_predict(image=data)),
               "--max-pixels") for name, data in declared.items()],
        Case("Predict: unknown model", "grpc", "NOT_FOUND",
             _grpc(_predict(image=good, model="cats"))),
        Case("Predict: top_k -1", "grpc", "INVALID_ARGUMENT",
             _grpc(_predict(image=good, top_k=-1))),
        Case("Evaluate: nothing", "grpc", "INVALID_ARGUMENT", _grpc(_evaluate([]))),
        Case("Evaluate: a label the model lacks", "grpc", "INVALID_ARGUMENT",
             _grpc(_evaluate([(good, "cat")])), "'cat'"),
        Case("GetModel: unknown", "grpc", "NOT_FOUND", _grpc(_get_model("cats"))),
        # ---- OIP over gRPC
        Case("ModelInfer: unknown model", "grpc", "NOT_FOUND",
             _grpc(_model_infer("cats", [good]))),
        Case("ModelInfer: not an image", "grpc", "INVALID_ARGUMENT",
             _grpc(_model_infer("digits", [b"no"]))),
        Case("ModelInfer: a bomb image", "grpc", "RESOURCE_EXHAUSTED",
             _grpc(_model_infer("digits", [gif_declaring(65535, 65535)])), "--max-pixels"),
    ]
    if bombs:
        cases += [
            Case("v2 infer: gzip bomb (1 GiB of zeros)", "http", 413,
                 _http("POST", "/v2/models/digits/infer", content=gzip_bomb,
                       headers={**json_ct, "content-encoding": "gzip"}), "decompressed"),
            Case("v2 infer: body over the limit", "http", 413,
                 _http("POST", "/v2/models/digits/infer", content=lambda: bytes((64 << 20) + 1),
                       headers=json_ct), "larger than"),
            Case("evaluate: zip bomb (64 entries x 17 MB of zeros)", "http", 413,
                 _http("POST", "/evaluate", files=lambda: {"archive": (
                     "a.zip", zip_bomb(), "application/zip")}), "--max-image-bytes"),
            Case("evaluate: zip bomb (64 entries x 15 MB of zeros)", "http", 413,
                 _http("POST", "/evaluate", files=lambda: {"archive": (
                     "a.zip", zip_bomb(entry_size=15 * 10**6), "application/zip")}),
                 "not a zip of image files"),
        ]
    return cases


def mutation_cases(images: list[bytes], n: int, seed: int = 0) -> list[Case]:
    """``n`` randomly damaged images (bit flips, truncation, spliced bytes), seeded, on both
    wires: each must be answered 200/400/413 (OK/INVALID_ARGUMENT/RESOURCE_EXHAUSTED)."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        data = bytearray(images[i % len(images)])
        for _ in range(int(rng.integers(1, 8))):
            kind = int(rng.integers(0, 3))
            at = int(rng.integers(0, len(data)))
            if kind == 0:
                data[at] ^= 1 << int(rng.integers(0, 8))
            elif kind == 1:
                del data[at:]
            else:
                spliced = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8)
                data[at:at] = spliced.tobytes()
            if not data:
                data = bytearray(b"\x89")
        blob = bytes(data)
        wire = "http" if i % 2 == 0 else "grpc"
        send = _http("POST", "/predict", files={"image": ("x.png", blob, "image/png")}) \
            if wire == "http" else _grpc(_predict(image=blob))
        cases.append(Case(f"mutated image {i}", wire, "any", send))
    return cases


ALLOWED = {"http": {200, 400, 413}, "grpc": {OK, "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}}


@dataclass
class FuzzOutcome:
    case: str
    expected: int | str
    got: int | str
    ok: bool
    seconds: float
    text: str


def run_case(server: ServeProcess, case: Case, *, timeout_s: float = 60) -> FuzzOutcome:
    """Send one case (a hang past ``timeout_s`` counts as wrong) and check the answer."""
    t0 = time.monotonic()
    try:
        got, text = case.send(server)
    except Exception as e:  # a transport failure: the server dropped or hung the request
        got, text = type(e).__name__, str(e)[:300]
    seconds = time.monotonic() - t0
    if case.expected == "any":
        ok = got in ALLOWED[case.wire]
    else:
        ok = got == case.expected and case.fragment in text
    return FuzzOutcome(case.name, case.expected, got, ok and seconds < timeout_s, seconds, text)


def still_serving(server: ServeProcess, image: bytes, wire: str | None = None) -> bool:
    """A good request is answered on ``wire`` (default: every wire the server has)."""
    ok = True
    if server.grpc_port is not None and wire in (None, "grpc"):
        predictor = GrpcPredictor(server.grpc_target)
        ok = predictor(image)[0] == ANSWERED
        predictor.close()
    if server.http_port is not None and wire in (None, "http"):
        predictor = HttpPredictor(server.http_url)
        ok = ok and predictor(image)[0] == ANSWERED
        predictor.close()
    return ok


# ----------------------------------------------------------------------------- hot swap


def publish_copy(models_dir: Path, version: int, *, broken: bool = False) -> None:
    """Publish digits VERSION: a copy of v1 (as export publishes), or (``broken``) one whose
    model.onnx is garbage, renamed into place as a careless copy would (publish would refuse
    it): the server must refuse it and keep serving."""
    import hashlib

    from service.model_repository import ModelRepository

    repository = ModelRepository(models_dir)
    staging = repository.staging_dir("digits")
    shutil.rmtree(staging)
    shutil.copytree(models_dir / "digits" / "1", staging)
    card = json.loads((staging / "model.json").read_text())
    card["version"] = version
    if broken:
        (staging / "model.onnx").write_bytes(b"this is not an ONNX model")
        card["onnx"]["sha256"] = hashlib.sha256(b"this is not an ONNX model").hexdigest()
    (staging / "model.json").write_text(json.dumps(card, indent=2))
    if broken:
        os.rename(staging, models_dir / "digits" / str(version))
    else:
        repository.publish(staging, "digits", version)


@dataclass
class SwapResult:
    sent: int = 0
    failed: int = 0
    versions: dict[int, int] = field(default_factory=dict)  # model_version -> answers
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"hot swap: {self.sent} requests, {self.failed} failed; answers by version "
                f"{dict(sorted(self.versions.items()))}")


def hot_swap_under_load(server: ServeProcess, models_dir: Path, *, clients: int = 8,
                        phase_s: float = 2.0, images: list[bytes] | None = None) -> SwapResult:
    """Clients predict (both wires when the server has both) while v2 (good) and then v3
    (broken) are published; every request must succeed, and v2 must take over."""
    import httpx

    from service._proto.tta_serve.v1 import classifier_pb2 as pb
    from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc

    images = images or digit_pngs(32)
    result = SwapResult()
    lock = threading.Lock()
    stop = threading.Event()
    wires = [w for w, port in (("grpc", server.grpc_port), ("http", server.http_port)) if port]

    def client(i: int) -> None:
        import grpc

        wire = wires[i % len(wires)]
        channel = grpc.insecure_channel(server.grpc_target) if wire == "grpc" else None
        http = httpx.Client(base_url=server.http_url, timeout=60) if wire == "http" else None
        n = 0
        try:
            while not stop.is_set():
                image = images[(i + n) % len(images)]
                n += 1
                try:
                    if channel is not None:
                        version = pb_grpc.ClassifierStub(channel).Predict(
                            pb.PredictRequest(image=image), timeout=60).model_version
                    else:
                        r = http.post("/predict", files={"image": ("d.png", image, "image/png")})
                        r.raise_for_status()
                        version = r.json()["model_version"]
                    error = None
                except Exception as e:
                    version, error = None, f"{wire}: {type(e).__name__}: {e}"[:300]
                with lock:
                    result.sent += 1
                    if error:
                        result.failed += 1
                        result.failures.append(error)
                    else:
                        result.versions[version] = result.versions.get(version, 0) + 1
        finally:
            if channel is not None:
                channel.close()
            if http is not None:
                http.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(phase_s)
    publish_copy(models_dir, 2)
    time.sleep(phase_s * 2)
    publish_copy(models_dir, 3, broken=True)
    time.sleep(phase_s * 2)
    stop.set()
    for t in threads:
        t.join(120)
    return result


# ----------------------------------------------------------------------------- kill -9


SMALL_FIT = ("stages.0.epochs=2", "stages.1.epochs=1", "stages.0.size=12", "stages.1.size=16",
             "data.presize=20")


def _fit_command(data: Path, output: Path, *extra: str) -> list[str]:
    sets = [arg for override in SMALL_FIT for arg in ("--set", override)]
    return [str(Path(sys.executable).with_name("training")), "fit", "--config",
            str(ROOT / "recipes" / "digits.toml"), "--data", str(data), "--output", str(output),
            "--device", "cpu", "--no-tta", *sets, *extra]


@dataclass
class KillResult:
    killed_after_s: float
    identical: bool
    differing: list[str]

    def line(self) -> str:
        return (f"kill -9 {self.killed_after_s:.1f} s into training, then --resume: final "
                f"weights {'bit-identical to' if self.identical else 'DIFFER from'} an "
                f"uninterrupted run" + (f" ({self.differing[:3]})" if self.differing else ""))


def kill9_then_resume(workdir: Path, *, delay_s: float = 0.0) -> KillResult:
    """``training fit`` SIGKILLed ``delay_s`` after its first checkpoint appears, resumed with
    ``--resume``; its last.pt against an uninterrupted run's (same recipe and data)."""
    import torch

    from training.data.digits import make_digits

    data = make_digits(workdir / "digits")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    def run(output: Path, *extra: str) -> None:
        subprocess.run(_fit_command(data, output, *extra), check=True, cwd=ROOT, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)

    run(workdir / "straight")
    interrupted = workdir / "interrupted"
    t0 = time.monotonic()
    process = subprocess.Popen(_fit_command(data, interrupted), cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (interrupted / "last.pt").exists():
        if process.poll() is not None:
            raise RuntimeError(f"training ended ({process.returncode}) before a checkpoint")
        time.sleep(0.02)
    time.sleep(delay_s)
    process.kill()
    process.wait()
    killed_after = time.monotonic() - t0
    run(interrupted, "--resume")
    a = torch.load(workdir / "straight" / "last.pt", map_location="cpu", weights_only=False)
    b = torch.load(interrupted / "last.pt", map_location="cpu", weights_only=False)
    differing = [k for k, v in a["model"].items() if not torch.equal(v, b["model"][k])]
    return KillResult(killed_after, not differing, differing)


# ----------------------------------------------------------------------------- the CLI


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
