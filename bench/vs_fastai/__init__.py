"""The parts of ``bench.recipe_vs_fastai`` (the command and its docstring live there): the fastai
venv, the data both libraries get, the worker each library runs in, and the report.

Whole functions moved out of recipe_vs_fastai.py, bodies unchanged (issue 24).
"""

from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "recipe_vs_fastai"
VENV = ROOT / ".cache" / "fastai-venv"
FASTAI_VERSION = "2.8.12"
# fastai's light dependencies (its heavy ones -- torch, torchvision, matplotlib, pandas' peers,
# scikit-learn, scipy -- come from the project's environment; spacy is only for fastai.text).
FASTAI_DEPS = ["fastcore>=2.2.22", "fastdownload>=0.0.8,<2", "fasttransform>=0.0.3",
               "fastprogress>=0.2.4", "plum-dispatch<2.10", "pandas", "cloudpickle"]
LIBRARIES = ("ours", "fastai")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
