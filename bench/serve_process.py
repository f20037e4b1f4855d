"""Start ``tta-serve`` on free ports of 127.0.0.1 and wait until it serves: the one way the
benchmarks and the tests start a server process (``ServeProcess``), find a port (``free_port``)
and ask whether one is ready (``grpc_serving``, ``http_ready``).

Each server runs in its own session (so a kill reaches its whole tree and nothing else) with its
own BENTOML_HOME, its output in a log file (a pipe could fill and block it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 240  # BentoML on two busy cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            if (self.grpc_port is None or grpc_serving(self.grpc_target)) and \
                    (self.http_port is None or http_ready(self.http_url)):
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


def grpc_serving(target: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=2)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def http_ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
