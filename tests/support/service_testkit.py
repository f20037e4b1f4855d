"""Building blocks of the service tests: a real digits model, its images, and real servers.

The model: a tiny conv net trained in ~2 s on scikit-learn's bundled handwritten digits (the
same 8-bit grayscale PNGs ``training make-digits`` writes), through exactly the serving path
(``service.imaging`` eval view and TTA views at EvalSpec(size=16)), exported with
torch.onnx.export (input ``pixels`` [0, 1] NCHW with a dynamic batch, normalisation and softmax
inside the graph, output ``probabilities``) and published through ``ModelRepository`` with a
model.json whose metrics were measured offline with ONNX Runtime on the validation split.

The real bundled model (models/digits/1, trained by ``training``) is used where the tests can
reproduce its validation split (test_real_model.py); everything else uses this fixture model, so
the suite does not depend on what the bundled model happens to be.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import warnings
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import onnxruntime as ort
from PIL import Image

from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc
from service.core import CoreConfig, InferenceCore
from service.grpc.server import GrpcConfig, GrpcServer
from service.imaging import (
    EvalSpec,
    TTASpec,
    combine_tta,
    decode_image,
    eval_view,
    to_model_input,
    tta_views,
)
from service.model_repository import ModelCard, ModelRepository, sha256_file
from service.security.config import NO_SECURITY, Security

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_MODEL_DIR = REPO_ROOT / "models" / "digits" / "1"

EVAL_SPEC = EvalSpec(size=16)
TTA_SPEC = TTASpec()  # centre + zoomed centre + 4 corners, beta 0.25 (as recipes/digits.toml)
CLASSES = tuple(str(i) for i in range(10))
T = TypeVar("T")


@dataclass(frozen=True)
class Digits:
    """All 1,797 digits as PNG bytes, labels as class names, a seeded 80/20 split."""

    pngs: list[bytes]
    labels: list[str]
    train: np.ndarray
    valid: np.ndarray


@dataclass(frozen=True)
class FixtureModel:
    """The published fixture model and what ONNX Runtime said about its validation set offline."""

    repo_root: Path  # a model repository holding digits/1 (treat as read-only; copy it)
    card: ModelCard
    onnx_path: Path
    logits_onnx: bytes  # the same net without its softmax: a "broken" version to publish
    valid: list[tuple[bytes, str]]
    valid_pred: np.ndarray  # offline argmax, plain eval view
    valid_pred_tta: np.ndarray  # offline argmax, TTA
    valid_probs: np.ndarray  # offline probabilities, plain eval view
    samples: list[tuple[bytes, str]]  # one per class, right with and without TTA, confidently


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()



def _views(pngs: list[bytes]) -> np.ndarray:
    """(N, V, H, W, 3) uint8 TTA views, exactly as the service makes them."""
    return np.stack([tta_views(decode_image(b), EVAL_SPEC, TTA_SPEC) for b in pngs])


def _train_and_export(digits: Digits, out: Path) -> tuple[Path, bytes]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny net: more threads only contend (10x slower on 2 busy cores)
    try:
        views = _views([digits.pngs[i] for i in digits.train])
        size = EVAL_SPEC.size
        x = torch.from_numpy(to_model_input(views.reshape(-1, size, size, 3)))
        y = torch.tensor([int(digits.labels[i]) for i in digits.train]).repeat_interleave(
            views.shape[1])
        mean = x.mean(dim=(0, 2, 3)).view(1, 3, 1, 1)
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, 3, 1, 1)
        body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(16 * (size // 4) ** 2, len(CLASSES)),
        )
        optimizer = torch.optim.Adam(body.parameters(), lr=3e-3)
        for _ in range(6):
            for idx in torch.randperm(len(x)).split(256):
                loss = nn.functional.cross_entropy(body((x[idx] - mean) / std), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        body.eval()

        class Exported(nn.Module):
            def __init__(self, softmax: bool) -> None:
                super().__init__()
                self.body, self.softmax = body, softmax
                self.register_buffer("mean", mean)
                self.register_buffer("std", std)

            def forward(self, pixels: torch.Tensor) -> torch.Tensor:
                logits = self.body((pixels - self.mean) / self.std)
                return logits.softmax(dim=-1) if self.softmax else logits

        paths = []
        for softmax in (True, False):
            path = out / ("model.onnx" if softmax else "logits.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    Exported(softmax), torch.zeros(2, 3, size, size), str(path),
                    input_names=["pixels"], output_names=["probabilities"],
                    dynamic_axes={"pixels": {0: "batch"}, "probabilities": {0: "batch"}},
                    opset_version=17, dynamo=False)
            paths.append(path)
        return paths[0], paths[1].read_bytes()
    finally:
        torch.set_num_threads(threads)


def offline_probs(onnx_path: Path, pngs: list[bytes], *, tta: bool) -> np.ndarray:
    """What the model says without any server: imaging + a plain ONNX Runtime session."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    if tta:
        views = _views(pngs)
        n, v = views.shape[:2]
        flat = to_model_input(views.reshape(n * v, *views.shape[2:]))
        out = session.run(["probabilities"], {"pixels": flat})[0]
        return combine_tta(out.reshape(n, v, -1), TTA_SPEC)
    x = to_model_input(np.stack([eval_view(decode_image(b), EVAL_SPEC) for b in pngs]))
    return session.run(["probabilities"], {"pixels": x})[0]


def write_card(folder: Path, *, name: str = "digits", version: int, metrics: dict,
               onnx_file: Path | None = None) -> ModelCard:
    onnx_file = onnx_file or folder / "model.onnx"
    card = ModelCard(name=name, version=version, classes=CLASSES, eval_spec=EVAL_SPEC,
                     tta=TTA_SPEC, sha256=sha256_file(onnx_file), metrics=metrics,
                     created_at="2026-01-01T00:00:00Z")
    (folder / "model.json").write_text(json.dumps(card.to_dict(), indent=2))
    return card


def publish(repo_root: Path, onnx: bytes, *, version: int, metrics: dict | None = None,
            name: str = "digits") -> None:
    """Publish a model.onnx as NAME/VERSION the way export does (staging dir + atomic rename)."""
    repository = ModelRepository(repo_root)
    staging = repository.staging_dir(name)
    (staging / "model.onnx").write_bytes(onnx)
    write_card(staging, name=name, version=version, metrics=metrics or {})
    repository.publish(staging, name, version)



def core_config(models_dir: Path, **overrides: object) -> CoreConfig:
    """Test defaults: small limits so the limit errors are cheap to provoke, no polling."""
    settings: dict = dict(models_dir=models_dir, device="cpu", intra_op_threads=1,
                          decode_threads=2, max_batch_size=16, max_wait_ms=5.0,
                          max_pending=128, max_image_bytes=256 * 1024, max_pixels=1_000_000,
                          poll_interval_s=0)
    settings.update(overrides)
    return CoreConfig(**settings)


class RunningServer:
    """A real GrpcServer on 127.0.0.1:<free port>, its loop on a thread, and a real stub."""

    def __init__(self, config: CoreConfig, grpc_config: GrpcConfig | None = None,
                 security: Security = NO_SECURITY) -> None:
        self.core = InferenceCore.create(config).start()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        grpc_config = grpc_config or GrpcConfig(host="127.0.0.1", port=0)

        async def start() -> tuple[GrpcServer, int]:
            server = GrpcServer(self.core, grpc_config, security)
            return server, await server.start()

        self.server, self.port = self.run(start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")  # plaintext servers
        self.stub = pb_grpc.ClassifierStub(self.channel)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.channel.close()
        try:
            self.run(self.server.stop(0))
        finally:
            self.core.stop()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def load_digits_pngs() -> Digits:
    """scikit-learn's digits as PNGs (as `training make-digits` writes them), split 80/20."""
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = np.clip(np.rint(data.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(pixels))
    n_valid = len(pixels) // 5
    return Digits(pngs=[png_bytes(p) for p in pixels], labels=[str(t) for t in data.target],
                  train=order[n_valid:], valid=order[:n_valid])


def build_fixture_model(digits: Digits, work: Path) -> FixtureModel:
    """Train, export and publish the fixture model under ``work``; measure it offline."""
    onnx_path, logits = _train_and_export(digits, work)
    valid_pngs = [digits.pngs[i] for i in digits.valid]
    valid_labels = np.array([int(digits.labels[i]) for i in digits.valid])
    probs = offline_probs(onnx_path, valid_pngs, tta=False)
    probs_tta = offline_probs(onnx_path, valid_pngs, tta=True)
    pred, pred_tta = probs.argmax(1), probs_tta.argmax(1)
    metrics = {"accuracy": float((pred == valid_labels).mean()),
               "tta_accuracy": float((pred_tta == valid_labels).mean()),
               "n_valid": len(valid_pngs)}
    assert metrics["accuracy"] > 0.9, f"fixture model trained badly: {metrics}"

    repo_root = work / "models"
    publish(repo_root, onnx_path.read_bytes(), version=1, metrics=metrics)
    published = ModelRepository(repo_root).resolve("digits", 1)

    samples: dict[str, tuple[bytes, str]] = {}
    for j, label in enumerate(valid_labels):
        confident = probs[j].max() > 0.8 and probs_tta[j].max() > 0.8
        if confident and pred[j] == label == pred_tta[j] and str(label) not in samples:
            samples[str(label)] = (valid_pngs[j], str(label))
    assert len(samples) == len(CLASSES)
    return FixtureModel(
        repo_root=repo_root, card=published.card, onnx_path=published.onnx_path,
        logits_onnx=logits,
        valid=[(b, str(y)) for b, y in zip(valid_pngs, valid_labels, strict=True)],
        valid_pred=pred, valid_pred_tta=pred_tta, valid_probs=probs,
        samples=[samples[c] for c in CLASSES],
    )
