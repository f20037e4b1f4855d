"""kill -9 during training, then ``--resume``: the final weights against an uninterrupted run's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SMALL_FIT = ("stages.0.epochs=2", "stages.1.epochs=1", "stages.0.size=12", "stages.1.size=16",
             "data.presize=20")


def _fit_command(data: Path, output: Path, *extra: str) -> list[str]:
    sets = [arg for override in SMALL_FIT for arg in ("--set", override)]
    return [str(Path(sys.executable).with_name("training")), "fit", "--config",
            str(ROOT / "recipes" / "digits.toml"), "--data", str(data), "--output", str(output),
            "--device", "cpu", "--no-tta", *sets, *extra]


@dataclass
class KillResult:
    killed_after_s: float
    identical: bool
    differing: list[str]

    def line(self) -> str:
        return (f"kill -9 {self.killed_after_s:.1f} s into training, then --resume: final "
                f"weights {'bit-identical to' if self.identical else 'DIFFER from'} an "
                f"uninterrupted run" + (f" ({self.differing[:3]})" if self.differing else ""))


def kill9_then_resume(workdir: Path, *, delay_s: float = 0.0) -> KillResult:
    """``training fit`` SIGKILLed ``delay_s`` after its first checkpoint appears, resumed with
    ``--resume``; its last.pt against an uninterrupted run's (same recipe and data)."""
    import torch

    from training.data.digits import make_digits

    data = make_digits(workdir / "digits")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    def run(output: Path, *extra: str) -> None:
        subprocess.run(_fit_command(data, output, *extra), check=True, cwd=ROOT, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)

    run(workdir / "straight")
    interrupted = workdir / "interrupted"
    t0 = time.monotonic()
    process = subprocess.Popen(_fit_command(data, interrupted), cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (interrupted / "last.pt").exists():
        if process.poll() is not None:
            raise RuntimeError(f"training ended ({process.returncode}) before a checkpoint")
        time.sleep(0.02)
    time.sleep(delay_s)
    process.kill()
    process.wait()
    killed_after = time.monotonic() - t0
    run(interrupted, "--resume")
    a = torch.load(workdir / "straight" / "last.pt", map_location="cpu", weights_only=False)
    b = torch.load(interrupted / "last.pt", map_location="cpu", weights_only=False)
    differing = [k for k, v in a["model"].items() if not torch.equal(v, b["model"][k])]
    return KillResult(killed_after, not differing, differing)
