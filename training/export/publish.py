"""Publishing a verified export: the version number, model.json, the run's report files, and
the staged folder renamed into place (``ModelRepository.publish``).

Everything is written into a hidden staging folder first, so a failure leaves no version behind.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.model_repository import (
    CARD_FILE,
    ModelCard,
    ModelRepository,
    ModelRepositoryError,
    ModelVersion,
)
from training.checkpoint import Checkpoint
from training.errors import ExportError
from training.export.parity import ParityResult

log = logging.getLogger(__name__)

REPORT_SUFFIXES = {".json", ".png", ".csv", ".txt", ".toml", ".md", ".svg"}
MAX_REPORT_FILE_BYTES = 50 * 1024 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


RUN_FOLDER_MARKERS = ("report", "metrics.json", "recipe.toml")  # what `training fit` leaves


def copy_run_report(run_dir: Path, dest: Path) -> list[str]:
    """Copy the run's report files (its report/ folder, metrics JSON, plots) into ``dest``.

    Only from a run folder as ``training fit`` writes it, so a checkpoint kept elsewhere does
    not sweep unrelated files into the published version.
    """
    if not any((run_dir / marker).exists() for marker in RUN_FOLDER_MARKERS):
        log.info("%s is not a training run folder; no report files copied", run_dir)
        return []
    copied: list[str] = []
    if (run_dir / "report").is_dir():
        shutil.copytree(run_dir / "report", dest, dirs_exist_ok=True)
        copied += [str(p.relative_to(dest)) for p in sorted(dest.rglob("*")) if p.is_file()]
    for p in sorted(run_dir.iterdir()):
        if (p.is_file() and p.suffix.lower() in REPORT_SUFFIXES
                and p.stat().st_size <= MAX_REPORT_FILE_BYTES and not (dest / p.name).exists()):
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest / p.name)
            copied.append(p.name)
    return copied


def card_metrics(ckpt: Checkpoint, parity: ParityResult, checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's metrics (plain and TTA accuracy, ...) plus what the export measured."""
    metrics: dict[str, Any] = {}
    for key, value in (ckpt.metrics or {}).items():
        if isinstance(value, torch.Tensor | np.generic | np.ndarray) and np.prod(value.shape) == 1:
            value = float(value.item())  # a 0-d tensor or numpy scalar
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            log.debug("metric %r is not JSON-serialisable; left out of model.json", key)
            continue
        metrics[key] = value
    metrics.setdefault("accuracy", None)
    metrics.setdefault("tta_accuracy", None)
    cost = training_cost(checkpoint.parent)
    if cost:
        metrics["training"] = cost
    metrics["export_check"] = {**asdict(parity), "runtime": "onnxruntime CPUExecutionProvider",
                               "checkpoint": str(checkpoint), "arch": ckpt.arch}
    return metrics


TRAINING_COST_KEYS = ("wall_seconds", "cpu_seconds", "images_per_s", "load_average", "machine")


def training_cost(run_dir: Path) -> dict[str, Any]:
    """What training cost and where it ran, from the run folder's metrics.json (written by
    ``training fit``): wall and CPU seconds, training images/s, load average, machine."""
    path = run_dir / "metrics.json"
    try:
        recorded = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        log.warning("%s is not readable JSON; model.json gets no training cost", path)
        return {}
    return {k: recorded[k] for k in TRAINING_COST_KEYS if k in recorded}


def jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))



def check_target(repo: ModelRepository, name: str, version: int | None, force: bool) -> int:
    if not _NAME_RE.match(name):
        raise ExportError(f"model name {name!r} must be letters, digits, '.', '_' or '-' and "
                          "start with a letter or digit")
    if version is None:
        return repo.next_version(name)
    if version < 1:
        raise ExportError(f"--version must be >= 1, got {version}")
    if version in repo.versions(name) and not force:
        raise ExportError(f"{repo.root / name / str(version)} already exists; pass --force to "
                          "replace it, or leave out --version to publish the next version")
    return version



def publish_staged(repo: ModelRepository, staging: Path, card: ModelCard, *, force: bool,
                   auto_version: bool, attempts: int = 5) -> ModelVersion:
    """Write model.json and rename the staging folder into place.

    An automatically chosen version taken meanwhile by a concurrent export moves on to the
    next free one; an explicitly requested version never does.
    """
    for _ in range(attempts):
        (staging / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
        try:
            return repo.publish(staging, card.name, card.version, force=force)
        except ModelRepositoryError as e:
            raise ExportError(f"the staged version did not validate: {e}") from e
        except OSError as e:
            taken = isinstance(e, FileExistsError) or e.errno in (errno.EEXIST, errno.ENOTEMPTY)
            if not taken:
                raise
            if not auto_version:
                raise ExportError(f"{repo.root / card.name / str(card.version)} was published "
                                  "by someone else meanwhile; nothing was overwritten") from e
            log.warning("version %d was taken meanwhile; trying the next one", card.version)
            card = dataclasses.replace(card, version=repo.next_version(card.name))
    raise ExportError(f"could not find a free version of {card.name} in {attempts} attempts")
