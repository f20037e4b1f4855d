"""Shared fixtures for the training tests: real (tiny) data, written once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import make_digits


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's 1,797 8x8 digits as <class>/<i>.png (single tree, 10 classes)."""
    return make_digits(tmp_path_factory.mktemp("digits"))


def write_png(path: Path, color: tuple[int, int, int] = (128, 64, 32), size: int = 12) -> Path:
    """A small solid RGB PNG at path (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


@pytest.fixture
def make_class_tree() -> Callable[..., Path]:
    """make_class_tree(root, {"cat": 3, "dog": 2}) -> root with that many PNGs per class."""

    def make(root: Path, counts: dict[str, int], size: int = 12) -> Path:
        rng = np.random.default_rng(len(counts))
        for cls, n in counts.items():
            (root / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                color = tuple(int(c) for c in rng.integers(0, 256, 3))
                write_png(root / cls / f"{cls}_{i}.png", color, size)
        return root

    return make


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """write_image(path, color=(r, g, b), size=12): a solid RGB PNG."""
    return write_png


@pytest.fixture
def ctrl_c_in_second_epoch(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Learner.validate raises KeyboardInterrupt on its second call, as Ctrl-C in epoch 2 would;
    call the returned function to put validate back before the ``--resume`` that follows."""
    from training.learner import Learner

    calls = {"n": 0}
    validate = Learner.validate

    def interrupt_second_epoch(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return validate(self)

    monkeypatch.setattr(Learner, "validate", interrupt_second_epoch)
    return lambda: monkeypatch.setattr(Learner, "validate", validate)
