"""Every bench module imports: a bench is run by hand, rarely, so a refactor that breaks one's
imports (as bench.workers once imported a Server that had moved) would otherwise go unseen."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
MODULES = sorted(
    ".".join(p.relative_to(BENCH.parent).with_suffix("").parts)
    for p in BENCH.rglob("*.py")
    if p.name != "__main__.py" and "results" not in p.parts
)


def test_the_bench_modules_are_found():
    assert "bench.workers" in MODULES and "bench.overload" in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_bench_module_imports(module: str):
    importlib.import_module(module)
