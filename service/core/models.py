"""The served models: loading, validation, version policy and hot reload.

``ModelRegistry`` keeps one loaded version per model (the version policy picks which: the newest
valid one, or a pinned number) and rescans the model repository every ``poll_interval_s``.
A version is served only after it passed, in this order: the repository's checks (files, sha256,
model.json, class count), an ONNX Runtime session on the chosen provider, input/output names and
shapes as model.json records, and a smoke forward pass whose outputs must be finite
probabilities. A version that fails is refused with one log line and the old one stays in
service; it is tried again only when its files change.

Requests *lease* a version (``acquire``/``release``) for their whole life, so a swap never
pulls a model from under a request: the retired version's batcher finishes what it has and
stops when its last lease is returned.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.core.batcher import DynamicBatcher
from service.core.config import CoreConfig
from service.core.errors import DeviceUnavailable, ModelNotFound, ModelUnavailable
from service.core.runtime import ProviderInfo, create_session
from service.core.stats import CoreStats
from service.imaging import EvalSpec, TTASpec
from service.model_repository import (
    CARD_FILE,
    MODEL_FILE,
    ModelCard,
    ModelRepository,
    ModelRepositoryError,
    sha256_file,
)

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[int, int, int], ...]


class ModelLoadError(Exception):
    """A version cannot be served; the message says why (internal: logged, never sent)."""


@dataclass(frozen=True)
class VersionState:
    """One version in the repository: served (READY) or not (UNAVAILABLE, and why)."""

    name: str
    version: int
    ready: bool
    reason: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """What a client may know about one served model version."""

    name: str
    version: int
    classes: tuple[str, ...]
    input_size: int
    eval_spec: EvalSpec
    tta: TTASpec
    metrics: dict[str, Any]
    created_at: str
    repository_versions: tuple[int, ...]
    provider: ProviderInfo
    is_default: bool
    path: Path
    variant: str | None = None  # the reduced-precision variant served (--variant), None = fp32
    variants: dict[str, Any] = field(default_factory=dict)  # model.json "variants", as measured


def fingerprint(path: Path) -> Fingerprint | None:
    """Identity of a version folder's files; changes when they are replaced or rewritten."""
    try:
        stats = [(path / f).stat() for f in (CARD_FILE, MODEL_FILE)]
    except OSError:
        return None
    return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)


@dataclass(eq=False)
class LoadedModel:
    """One model version with its session and batcher; leased by requests."""

    name: str
    version: int
    path: Path
    card: ModelCard
    provider: ProviderInfo
    batcher: DynamicBatcher
    fingerprint: Fingerprint | None
    leases: int = 0
    retired: bool = False
    _session: Any = field(default=None, repr=False)
    variant: str | None = None  # model.json "variants" key served instead of model.onnx

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    def close(self, wait: bool = False) -> None:
        self.batcher.close(wait=wait, timeout=30)


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


class ModelRegistry:
    """Loads the policy's version of each model and swaps in new ones as they are published."""

    def __init__(
        self,
        repository: ModelRepository,
        config: CoreConfig,
        plan: ProviderInfo,
        stats: CoreStats,
        in_flight: Callable[[], int],
    ) -> None:
        """``in_flight``: images on their way to a batcher (its signal to wait for company)."""
        self.repository = repository
        self.config = config
        self.plan = plan
        self.stats = stats
        self._in_flight = in_flight
        self._served: dict[str, LoadedModel] = {}
        self._refused: dict[tuple[str, int], Fingerprint | None] = {}
        self._refusals: dict[tuple[str, int], str] = {}  # why, for the repository index
        self._lock = threading.Lock()  # _served, leases, retirement
        self._reload_lock = threading.Lock()  # one scan at a time (poller or reload())
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ---- start / stop

    def start(self) -> None:
        """Load every model to serve; refuse to start when the default model cannot be served."""
        default = self.config.default_model
        names = self._names_to_serve()
        if default not in names:
            names.insert(0, default)
        for name in names:
            try:
                self._update(name, initial=True)
            except DeviceUnavailable:
                self.stop()
                raise
            except (ModelNotFound, ModelUnavailable) as e:
                if name == default:
                    self.stop()
                    raise
                log.error("not serving %s: %s", name, e)
            if name not in self._served and name == default:
                self.stop()
                raise ModelUnavailable(
                    f"the default model {default!r} could not be loaded from "
                    f"{self.repository.root}; see the errors above")
        if self.config.poll_interval_s > 0:
            self._poller = threading.Thread(target=self._poll_loop, name="model-poller",
                                            daemon=True)
            self._poller.start()

    def stop(self) -> None:
        """Stop polling and let every batcher finish its queued requests."""
        self._stop.set()
        if self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join(timeout=30)
        with self._lock:
            served, self._served = list(self._served.values()), {}
        for model in served:
            model.retired = True
            model.close(wait=True)

    # ---- leases

    def acquire(self, name: str | None = None, version: int | None = None) -> LoadedModel:
        """The served version of ``name`` (default model when None), leased; release() it."""
        name = name or self.config.default_model
        with self._lock:
            model = self._served.get(name)
            if model is not None and version not in (None, 0) and version != model.version:
                raise ModelNotFound(
                    f"model {name!r} version {version} is not served; this server serves "
                    f"{name} v{model.version} (--version-policy "
                    f"{self.config.version_policy}). Omit the version, or start a server "
                    f"with --version-policy pinned:{version}")
            if model is None:
                raise self._not_served(name)
            model.leases += 1
            return model

    def release(self, model: LoadedModel) -> None:
        with self._lock:
            model.leases -= 1
            close = model.retired and model.leases == 0
        if close:
            model.close()

    def _not_served(self, name: str) -> Exception:
        if self._stop.is_set():
            return ModelUnavailable("the inference core is stopped")
        if name in self.repository.model_names() and self._allowed(name):
            return ModelUnavailable(
                f"model {name!r} is in the repository but no version of it could be loaded; "
                "the server log says why")
        served = ", ".join(sorted(self._served)) or "none"
        return ModelNotFound(f"model {name!r} is not served (served models: {served})")

    # ---- queries

    def served(self) -> list[LoadedModel]:
        with self._lock:
            return [self._served[k] for k in sorted(self._served)]

    def info(self, model: LoadedModel) -> ModelInfo:
        card = model.card
        return ModelInfo(
            name=model.name, version=model.version, classes=card.classes,
            input_size=card.input_size, eval_spec=card.eval_spec, tta=card.tta,
            metrics=dict(card.metrics or {}), created_at=card.created_at,
            repository_versions=tuple(self.repository.versions(model.name)),
            provider=model.provider, is_default=model.name == self.config.default_model,
            path=model.path, variant=model.variant, variants=dict(card.variants or {}),
        )

    def index(self) -> list[VersionState]:
        """Every model and version in the repository, and whether (or why not) it is served."""
        with self._lock:
            served = {name: model.version for name, model in self._served.items()}
            refusals = dict(self._refusals)
        pinned = self.config.version_policy.pinned
        states = []
        for name in self.repository.model_names():
            for version in self.repository.versions(name):
                if served.get(name) == version:
                    states.append(VersionState(name, version, True))
                    continue
                if (name, version) in refusals:
                    reason = f"refused: {refusals[(name, version)]}"
                elif not self._allowed(name):
                    reason = "not among the models this server serves (--model)"
                elif pinned is not None and version != pinned:
                    reason = f"--version-policy pinned:{pinned} serves version {pinned}"
                elif name in served and version < served[name]:
                    reason = (f"version {served[name]} is served (--version-policy latest "
                              "serves the newest valid version)")
                else:
                    reason = "not loaded yet (the repository is scanned every " \
                             f"{self.config.poll_interval_s:g} s; RepositoryModelLoad scans now)"
                states.append(VersionState(name, version, False, reason))
        return states

    def load(self, name: str) -> str | None:
        """Scan one model's versions now and serve the policy's choice (what the poller does);
        returns what changed. ModelNotFound when it is not this server's to serve."""
        if name not in self.repository.model_names():
            known = ", ".join(self.repository.model_names()) or "none"
            raise ModelNotFound(f"model {name!r} is not in {self.repository.root} (models: "
                                f"{known})")
        if not self._allowed(name):
            raise ModelNotFound(f"model {name!r} is not among the models this server serves "
                                "(--model)")
        return self._update(name)

    # ---- reload

    def reload(self) -> list[str]:
        """Rescan the repository now; returns what changed ("digits v1 -> v2")."""
        changes = []
        for name in self._names_to_serve():
            try:
                change = self._update(name)
            except Exception:  # a scan must never kill the poller
                log.exception("checking model %s for new versions failed", name)
                continue
            if change:
                changes.append(change)
        return changes

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.config.poll_interval_s):
            self.reload()

    def _allowed(self, name: str) -> bool:
        return self.config.models is None or name in self.config.models \
            or name == self.config.default_model

    def _names_to_serve(self) -> list[str]:
        if self.config.models is not None:
            return list(dict.fromkeys([self.config.default_model, *self.config.models]))
        return [n for n in self.repository.model_names() if self._allowed(n)]

    def _candidates(self, name: str, initial: bool) -> list[int]:
        versions = self.repository.versions(name)
        pinned = self.config.version_policy.pinned
        if pinned is None:
            return sorted(versions, reverse=True)
        if pinned not in versions and initial:
            raise ModelNotFound(f"model {name!r} has no version {pinned} in "
                                f"{self.repository.root} (versions: {versions}); change "
                                f"--version-policy pinned:{pinned}")
        return [pinned] if pinned in versions else []

    def _update(self, name: str, initial: bool = False) -> str | None:
        """Serve the best loadable candidate of ``name``; None when nothing changed."""
        with self._reload_lock:
            if self._stop.is_set():
                return None
            current = self._served.get(name)
            candidates = self._candidates(name, initial)
            if initial and not candidates:
                known = ", ".join(self.repository.model_names()) or "none"
                raise ModelNotFound(
                    f"model {name!r} has no versions in {self.repository.root} (models: "
                    f"{known}); publish one there (training export) or pass --models-dir")
            for version in candidates:
                path = self.repository.root / name / str(version)
                fp = fingerprint(path)
                if current is not None and current.version == version and \
                        current.fingerprint == fp:
                    return None  # the best loadable version is already served
                if (name, version) in self._refused and self._refused[(name, version)] == fp:
                    continue  # refused before and unchanged since
                try:
                    loaded = self._load(name, version, fp)
                except DeviceUnavailable:
                    raise
                except ModelLoadError as e:
                    self._refused[(name, version)] = fp
                    self._refusals[(name, version)] = str(e)
                    still = f"; still serving {current.label}" if current else ""
                    log.error("refusing %s v%d: %s%s", name, version, e, still)
                    continue
                self._refused.pop((name, version), None)
                self._refusals.pop((name, version), None)
                return self._swap(loaded, current)
            return None

    def _swap(self, loaded: LoadedModel, old: LoadedModel | None) -> str | None:
        with self._lock:
            if self._stop.is_set():  # stop() ran while this version was loading
                loaded.close()
                return None
            self._served[loaded.name] = loaded
            if old is not None:
                old.retired = True
                close_now = old.leases == 0
        p = loaded.provider
        if old is None:
            log.info("serving %s on %s", loaded.label, p)
            return f"{loaded.label} loaded"
        if close_now:
            old.close()
        log.info("now serving %s on %s (was v%d; requests already running on v%d finish "
                 "on it)", loaded.label, p, old.version, old.version)
        return f"{loaded.name} v{old.version} -> v{loaded.version}"

    def _load(self, name: str, version: int, fp: Fingerprint | None) -> LoadedModel:
        try:
            resolved = self.repository.resolve(name, version)
        except ModelRepositoryError as e:
            raise ModelLoadError(str(e)) from e
        card = resolved.card
        if card.name != name or card.version != version:
            log.warning("%s: model.json says %s v%d; serving it as %s v%d (the folder)",
                        resolved.path, card.name, card.version, name, version)
        variant, onnx_path = self._variant(name, version, resolved.path, card)
        try:
            session, provider = create_session(onnx_path, self.plan,
                                               intra_op_threads=self.config.intra_op_threads)
        except DeviceUnavailable:
            raise
        except Exception as e:
            raise ModelLoadError(f"onnxruntime cannot load {onnx_path}: {e}") from e
        _check_io(session, card)
        _smoke_test(session, card)
        if provider.name != self.plan.name:
            log.warning("%s v%d runs on %s, not %s: %s", name, version, provider.name,
                        self.plan.name, provider.reason)
        feed_name, output_name = card.input_name, card.output_name
        # A dynamically quantised graph (export --int8) scales activations by the whole batch's
        # range, so an image's answer would depend on its batch-mates: run its rows one by one.
        per_row = variant is not None and _dynamically_quantized(onnx_path)

        def run(x: np.ndarray) -> np.ndarray:
            if per_row and len(x) > 1:
                return np.concatenate([session.run([output_name], {feed_name: x[i:i + 1]})[0]
                                       for i in range(len(x))])
            return session.run([output_name], {feed_name: x})[0]

        batcher = DynamicBatcher(run, name=f"{name}-v{version}",
                                 max_batch_size=self.config.max_batch_size,
                                 max_wait_ms=self.config.max_wait_ms,
                                 stats=self.stats, stats_key=name, stats_version=version,
                                 in_flight=self._in_flight).start()
        return LoadedModel(name=name, version=version, path=resolved.path, card=card,
                           provider=provider, batcher=batcher, fingerprint=fp,
                           _session=session, variant=variant)

    def _variant(self, name: str, version: int, folder: Path,
                 card: ModelCard) -> tuple[str | None, Path]:
        """The variant to serve (``--variant``) and its file, checked against model.json.

        A variant asked for by name (NAME=KIND) that the version lacks refuses the version; one
        asked for every model (KIND) falls back to model.onnx with a warning.
        """
        kind, required = self.config.variant_for(name)
        if kind is None:
            return None, folder / MODEL_FILE
        recorded = (card.variants or {}).get(kind)
        if not recorded or not recorded.get("file"):
            have = sorted(card.variants or {}) or "none"
            if required:
                raise ModelLoadError(f"{name} v{version} has no {kind} variant (model.json "
                                     f"variants: {have}); export one with training export "
                                     f"--{kind}, or serve it without --variant")
            log.warning("%s v%d has no %s variant (variants: %s); serving %s", name, version,
                        kind, have, MODEL_FILE)
            return None, folder / MODEL_FILE
        path = folder / recorded["file"]
        if not path.is_file():
            raise ModelLoadError(f"{path}: the {kind} variant model.json records is missing")
        if recorded.get("sha256") and sha256_file(path) != recorded["sha256"]:
            raise ModelLoadError(f"{path}: sha256 differs from model.json variants.{kind}.sha256;"
                                 " the file was changed after export")
        log.info("%s v%d: serving the %s variant %s (accuracy %s at export)", name, version,
                 kind, recorded["file"], recorded.get("accuracy"))
        return kind, path
