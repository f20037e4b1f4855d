"""The two ways a trained model meets labelled images again: the run's own validation split,
rebuilt from its recipe, and a labelled folder of (some of) the model's classes.

Fit, evaluate and export all rebuild the split with ``split_from_recipe`` (so they measure the
same images); evaluate and export read a folder with ``labelled_folder``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from training.data.files import class_folders, image_files
from training.data.sources import VALID_FOLDER_NAMES, DataSplit, Items, load_items, probe_images
from training.errors import DataError

log = logging.getLogger(__name__)


class DataSection(Protocol):
    """What a split needs of the recipe's [data] (training.config.DataConfig has it; not
    imported: the recipe's config sits above the data package)."""

    path: str
    csv: str
    label_regex: str
    valid_pct: float
    seed: int


def split_from_recipe(data: DataSection | Mapping[str, Any], *,
                      check_images: bool = True) -> DataSplit:
    """The split the recipe's [data] section decides: a DataConfig, or the ``data`` table of a
    recipe recorded in a checkpoint (a key it lacks takes DataConfig's default)."""
    if isinstance(data, Mapping):
        if not data.get("path"):
            raise DataError("the recorded recipe names no data folder (data.path); give a "
                            "labelled folder instead (--data DIR)")
        return load_items(data["path"], csv=data.get("csv") or None,
                          valid_pct=data.get("valid_pct", 0.2), seed=data.get("seed", 42),
                          check_images=check_images, label_regex=data.get("label_regex", ""))
    return load_items(data.path, csv=data.csv or None, valid_pct=data.valid_pct, seed=data.seed,
                      check_images=check_images, label_regex=data.label_regex)


def labelled_folder(folder: str | Path, classes: list[str], *, unknown: str = "error",
                    check_images: bool = True) -> Items:
    """Every image of ``folder/<class>/`` (of ``folder/valid/<class>/`` or ``val/`` when it has
    that split), labelled with indices into the model's ``classes``.

    The folder may hold any subset of the classes, even one, and may be empty (the caller
    says why that is wrong). A class folder the model does not know is a DataError, or with
    ``unknown="ignore"`` skipped with a warning. ``check_images`` skips unreadable files
    (with a warning) instead of leaving them to the decode.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    root = next((folder / n for n in VALID_FOLDER_NAMES if (folder / n).is_dir()), folder)
    index = {name: i for i, name in enumerate(classes)}
    dirs = class_folders(root)
    strangers = [d.name for d in dirs if d.name not in index]
    if strangers and unknown == "error":
        raise DataError(f"{folder} has classes the model does not know: {strangers}; "
                        f"the model's classes are {classes}")
    pairs = [(f, index[d.name]) for d in dirs if d.name in index for f in image_files(d)]
    if strangers and pairs:
        log.warning("%s: ignoring folders of classes the model does not know: %s", root,
                    strangers)
    if check_images:
        _, bad = probe_images([p for p, _ in pairs])
        for p, reason in bad.items():
            log.warning("skipping unreadable image %s: %s", p, reason)
        pairs = [(p, y) for p, y in pairs if p not in bad]
    return Items([p for p, _ in pairs], [y for _, y in pairs])
