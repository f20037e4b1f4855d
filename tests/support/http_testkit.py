"""Building blocks of the HTTP tests: free ports, CLI flags for a CoreConfig, server processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.core import CoreConfig

START_TIMEOUT_S = 180  # BentoML start-up on two busy cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_flags(config: CoreConfig, *, models_dir: bool = True) -> list[str]:
    """The ``tta-serve`` options that reproduce ``config`` (the CLI maps flags onto fields)."""
    flags = ["--device", config.device, "--intra-op-threads", str(config.intra_op_threads),
             "--decode-threads", str(config.decode_threads),
             "--max-batch-size", str(config.max_batch_size),
             "--max-wait-ms", str(config.max_wait_ms), "--max-pending", str(config.max_pending),
             "--max-image-bytes", str(config.max_image_bytes),
             "--max-pixels", str(config.max_pixels),
             "--poll-interval-s", str(config.poll_interval_s)]
    return [*flags, "--models-dir", str(config.models_dir)] if models_dir else flags


class ServerProcess:
    """A ``tta-serve`` process with its output in a log file (a pipe could fill and block it)."""

    def __init__(self, args: list[str], workdir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.log_path = workdir / "server.log"
        environment = {**os.environ, "PYTHONUNBUFFERED": "1",
                       "BENTOML_HOME": str(workdir / "bentoml"), **(env or {})}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "service.cli", *args],
                                            stdout=log, stderr=subprocess.STDOUT,
                                            env=environment, cwd=cwd)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_http_ready(self, base_url: str, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}:\n{self.log}")
            try:
                if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        pytest.fail(f"{base_url} not ready after {timeout_s} s:\n{self.log}")

    def terminate(self, timeout_s: float = 30) -> int:
        """SIGTERM and the exit code (killed, and the test failed, if it does not stop)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"server did not stop within {timeout_s} s of SIGTERM:\n{self.log}")


class HttpServer:
    def __init__(self, process: ServerProcess, base_url: str) -> None:
        self.process = process
        self.base_url = base_url
