"""Real images for the export check, read exactly as the service reads them.

The run's own validation split (rebuilt from the recipe recorded in the checkpoint: the images
training's accuracy was measured on), or a labelled folder given with ``--data``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.imaging import (
    EvalSpec,
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    eval_view,
    to_model_input,
)
from training.data import labelled_folder, split_from_recipe
from training.errors import DataError, ExportError

log = logging.getLogger(__name__)

MAX_CHECK_IMAGES = 512  # real images used for the parity check and the variants' accuracy


@dataclass(frozen=True)
class CheckImages:
    """Real images as the service sees them: model input and class index per image."""

    pixels: np.ndarray  # float32 (N, 3, H, W) in [0, 1]
    labels: np.ndarray  # int64 (N,)
    source: str  # where they came from, for model.json



def _spread(pairs: list[tuple[Path, int]], limit: int) -> list[tuple[Path, int]]:
    """At most ``limit`` items taken round-robin over classes, so every class is represented."""
    by_class: dict[int, list[Path]] = {}
    for path, label in pairs:
        by_class.setdefault(label, []).append(path)
    chosen: list[tuple[Path, int]] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(v) for v in by_class.values()):
        chosen += [(v[depth], y) for y, v in sorted(by_class.items()) if depth < len(v)]
        depth += 1
    return chosen[:limit]


def _read_views(pairs: list[tuple[Path, int]], spec: EvalSpec, source: str,
                min_side: int | None) -> CheckImages | None:
    views, labels = [], []
    for path, label in pairs:
        try:
            views.append(eval_view(decode_image(path, min_side=min_side), spec))
        except (ImageDecodeError, ImageTooLargeError) as e:
            log.warning("skipping check image: %s", e)
            continue
        labels.append(label)
    if not views:
        return None
    return CheckImages(pixels=to_model_input(np.stack(views)),
                       labels=np.asarray(labels, dtype=np.int64), source=source)



def recipe_valid_items(recipe: dict[str, Any] | None,
                       classes: list[str]) -> tuple[list[tuple[Path, int]], str] | None:
    """The run's own validation split, rebuilt from the recorded recipe (None if unavailable)."""
    d = (recipe or {}).get("data") or {}
    if not isinstance(d, dict) or not d.get("path") or not Path(d["path"]).is_dir():
        return None
    try:
        # The split is decided before images are checked (load_items' contract), so skipping
        # the check gives the same validation set; unreadable files are skipped when decoded.
        split = split_from_recipe(d, check_images=False)
    except DataError as e:
        log.warning("could not rebuild the validation split: %s", e)
        return None
    index = {name: i for i, name in enumerate(classes)}
    pairs = [(Path(p), index[split.classes[y]])
             for p, y in zip(split.valid.paths, split.valid.labels, strict=True)
             if split.classes[y] in index]
    return pairs, f"{split.source} (validation split)"


def folder_items(data: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """``--data``: its images of the model's classes (other class folders are ignored)."""
    if not data.is_dir():
        raise ExportError(f"--data {data} is not a folder")
    items = labelled_folder(data, classes, unknown="ignore", check_images=False)
    if not items:
        shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        raise ExportError(f"--data {data}: no images in folders named after the model's "
                          f"classes ({shown})")
    return list(zip(items.paths, items.labels, strict=True))


def find_check_images(data: Path | None, recipe: dict[str, Any] | None, classes: list[str],
                      spec: EvalSpec, *, limit: int = MAX_CHECK_IMAGES,
                      min_side: int | None = None) -> CheckImages | None:
    """Real images for the check, through service.imaging exactly as the service reads them
    (``min_side``: the model's ``decode_side``, as the servers decode).

    ``data`` given: that folder (it must hold images of the model's classes), unless it is the
    recipe's own data folder. Otherwise the run's validation split, rebuilt from the recorded
    recipe when its data folder is here: the images training's accuracy was measured on.
    """
    recipe_data = ((recipe or {}).get("data") or {}).get("path")
    if data is not None and recipe_data and Path(data).resolve() == Path(recipe_data).resolve():
        data = None  # the training data itself: check on its validation split, not on all of it
    if data is not None:
        pairs, source = folder_items(Path(data), classes), str(data)
    else:
        found = recipe_valid_items(recipe, classes)
        if found is None:
            return None
        pairs, source = found
    images = _read_views(_spread(pairs, limit), spec, source, min_side)
    if images is None and data is not None:
        raise ExportError(f"--data {data}: none of the images could be decoded")
    return images
