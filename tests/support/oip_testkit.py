"""Building blocks of the Open Inference Protocol tests: a tiny model repository, images, our
real servers, and NVIDIA's tritonclient driven from a child process (triton_worker.py says why).

The servers: the real GrpcServer in this process (Classifier + KServe v2 on one port) and a real
``tta-serve http`` process (the BentoML service, which mounts the ``/v2`` routes), both over
the same repository; reference answers come from this process's core.

Torch-free: the graphs are built with onnx.helper, the way the serving image would see them.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from http_testkit import ServerProcess, cli_flags, free_port
from onnx_testkit import tiny_graph
from PIL import Image
from triton_worker import decode_array, encode_array

from service.core import CoreConfig, InferenceCore
from service.core.errors import Status
from service.grpc.server import GrpcConfig, GrpcServer
from service.imaging import EvalSpec, TTASpec
from service.model_repository import CARD_FILE, MODEL_FILE, ModelCard, sha256_file

MODEL = "digits"
CLASSES = ("zero", "one", "two", "three")
SIZE = 16  # model input side, pixels
SERVED_VERSION = 2  # the newest of the published versions 1 and 2
WORKER = Path(__file__).with_name("triton_worker.py")


def publish_versions(root: Path, versions: tuple[int, ...] = (1, SERVED_VERSION)) -> Path:
    """MODEL/VERSION folders with different weights each; returns the repository root."""
    for version in versions:
        folder = root / MODEL / str(version)
        folder.mkdir(parents=True)
        tiny_graph(folder / MODEL_FILE, len(CLASSES), size=SIZE, seed=version, scale=8.0)
        card = ModelCard(name=MODEL, version=version, classes=CLASSES,
                         eval_spec=EvalSpec(size=SIZE, resize_ratio=1.25), tta=TTASpec(),
                         sha256=sha256_file(folder / MODEL_FILE))
        (folder / CARD_FILE).write_text(json.dumps(card.to_dict()))
    return root


def make_image(seed: int, fmt: str = "PNG") -> bytes:
    """A 48x36 left-to-right gradient between two random colours: every crop differs."""
    rng = np.random.default_rng(seed)
    left, right = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, 48)[None, :, None]
    pixels = (left * (1 - t) + right * t).repeat(36, axis=0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def image_tensor(images: list[bytes]) -> np.ndarray:
    """The BYTES tensor a Triton user builds: an object array of encoded files."""
    data = np.empty(len(images), dtype=object)
    data[:] = images
    return data


class RunningServers:
    """``models_dir`` served on 127.0.0.1 by the real GrpcServer around this process's core (its
    loop on a thread) and by a real ``tta-serve http`` process with the same settings."""

    def __init__(self, models_dir: Path, workdir: Path) -> None:
        config = CoreConfig(models_dir=models_dir, default_model=MODEL, device="cpu",
                            intra_op_threads=1, decode_threads=2, poll_interval_s=0)
        # Started first: BentoML takes seconds to start, while the core loads here.
        port = free_port()
        self.http = ServerProcess(["http", "--host", "127.0.0.1", "--port", str(port),
                                   "--grace-s", "2", "--model", MODEL, *cli_flags(config)],
                                  workdir)
        self.http_address = f"127.0.0.1:{port}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="oip-servers",
                                       daemon=True)
        self.thread.start()
        self.core: InferenceCore | None = None
        self.grpc: GrpcServer | None = None
        try:
            self.core = InferenceCore.create(config).start()

            async def start_grpc() -> tuple[GrpcServer, int]:  # grpc.aio binds to this loop
                server = GrpcServer(self.core, GrpcConfig(host="127.0.0.1", port=0,
                                                          grace_s=1.0))
                return server, await server.start()

            self.grpc, grpc_port = self.run(start_grpc())
            self.grpc_address = f"127.0.0.1:{grpc_port}"
            self.http.wait_http_ready(f"http://{self.http_address}")
        except BaseException:
            self.close()
            raise

    def run(self, coroutine: Any) -> Any:
        """Await on the servers' loop (e.g. the core's own predict, for reference answers)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def close(self) -> int:
        """Stop both; the ``tta-serve http`` exit code (0 = stopped cleanly on SIGTERM)."""
        try:
            return self.http.terminate()
        finally:
            if self.grpc is not None:
                self.run(self.grpc.stop(0))
            if self.core is not None:
                self.core.stop()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


class TritonError(Exception):
    """An error the server answered; ``status`` is the protocol status name (NOT_FOUND ...)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


# tritonclient reports gRPC codes as "StatusCode.NOT_FOUND" and HTTP ones as "404".
_HTTP_STATUS_NAMES = {str(s.http_status): s.name for s in Status}


@dataclass
class InferResult:
    response: dict[str, Any]
    outputs: dict[str, np.ndarray]


class TritonClient:
    """tritonclient.grpc or .http in the worker process; arrays in and out."""

    def __init__(self, protocol: str, address: str) -> None:
        self.protocol = protocol
        self.process = subprocess.Popen([sys.executable, str(WORKER), protocol, address],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)

    def call(self, op: str, **args: Any) -> Any:
        """One client call (see the worker's op_* methods); TritonError when it fails."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the tritonclient {self.protocol} worker exited "
                               f"({self.process.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            status = answer["error"]["status"].removeprefix("StatusCode.")
            raise TritonError(_HTTP_STATUS_NAMES.get(status, status), answer["error"]["message"])
        return answer["ok"]

    def infer(self, inputs: list[tuple[str, str, np.ndarray]], *, model: str = MODEL,
              outputs: list[dict] | None = None, **kwargs: Any) -> InferResult:
        """inputs: (name, datatype, array); outputs: [{"name", "options": {"class_count": k}}]."""
        answer = self.call("infer", model=model, outputs=outputs, **kwargs, inputs=[
            {"name": name, "datatype": datatype, "data": encode_array(array)}
            for name, datatype, array in inputs])
        return InferResult(answer["response"],
                           {k: decode_array(v) for k, v in answer["outputs"].items()})

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=10)
