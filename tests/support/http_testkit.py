"""Building blocks of the HTTP tests: free ports, CLI flags for a CoreConfig, server processes
(started and found ports for by bench.serve_process, shared with the benchmarks)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import serve_process
from bench.serve_process import free_port
from service.core import CoreConfig
from service.process.core_options import CORE_FLAGS

__all__ = ["START_TIMEOUT_S", "HttpServer", "ServerProcess", "cli_flags", "free_port"]

START_TIMEOUT_S = 180  # BentoML start-up on two busy cores


def cli_flags(config: CoreConfig, *, models_dir: bool = True) -> list[str]:
    """The ``tta-serve`` options that reproduce ``config``: every core option (CORE_FLAGS, the
    list the CLI itself is made from) with the config's value."""
    return [arg for option in CORE_FLAGS if models_dir or option.field != "models_dir"
            for arg in (option.flag, str(getattr(config, option.field)))]


class ServerProcess(serve_process.ServerProcess):
    """A ``tta-serve`` process (bench.serve_process's, as every benchmark starts one) whose
    failures fail the test, with the server's log in the message."""

    def __init__(self, args: list[str], workdir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        super().__init__(args, workdir, env=env, cwd=cwd or serve_process.ROOT)

    def wait_http_ready(self, base_url: str, timeout_s: float = START_TIMEOUT_S) -> None:
        try:
            self.wait_until(lambda: serve_process.http_ready(base_url), timeout_s, base_url)
        except RuntimeError as e:
            pytest.fail(str(e))

    def terminate(self, timeout_s: float = 30) -> int:
        """SIGTERM and the exit code (killed, and the test failed, if it does not stop)."""
        try:
            return super().terminate(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server did not stop within {timeout_s} s of SIGTERM:\n{self.log}")


class HttpServer:
    def __init__(self, process: ServerProcess, base_url: str) -> None:
        self.process = process
        self.base_url = base_url
