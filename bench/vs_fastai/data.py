"""The same photos and split for both libraries, the normalisation statistics, the phone photos."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from bench.vs_fastai import CACHE, ROOT, say


def list_class_files(root: Path) -> dict[str, list[Path]]:
    exts = {".jpg", ".jpeg", ".png"}
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in exts)
        if files:
            out[d.name] = files
    if len(out) < 2:
        raise SystemExit(f"{root}: expected class sub-folders of images")
    return out


def pick(files: dict[str, list[Path]], per_class: int, seed: int) -> list[tuple[Path, str]]:
    rng = random.Random(seed)
    items = []
    for label, fs in files.items():
        if len(fs) < per_class:
            raise SystemExit(f"class {label} has {len(fs)} images, fewer than {per_class}")
        items += [(f, label) for f in sorted(rng.sample(fs, per_class))]
    return items


def make_photos(root: Path, per_class: int, size: tuple[int, int], seed: int) -> Path:
    """Phone-sized JPEGs: CIFAR photos upscaled to ``size`` (w, h) with sensor noise, q90."""
    import numpy as np
    from PIL import Image

    w, h = size
    folder = CACHE / f"photos-{per_class}pc-{w}x{h}-q90-seed{seed}"
    done = folder / ".complete"
    if done.is_file():
        return folder
    say(f"making {per_class * 10} phone-sized photos ({w}x{h}, q90) under "
        f"{folder.relative_to(ROOT)} (once)")
    items = pick(list_class_files(root), per_class, seed + 1000)
    rng = np.random.default_rng(seed)
    for i, (src, label) in enumerate(items):
        with Image.open(src) as im:
            big = np.asarray(im.convert("RGB").resize((w, h), Image.Resampling.BICUBIC),
                             dtype=np.float32)
        noise = rng.standard_normal(big.shape, dtype=np.float32) * 6.0  # sensor noise, sigma 6
        out = Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8))
        (folder / label).mkdir(parents=True, exist_ok=True)
        out.save(folder / label / f"{src.stem}.jpg", quality=90)
        if (i + 1) % 50 == 0:
            say(f"  {i + 1}/{len(items)} photos")
    done.write_text("ok\n")
    return folder


def split_items(items: list[tuple[Path, str]], holdout: int, seed: int) -> dict[str, Any]:
    """Our seeded splitter (training.data.sources.random_split), as both libraries get it."""
    from training.data.sources import random_split

    train, valid = random_split(items, holdout / len(items), seed)
    rows = [{"path": str(p.resolve()), "label": label, "is_valid": False} for p, label in train]
    rows += [{"path": str(p.resolve()), "label": label, "is_valid": True} for p, label in valid]
    return {"classes": sorted({label for _, label in items}), "rows": rows,
            "n_train": len(train), "n_valid": len(valid)}


def dataset_stats(split: dict[str, Any], presize: int) -> tuple[list[float], list[float]]:
    """The same numbers ours computes with data.normalize = "dataset" (fastai gets them)."""
    from training.data import DataSplit, Items, compute_stats

    classes = split["classes"]
    train = [r for r in split["rows"] if not r["is_valid"]]
    items = Items([Path(r["path"]) for r in train], [classes.index(r["label"]) for r in train])
    mean, std = compute_stats(DataSplit(classes, items, Items([], []), [], "bench"),
                              presize=presize)
    return list(mean), list(std)
