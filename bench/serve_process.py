"""Start ``tta-serve`` on free ports of 127.0.0.1 and wait until it serves: the one way the
benchmarks and the tests start a server process (``ServerProcess`` for any command line,
``ServeProcess`` for ``tta-serve KIND`` on free ports), find a port (``free_port``) and ask whether
one is ready (``grpc_serving``, ``http_ready``).

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
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 240  # BentoML on two busy cores
# What the probes run with: one ONNX Runtime thread (the box is small and shared) and a fast
# model-repository poll (hot swaps show within a second).
PROBE_TUNING = ("--intra-op-threads", "1", "--poll-interval-s", "0.5")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def grpc_serving(target: str) -> bool:
    """The gRPC health service answers SERVING."""
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
    """``GET /readyz`` answers 200."""
    import httpx

    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class ServerProcess:
    """``python -m service.cli ARGS``: its own session and BENTOML_HOME, output in a log file."""

    def __init__(self, args: Sequence[str], workdir: Path, *, env: dict[str, str] | None = None,
                 cwd: Path = ROOT, log_name: str = "server.log") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / log_name
        self.command = [sys.executable, "-m", "service.cli", *args]
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "BENTOML_DO_NOT_TRACK": "True",
                       "BENTOML_HOME": str(workdir / "bentoml"), **(env or {})}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            env=environment, cwd=cwd, start_new_session=True)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, ready: Callable[[], bool], timeout_s: float = START_TIMEOUT_S,
                   what: str = "server") -> None:
        """Poll ``ready`` until it holds; RuntimeError (with the log's end) if the process exits
        first or ``timeout_s`` passes (then it is killed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{what} exited with {self.process.returncode}:"
                                   f"\n{self.log[-4000:]}")
            if ready():
                return
            time.sleep(0.25)
        self.kill()
        raise RuntimeError(f"{what} not ready after {timeout_s} s:\n{self.log[-4000:]}")

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM and the exit code; killed, and TimeoutExpired raised, if it does not stop."""
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

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.terminate()
        finally:
            self.kill()


class ServeProcess(ServerProcess):
    """``tta-serve KIND`` (grpc, http or all) on free ports of 127.0.0.1, on the CPU."""

    def __init__(self, kind: str, models_dir: Path, workdir: Path, *,
                 flags: tuple[str, ...] = (), grace_s: float | None = 10.0,
                 tuning: tuple[str, ...] = PROBE_TUNING, env: dict[str, str] | None = None,
                 cwd: Path = ROOT, name_kind: bool = True) -> None:
        """``name_kind=False`` leaves "all" unsaid (the CLI's default command), as a checkout
        from before the sub-commands needs."""
        assert kind in ("grpc", "http", "all"), kind
        self.kind = kind
        self.models_dir = Path(models_dir)
        self.grpc_port = free_port() if kind in ("grpc", "all") else None
        self.http_port = free_port() if kind in ("http", "all") else None
        if kind == "all":
            ports = ["--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port)]
        else:
            ports = ["--port", str(self.grpc_port if kind == "grpc" else self.http_port)]
        grace = [] if grace_s is None else ["--grace-s", str(grace_s)]
        command = [kind] if name_kind or kind != "all" else []
        super().__init__([*command, "--host", "127.0.0.1", *ports, "--models-dir", str(models_dir),
                          "--device", "cpu", *tuning, *grace, *flags], workdir, env=env,
                         cwd=cwd, log_name=f"{kind}-server.log")

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def ready(self) -> bool:
        """Every front end it has is ready: gRPC health SERVING, HTTP /readyz 200."""
        return (self.grpc_port is None or grpc_serving(self.grpc_target)) and \
            (self.http_port is None or http_ready(self.http_url))

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> ServeProcess:
        self.wait_until(self.ready, timeout_s, f"{self.kind} server")
        return self

    def http_worker(self) -> psutil.Process:
        """The process that serves the HTTP routes: ``tta-serve`` itself (one process serves
        every front end over one core, ``service.process.runner``)."""
        return psutil.Process(self.process.pid)

    def serving_rss_mb(self, protocol: str) -> float:
        """RSS of the process serving ``protocol`` (the same process for both)."""
        return self.http_worker().memory_info().rss / 2**20

    def __enter__(self) -> ServeProcess:
        return self
