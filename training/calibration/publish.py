"""Calibrate a published version: its graph, on its own held-out photos, into a new version (or
the same one, replaced atomically with ``in_place``). The graph file is copied unchanged (same
sha256); model.json gains the served TTA views/weights and ``calibration``, report/ gains
``calibration/``.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from service.model_repository import CARD_FILE, ModelCard, ModelRepository, ModelVersion
from service.oip.model_config import write_triton_files
from training.calibration.pipeline import calibrate_card
from training.errors import ExportError
from training.export.check_images import folder_items, recipe_valid_items
from training.export.publish import check_target, publish_staged

log = logging.getLogger(__name__)


def heldout_items(card: ModelCard, data: Path | None = None,
                  labelled_folder: Path | None = None) -> tuple[list[tuple[Path, int]], str]:
    """The run's validation split rebuilt from the recorded recipe (``data``: where the recipe's
    data folder is now; same split rule and seed), or every image of ``labelled_folder``."""
    if labelled_folder is not None:
        return folder_items(labelled_folder, list(card.classes)), str(labelled_folder)
    recipe = dict(card.recipe or {})
    if data is not None:
        recipe["data"] = {**(recipe.get("data") or {}), "path": str(data)}
    found = recipe_valid_items(recipe, list(card.classes))
    if found is None:
        where = (recipe.get("data") or {}).get("path")
        raise ExportError(f"no held-out photos for {card.name} v{card.version}: the recipe's "
                          f"data folder {where!r} is not here; pass --data DIR (where it is "
                          "now) or --heldout DIR (a labelled folder the model never trained on)")
    return found


def recipe_abstain_target(card: ModelCard) -> float | None:
    """The recipe's ``[calibrate] abstain_target_accuracy`` (0 or absent: none)."""
    value = ((card.recipe or {}).get("calibrate") or {}).get("abstain_target_accuracy")
    return float(value) if value else None


def recipe_candidates(card: ModelCard) -> list[str]:
    """The recipe's ``[calibrate] candidate_views`` (empty or absent: the standard set)."""
    return list(((card.recipe or {}).get("calibrate") or {}).get("candidate_views") or [])


def calibrate_staged(card: ModelCard, staging: Path, *, data: Path | None = None,
                     abstain_at: float | None = None) -> ModelCard:
    """``training export``'s calibration of a freshly staged graph: on ``data`` (a labelled
    folder) when given and not the recipe's own data folder, else on the run's validation
    split."""
    recipe_data = ((card.recipe or {}).get("data") or {}).get("path")
    own = data is not None and recipe_data and Path(data).resolve() == Path(recipe_data).resolve()
    items, where = heldout_items(card, labelled_folder=None if own else data)
    if abstain_at is None:
        abstain_at = recipe_abstain_target(card)
    log.info("calibrating the export on %d held-out photos (%s)", len(items), where)
    card = calibrate_card(card, staging / "model.onnx", items, source=where,
                          report_dir=staging / "report", abstain_at=abstain_at,
                          candidates=recipe_candidates(card))
    return card if data is not None and not own else with_served_tta_accuracy(card)


def recalibrate(models_dir: Path, name: str, version: int | None = None, *,
                to_version: int | None = None, in_place: bool = False, data: Path | None = None,
                heldout: Path | None = None, abstain_at: float | None = None,
                candidates: Sequence[str] = (), probs_cache: Path | None = None,
                force: bool = False) -> ModelVersion:
    """Publish ``name`` ``version`` (default: the latest) calibrated, as ``to_version`` (default:
    the next free one; ``force`` replaces it when it exists) or, with ``in_place``, as itself."""
    repo = ModelRepository(models_dir)
    source = repo.resolve(name, version)
    if in_place and to_version not in (None, source.version):
        raise ExportError("--in-place replaces the version itself; leave out --to-version")
    target = source.version if in_place else check_target(repo, name, to_version, force)
    items, where = heldout_items(source.card, data, heldout)
    log.info("calibrating %s v%d on %d held-out photos (%s)", name, source.version, len(items),
             where)
    if abstain_at is None:
        abstain_at = recipe_abstain_target(source.card)
    staging = repo.staging_dir(name)
    try:
        shutil.copytree(source.path, staging, dirs_exist_ok=True)
        (staging / CARD_FILE).unlink()
        card = dataclasses.replace(source.card, version=target,
                                   created_at=datetime.now(UTC).isoformat(timespec="seconds"))
        card = calibrate_card(card, staging / "model.onnx", items, source=where,
                              report_dir=staging / "report", abstain_at=abstain_at,
                              candidates=candidates or recipe_candidates(card),
                              probs_cache=probs_cache)
        card.calibration.evidence["calibrated_from"] = f"{name} v{source.version}"
        if heldout is None:
            card = with_served_tta_accuracy(card)
        published = publish_staged(repo, staging, card, force=in_place or force,
                                   auto_version=to_version is None and not in_place)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if published.version == repo.latest(name):  # Triton's copy of the newest version
        write_triton_files(repo.root / name, published.card)
    return published


def with_served_tta_accuracy(card: ModelCard) -> ModelCard:
    """metrics.tta_accuracy of the views now served, measured on the same validation split as
    training's (the recipe's views' figure kept as tta_accuracy_recipe_views)."""
    metrics = dict(card.metrics or {})
    metrics["tta_accuracy_recipe_views"] = metrics.get("tta_accuracy")
    metrics["tta_accuracy"] = card.calibration.evidence["accuracy"]["tta"]
    return dataclasses.replace(card, metrics=metrics)
