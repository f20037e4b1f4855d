"""Hot swap under load: good and broken versions published while clients predict."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.reliability.inputs import digit_pngs
from bench.serve_process import ServeProcess


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

    def count(self, version: int | None, error: str | None) -> None:
        """One request's outcome: the version that answered it, or why it failed."""
        self.sent += 1
        if error:
            self.failed += 1
            self.failures.append(error)
        else:
            self.versions[version] = self.versions.get(version, 0) + 1

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
                    result.count(version, error)
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
