"""A human-readable summary of a DataSplit: what `training data-summary` prints.

Like fastai's ``DataBlock.summary``: look at the data (source, classes, balance, image sizes,
what was skipped) before spending time on training.
"""

from __future__ import annotations

import numpy as np

from training.data.sources import DataSplit

MAX_PROBLEMS_SHOWN = 20


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


def format_summary(split: DataSplit) -> str:
    """Source, per-class counts per split, image sizes and problems, as plain text."""
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
    if split.problems:
        lines.append("")
        lines.append(f"problems ({len(split.problems)}):")
        lines.extend(f"  {p}" for p in split.problems[:MAX_PROBLEMS_SHOWN])
        if len(split.problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"  ... and {len(split.problems) - MAX_PROBLEMS_SHOWN} more")
    else:
        lines.append("problems: none")
    return "\n".join(lines)
