"""Which files are images, and the images under a folder: one rule for every reader."""

from __future__ import annotations

import os
from pathlib import Path

from service.image_suffixes import IMAGE_SUFFIXES

# What service.imaging.decode_image reads (the one list the service's readers use too); other
# files in class folders (README, .DS_Store) are ignored, as fastai's get_image_files does.
IMAGE_EXTENSIONS = IMAGE_SUFFIXES


def is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def image_files(folder: Path) -> list[Path]:
    """Every image under ``folder`` (recursively, hidden folders skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / f for f in filenames if is_image(Path(f)))
    return sorted(found)


def class_folders(root: Path) -> list[Path]:
    """The visible sub-folders of ``root``, sorted: one per class."""
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
