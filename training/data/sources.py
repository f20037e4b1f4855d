"""Where the labelled images come from: an image folder (with or without train/valid) or a CSV.

Every problem a user can fix is found here, before any training starts: a missing folder, an
empty or single class, a CSV naming files that do not exist. Unreadable images are skipped (with
a warning naming the file) rather than failing an epoch hours into a run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.imaging import DEFAULT_MAX_PIXELS
from training.data.csv_source import Labelled, read_csv
from training.data.files import IMAGE_EXTENSIONS, class_folders, image_files, is_image
from training.data.regex_labels import label_by_regex
from training.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "DataSplit", "Items", "load_items", "random_split"]

VALID_FOLDER_NAMES = ("valid", "val")


@dataclass
class Items:
    """One split: image paths and their integer labels (indices into DataSplit.classes)."""

    paths: list[Path]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self, n_classes: int) -> list[int]:
        """Images per class index (0 for a class with none)."""
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=n_classes).tolist()


@dataclass
class DataSplit:
    """The labelled data, split, with what was skipped and why.

    image_sizes: upright (width, height) of every kept image (train then valid), for the
        summary; empty when images were not checked.
    """

    classes: list[str]
    train: Items
    valid: Items
    problems: list[str]
    source: str
    image_sizes: list[tuple[int, int]] = field(default_factory=list)


def sort_classes(names: Iterable[str]) -> list[str]:
    """Class names sorted by name; all-integer names ("0".."10") numerically, so index == label."""
    unique = set(names)
    if unique and all(n.isdigit() for n in unique):
        return sorted(unique, key=lambda n: (int(n), n))
    return sorted(unique)


def load_items(
    path: str | Path, *, csv: str | Path | None = None, valid_pct: float = 0.2, seed: int = 42,
    check_images: bool = True, min_classes: int = 2, label_regex: str = "",
) -> DataSplit:
    """Find the labelled images under ``path`` and split them into train and valid.

    Sources, in order of precedence:
    - ``csv`` given: rows ``path,label[,is_valid]`` (a header naming the columns; image paths
      relative to the CSV's folder or to ``path``); without an is_valid column the rows are split
      at random (``valid_pct``, ``seed``; 0 puts every image in train).
    - ``path/train`` and ``path/valid`` (or ``path/val``), one sub-folder per class (Imagenette).
    - ``label_regex`` given: every image under ``path`` (recursively), labelled by the regex's
      first group on its file name (fastai's ``RegexLabeller``), split at random.
    - ``path/<class>/...``: one tree, split at random (``valid_pct``, ``seed``), like fastai's
      ``RandomSplitter``. The split is decided on the sorted file list before images are checked,
      so a file's split does not depend on whether others are readable.

    ``min_classes``: training needs two classes; evaluating a trained model on a labelled folder
    may hold only some of its classes (even one), so evaluation passes 1.

    Raises DataError for anything that must be fixed before training.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist (or is not a folder)")
    if not 0.0 <= valid_pct < 1.0:
        raise DataError(f"valid_pct must be in [0, 1), got {valid_pct}")
    problems: list[str] = []
    if csv is not None and label_regex:
        raise DataError("give the labels one way: a CSV (data.csv) or file names "
                        "(data.label_regex), not both")
    if csv is not None:
        train, valid, source = _from_csv(root, Path(csv), valid_pct, seed)
    elif label_regex:
        train, valid = random_split(label_by_regex(root, label_regex), valid_pct, seed)
        source = f"file names by regex '{label_regex}', split {valid_pct:.0%} seed {seed}"
    else:
        train, valid, source = _from_folders(root, valid_pct, seed, problems)
    sizes: dict[Path, tuple[int, int]] = {}
    if check_images:
        sizes, bad = probe_images([p for p, _ in train] + [p for p, _ in valid])
        for p, reason in bad.items():
            logger.warning("skipping unreadable image %s: %s", p, reason)
            problems.append(f"{p}: {reason}")
        train = [(p, y) for p, y in train if p not in bad]
        valid = [(p, y) for p, y in valid if p not in bad]
    # valid_pct=0 (only meaningful for a random split) asks for everything in train, e.g. to
    # evaluate a model on a whole labelled folder.
    split = _make_split(root, train, valid, problems, source, sizes,
                        allow_empty_valid=valid_pct == 0.0, min_classes=min_classes)
    logger.info(
        "%s: %d classes, %d train / %d valid images, %d skipped",
        source, len(split.classes), len(split.train), len(split.valid), len(problems),
    )
    return split


def _make_split(root: Path, train: Labelled, valid: Labelled, problems: list[str], source: str,
                sizes: dict[Path, tuple[int, int]], *, allow_empty_valid: bool,
                min_classes: int) -> DataSplit:
    """Checked and indexed: class names become indices into the sorted class list."""
    classes = sort_classes(y for _, y in train)
    _check_split(root, classes, train, valid, allow_empty_valid=allow_empty_valid,
                 min_classes=min_classes)
    index = {c: i for i, c in enumerate(classes)}
    return DataSplit(
        classes=classes,
        train=Items([p for p, _ in train], [index[y] for _, y in train]),
        valid=Items([p for p, _ in valid], [index[y] for _, y in valid]),
        problems=problems,
        source=source,
        image_sizes=[sizes[p] for p, _ in train + valid if p in sizes],
    )


# --- folders -----------------------------------------------------------------------------------

def _from_folders(
    root: Path, valid_pct: float, seed: int, problems: list[str]
) -> tuple[Labelled, Labelled, str]:
    valid_dirs = [root / n for n in VALID_FOLDER_NAMES if (root / n).is_dir()]
    if (root / "train").is_dir() and valid_dirs:
        if len(valid_dirs) > 1:
            raise DataError(
                f"{root} has both valid/ and val/; keep one so the validation set is unambiguous"
            )
        train = _class_tree(root / "train", problems)
        valid = _class_tree(valid_dirs[0], problems)
        extra = sorted({y for _, y in valid} - {y for _, y in train})
        if extra:
            raise DataError(
                f"{valid_dirs[0]} has class folder(s) {extra} that {root / 'train'} lacks; "
                "a class needs training images"
            )
        return train, valid, f"folder with train/{valid_dirs[0].name}"
    items = _class_tree(root, problems)
    train, valid = random_split(items, valid_pct, seed)
    return train, valid, f"folder split {valid_pct:.0%} seed {seed}"


def _class_tree(root: Path, problems: list[str]) -> Labelled:
    """(path, class name) for every image under root/<class>/ (recursively), sorted."""
    class_dirs = class_folders(root)
    for stray in sorted(f for f in root.iterdir() if f.is_file() and is_image(f)):
        problems.append(f"{stray}: image outside any class folder, ignored")
    if not class_dirs:
        raise DataError(
            f"{root} has no class folders; expected one sub-folder of images per class "
            "(or train/ and valid/ folders, or --csv)"
        )
    out: Labelled = []
    for d in class_dirs:
        files = image_files(d)
        if not files:
            raise DataError(
                f"class folder {d} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "add images or remove the folder"
            )
        out.extend((f, d.name) for f in files)
    return out


def random_split(
    items: Sequence[tuple[Path, str]], valid_pct: float, seed: int
) -> tuple[Labelled, Labelled]:
    """Seeded random split, order-independent: the items are sorted first, then permuted."""
    ordered = sorted(items, key=lambda t: str(t[0]))
    perm = np.random.default_rng(seed).permutation(len(ordered))
    n_valid = int(round(valid_pct * len(ordered)))
    valid_idx = set(perm[:n_valid].tolist())
    train = [it for i, it in enumerate(ordered) if i not in valid_idx]
    valid = [it for i, it in enumerate(ordered) if i in valid_idx]
    return train, valid


# --- CSV ---------------------------------------------------------------------------------------


def _from_csv(
    root: Path, csv_path: Path, valid_pct: float, seed: int
) -> tuple[Labelled, Labelled, str]:
    rows = read_csv(root, csv_path)
    if rows.unsplit is not None:
        train, valid = random_split(rows.unsplit, valid_pct, seed)
        return train, valid, f"csv {rows.path.name} split {valid_pct:.0%} seed {seed}"
    return rows.train, rows.valid, f"csv {rows.path.name}"


# --- checks ------------------------------------------------------------------------------------


def _check_split(
    root: Path, classes: list[str], train: Labelled, valid: Labelled, *,
    allow_empty_valid: bool, min_classes: int = 2,
) -> None:
    if not train and not valid:
        raise DataError(f"no readable images found under {root}")
    if not train:
        raise DataError(f"the training split under {root} is empty")
    if not valid and not allow_empty_valid:
        raise DataError(
            f"the validation split under {root} is empty; add images to valid/ or raise valid_pct"
        )
    if len(classes) < min_classes:
        hint = (
            "; did you mean to point at the folder above it, or add a valid/ folder?"
            if classes and classes[0] in ("train", *VALID_FOLDER_NAMES)
            else ""
        )
        raise DataError(
            f"only one class ({classes[0]!r}) found under {root}; a classifier needs at "
            f"least two class folders{hint}"
        )
    unknown = sorted({y for _, y in valid} - set(classes))
    if unknown:
        raise DataError(
            f"class(es) {unknown} under {root} have validation images but no (readable) "
            "training images"
        )


def probe_images(
    paths: list[Path],
) -> tuple[dict[Path, tuple[int, int]], dict[Path, str]]:
    """Open every image cheaply (JPEGs at reduced scale): (upright sizes, unreadable -> reason)."""
    sizes: dict[Path, tuple[int, int]] = {}
    bad: dict[Path, str] = {}
    workers = min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow decodes without the GIL
        for p, result in zip(paths, pool.map(probe_image, paths, chunksize=64), strict=True):
            if isinstance(result, str):
                bad[p] = result
            else:
                sizes[p] = result
    return sizes, bad


def probe_image(path: Path) -> tuple[int, int] | str:
    """Upright (width, height) of a readable image, or why it cannot be read.

    Decodes the whole file (at 1/8 scale for JPEG) so truncated files are caught, but far faster
    than service.imaging.decode_image, which the loaders use for the real pixels.
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > DEFAULT_MAX_PIXELS:
                return f"{w}x{h} pixels is over the {DEFAULT_MAX_PIXELS:,} pixel limit"
            orientation = img.getexif().get(0x0112, 1)
            if img.format == "JPEG":
                img.draft(img.mode, (max(1, w // 8), max(1, h // 8)))
            img.load()
    except UnidentifiedImageError:
        return "not a recognised image format"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"could not be decoded ({e})"
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
