"""CIFAR-10 photo subsets for the training benches: a class-balanced folder of symlinks into
data/cifar10/train, so a bench reads the same JPEGs as the full recipe, only fewer of them."""

from __future__ import annotations

from pathlib import Path

from bench.common import ROOT

CIFAR_TRAIN = ROOT / "data" / "cifar10" / "train"


def cifar_subset(per_class: int, dest: Path, source: Path = CIFAR_TRAIN,
                 offset: int = 0) -> Path:
    """``dest/<class>/`` linking ``per_class`` photos of each class (sorted names, from
    ``offset``); kept when it already holds them."""
    if not source.is_dir():
        raise SystemExit(f"{source} not found: unpack CIFAR-10's training JPEGs there first")
    for cls_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        out = dest / cls_dir.name
        out.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in cls_dir.iterdir())[offset:offset + per_class]
        if len(names) < per_class:
            raise SystemExit(f"{cls_dir} has fewer than {offset + per_class} photos")
        for name in names:
            link = out / name
            if not link.exists():
                link.symlink_to((cls_dir / name).resolve())
    return dest
