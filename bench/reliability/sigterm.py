"""SIGTERM under load: every request sent is counted answered, refused or lost."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field

from bench.reliability.clients import ANSWERED, LOST, REFUSED, GrpcPredictor, HttpPredictor
from bench.reliability.inputs import digit_pngs
from bench.serve_process import ServeProcess


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
