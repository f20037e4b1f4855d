"""One model version's files -> a validated ONNX Runtime session, ready to batch.

What ``ModelRegistry`` runs before it serves a version (the registry decides *which* versions
and when; this says whether one can be served): the repository's checks (files, sha256,
model.json, class count), the ``--variant`` file if one is asked for, an ONNX Runtime session on
the planned provider, input/output names and shapes as model.json records, and a smoke forward
pass whose outputs must be finite probabilities. Any failure is a ``ModelLoadError`` naming why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.core.config import CoreConfig
from service.core.errors import DeviceUnavailable
from service.core.runtime import ProviderInfo, create_session
from service.model_repository import (
    MODEL_FILE,
    ModelCard,
    ModelRepository,
    ModelRepositoryError,
    ModelVersion,
    sha256_file,
)

log = logging.getLogger(__name__)


class ModelLoadError(Exception):
    """A version cannot be served; the message says why (internal: logged, never sent)."""


@dataclass(frozen=True)
class OpenedGraph:
    """A validated session and how to run a batch on it (``run``: (N, 3, S, S) -> (N, C))."""

    session: Any
    provider: ProviderInfo
    variant: str | None  # model.json "variants" key served instead of model.onnx
    run: Callable[[np.ndarray], np.ndarray]


def open_version(repository: ModelRepository, name: str, version: int, config: CoreConfig,
                 plan: ProviderInfo) -> tuple[ModelVersion, OpenedGraph]:
    """The version's files, validated, and its session; ModelLoadError says why it cannot serve.

    DeviceUnavailable (the planned device cannot be used at all) passes through.
    """
    try:
        resolved = repository.resolve(name, version)
    except ModelRepositoryError as e:
        raise ModelLoadError(str(e)) from e
    card = resolved.card
    if card.name != name or card.version != version:
        log.warning("%s: model.json says %s v%d; serving it as %s v%d (the folder)",
                    resolved.path, card.name, card.version, name, version)
    variant, onnx_path = _variant(config, name, version, resolved.path, card)
    try:
        session, provider = create_session(onnx_path, plan,
                                           intra_op_threads=config.intra_op_threads)
    except DeviceUnavailable:
        raise
    except Exception as e:
        raise ModelLoadError(f"onnxruntime cannot load {onnx_path}: {e}") from e
    _check_io(session, card)
    _smoke_test(session, card)
    if provider.name != plan.name:
        log.warning("%s v%d runs on %s, not %s: %s", name, version, provider.name,
                    plan.name, provider.reason)
    # A dynamically quantised graph (export --int8) scales activations by the whole batch's
    # range, so an image's answer would depend on its batch-mates: run its rows one by one.
    per_row = variant is not None and _dynamically_quantized(onnx_path)
    return resolved, OpenedGraph(session, provider, variant,
                                 _runner(session, card, per_row=per_row))


def _runner(session: Any, card: ModelCard, *,
            per_row: bool) -> Callable[[np.ndarray], np.ndarray]:
    feed_name, output_name = card.input_name, card.output_name

    def run(x: np.ndarray) -> np.ndarray:
        if per_row and len(x) > 1:
            return np.concatenate([session.run([output_name], {feed_name: x[i:i + 1]})[0]
                                   for i in range(len(x))])
        return session.run([output_name], {feed_name: x})[0]

    return run


def _variant(config: CoreConfig, name: str, version: int, folder: Path,
             card: ModelCard) -> tuple[str | None, Path]:
    """The variant to serve (``--variant``) and its file, checked against model.json.

    A variant asked for by name (NAME=KIND) that the version lacks refuses the version; one
    asked for every model (KIND) falls back to model.onnx with a warning.
    """
    kind, required = config.variant_for(name)
    if kind is None:
        return None, folder / MODEL_FILE
    recorded = card.variants.get(kind)
    if recorded is None or not recorded.file:
        have = sorted(card.variants) or "none"
        if required:
            raise ModelLoadError(f"{name} v{version} has no {kind} variant (model.json "
                                 f"variants: {have}); export one with training export "
                                 f"--{kind}, or serve it without --variant")
        log.warning("%s v%d has no %s variant (variants: %s); serving %s", name, version,
                    kind, have, MODEL_FILE)
        return None, folder / MODEL_FILE
    path = folder / recorded.file
    if not path.is_file():
        raise ModelLoadError(f"{path}: the {kind} variant model.json records is missing")
    if recorded.sha256 and sha256_file(path) != recorded.sha256:
        raise ModelLoadError(f"{path}: sha256 differs from model.json variants.{kind}.sha256;"
                             " the file was changed after export")
    log.info("%s v%d: serving the %s variant %s (accuracy %s at export)", name, version,
             kind, recorded.file, recorded.accuracy)
    return kind, path


def _check_io(session: Any, card: ModelCard) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    names_in, names_out = [i.name for i in inputs], [o.name for o in outputs]
    if card.input_name not in names_in:
        raise ModelLoadError(f"the graph's inputs are {names_in}; model.json names "
                             f"{card.input_name!r}")
    if card.output_name not in names_out:
        raise ModelLoadError(f"the graph's outputs are {names_out}; model.json names "
                             f"{card.output_name!r}")
    shape = next(i.shape for i in inputs if i.name == card.input_name)
    expected = [None, 3, card.input_size, card.input_size]
    if len(shape) != 4 or any(
        isinstance(dim, int) and want is not None and dim != want
        for dim, want in zip(shape, expected, strict=True)
    ):
        raise ModelLoadError(f"input {card.input_name!r} has shape {shape}; the contract is "
                             f"[batch, 3, {card.input_size}, {card.input_size}] (NCHW)")


def _dynamically_quantized(onnx_path: Path) -> bool:
    """Whether the graph quantises activations per call (onnxruntime's quantize_dynamic)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(node.op_type == "DynamicQuantizeLinear" for node in graph.node)


def _smoke_test(session: Any, card: ModelCard) -> None:
    """Two rows through the graph: a dynamic batch and softmax probabilities, as contracted."""
    size = card.input_size
    x = np.stack([np.zeros((3, size, size), np.float32),
                  np.linspace(0, 1, 3 * size * size, dtype=np.float32).reshape(3, size, size)])
    try:
        (out,) = session.run([card.output_name], {card.input_name: x})
    except Exception as e:
        raise ModelLoadError(f"a forward pass of 2 test images failed: {e}") from e
    n_classes = len(card.classes)
    if out.shape != (2, n_classes):
        raise ModelLoadError(f"a batch of 2 gave output shape {out.shape}, expected (2, "
                             f"{n_classes}); is the batch dimension dynamic?")
    if not np.all(np.isfinite(out)) or out.min() < -1e-4 or \
            not np.allclose(out.sum(axis=1), 1.0, atol=1e-3):
        raise ModelLoadError(f"outputs are not probabilities (row sums {out.sum(axis=1)}); the "
                             "contract puts the softmax inside the graph")
