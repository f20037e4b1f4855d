"""A human-readable summary of a DataSplit: what `training data-summary` prints.

Like fastai's ``DataBlock.summary``: look at the data (source, classes, balance, image sizes,
what was skipped) before spending time on training.
"""

from __future__ import annotations

import numpy as np

from training.data.sources import DataSplit

MAX_PROBLEMS_SHOWN = 20
# Below this many training photos a class is learnt poorly even when fine-tuning a pretrained
# network (fastai's pets have ~150 per class), and its validation accuracy is mostly noise.
MIN_PER_CLASS = 10


def size_stats(sizes: list[tuple[int, int]]) -> dict[str, tuple[int, int]] | None:
    """min / median / max of widths and heights (each taken separately), or None if unknown."""
    if not sizes:
        return None
    arr = np.asarray(sizes, dtype=np.int64)
    return {
        "min": (int(arr[:, 0].min()), int(arr[:, 1].min())),
        "median": (int(np.median(arr[:, 0])), int(np.median(arr[:, 1]))),
        "max": (int(arr[:, 0].max()), int(arr[:, 1].max())),
    }


def class_warnings(split: DataSplit, min_per_class: int = MIN_PER_CLASS) -> list[str]:
    """One line per class with fewer than ``min_per_class`` training photos or no validation
    photo (its accuracy cannot be measured)."""
    n = len(split.classes)
    out = []
    for name, t, v in zip(split.classes, split.train.class_counts(n),
                          split.valid.class_counts(n), strict=True):
        if t < min_per_class:
            out.append(f"class {name!r} has only {t} training photo(s) (fewer than "
                       f"{min_per_class}): add photos, or expect it to be learnt poorly")
        if v == 0 and len(split.valid):
            out.append(f"class {name!r} has no validation photo: its accuracy is not measured")
    return out


def format_summary(split: DataSplit, min_per_class: int = MIN_PER_CLASS) -> str:
    """Source, per-class counts per split, image sizes, warnings and problems, as plain text."""
    n = len(split.classes)
    train_counts = split.train.class_counts(n)
    valid_counts = split.valid.class_counts(n)
    width = max([len("class"), *(len(c) for c in split.classes)])
    lines = [
        f"source:  {split.source}",
        f"classes: {n}",
        f"images:  {len(split.train)} train, {len(split.valid)} valid, "
        f"{len(split.problems)} skipped",
        "",
        f"{'class':<{width}}  {'train':>7}  {'valid':>7}",
    ]
    for name, t, v in zip(split.classes, train_counts, valid_counts, strict=True):
        lines.append(f"{name:<{width}}  {t:>7}  {v:>7}")
    lines.append(f"{'total':<{width}}  {len(split.train):>7}  {len(split.valid):>7}")
    lines.append("")
    stats = size_stats(split.image_sizes)
    if stats is None:
        lines.append("image sizes: not checked")
    else:
        lines.append(
            "image sizes (WxH, each side separately): "
            + ", ".join(f"{k} {w}x{h}" for k, (w, h) in stats.items())
        )
    warnings = class_warnings(split, min_per_class)
    if warnings:
        lines.append("")
        lines.append(f"warnings ({len(warnings)}):")
        lines.extend(f"  {w}" for w in warnings)
    if split.problems:
        lines.append("")
        lines.append(f"problems ({len(split.problems)}):")
        lines.extend(f"  {p}" for p in split.problems[:MAX_PROBLEMS_SHOWN])
        if len(split.problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"  ... and {len(split.problems) - MAX_PROBLEMS_SHOWN} more")
    else:
        lines.append("problems: none")
    return "\n".join(lines)
