"""The fastai venv: fastai on the project's torch, made once under .cache/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.vs_fastai import FASTAI_DEPS, FASTAI_VERSION, ROOT, VENV, say


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_fastai_venv() -> Path:
    """.cache/fastai-venv with fastai FASTAI_VERSION on the project's torch; its python."""
    import sysconfig

    marker = VENV / f".ready-fastai-{FASTAI_VERSION}"
    py = venv_python()
    if marker.is_file() and py.is_file():
        return py
    say(f"making {VENV.relative_to(ROOT)} (fastai {FASTAI_VERSION} on the project's torch; "
        "first run only, ~2-3 minutes)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    purelib = VENV / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages"
    # after the venv's own packages: the project's (torch, torchvision, numpy, PIL, ...)
    (purelib / "_tta_serve_project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", f"fastai=={FASTAI_VERSION}"], check=True)
    subprocess.run([*pip, *FASTAI_DEPS], check=True)
    check = subprocess.run(
        [str(py), "-c", "from fastai.vision.all import *; import fastai, torch; "
         "print(fastai.__version__, torch.__version__, torch.__file__)"],
        capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"fastai does not import in {VENV}:\n{check.stderr[-3000:]}")
    say(f"fastai venv ready: {check.stdout.strip()}")
    marker.write_text(check.stdout)
    return py
