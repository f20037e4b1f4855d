"""The served models: loading, validation, version policy and hot reload.

``ModelRegistry`` keeps one loaded version per model (the version policy picks which: the newest
valid one, or a pinned number) and rescans the model repository every ``poll_interval_s``.
A version is served only after it passed the checks of ``service.core.loading`` (repository,
session, input/output contract, a smoke forward pass). A version that fails is refused with one
log line and the old one stays in service; it is tried again only when its files change.

Requests *lease* a version (``acquire``/``release``) for their whole life, so a swap never
pulls a model from under a request: the retired version's batcher finishes what it has and
stops when its last lease is returned.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.calibration import Calibration
from service.core.batcher import DynamicBatcher
from service.core.config import CoreConfig
from service.core.errors import DeviceUnavailable, ModelNotFound, ModelUnavailable
from service.core.loading import ModelLoadError, open_version
from service.core.runtime import ProviderInfo
from service.core.stats import CoreStats
from service.imaging import EvalSpec, TTASpec
from service.model_repository import (
    CARD_FILE,
    MODEL_FILE,
    ModelCard,
    ModelRepository,
    VariantRecord,
)

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class VersionState:
    """One version in the repository: served (READY) or not (UNAVAILABLE, and why)."""

    name: str
    version: int
    ready: bool
    reason: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """What a client may know about one served model version.

    The server's typed view (EvalSpec, TTASpec, Calibration, variant records, the folder); each
    front end flattens it for its wire, and the client reads that into its own
    ``service.client.ModelInfo`` (same name, the wire's fields: a client installs no core).
    """

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
    # model.json "variants" (kind -> what export measured); the wires send variants_to_dict()
    variants: Mapping[str, VariantRecord] = field(default_factory=dict)
    # model.json "calibration": temperatures, default TTA mode, auto threshold, abstention;
    # calibration.calibrated is False for a model exported before it (served with T = 1)
    calibration: Calibration = field(default_factory=Calibration.uncalibrated)


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
        """The served version of ``name``, leased; release() it.

        The one place that reads "unset": ``name`` None or "" is the default model, ``version``
        None or 0 the served one -- the protobuf, form and CLI defaults, which the front ends
        therefore pass on as they come.
        """
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
            path=model.path, variant=model.variant, variants=dict(card.variants),
            calibration=card.calibration,
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
        version_files, graph = open_version(self.repository, name, version, self.config,
                                            self.plan)
        batcher = DynamicBatcher(graph.run, name=f"{name}-v{version}",
                                 max_batch_size=self.config.max_batch_size,
                                 max_wait_ms=self.config.max_wait_ms,
                                 stats=self.stats, stats_key=name, stats_version=version,
                                 in_flight=self._in_flight).start()
        return LoadedModel(name=name, version=version, path=version_files.path,
                           card=version_files.card, provider=graph.provider, batcher=batcher,
                           fingerprint=fp, _session=graph.session, variant=graph.variant)
