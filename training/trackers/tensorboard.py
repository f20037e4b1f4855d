"""TensorBoard: scalars per step and per epoch, the recipe as text, the report's pictures.

Writes OUTPUT/tensorboard/ (``tensorboard --logdir runs`` compares runs side by side).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tomli_w
from PIL import Image

from training.evaluation_summary import EvaluationSummary
from training.trackers.base import Tracker


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        recipe_toml = tomli_w.dumps(self.recipe)
        self.writer.add_text("recipe", "```toml\n" + recipe_toml + "\n```", 0)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def log_report(self, report_dir: Path, summary: EvaluationSummary) -> None:
        if not self.started:
            return
        for png in sorted(Path(report_dir).glob("*.png")):
            with Image.open(png) as im:
                pixels = np.asarray(im.convert("RGB"))
            self.writer.add_image(f"report/{png.stem}", pixels, self.last_epoch,
                                  dataformats="HWC")
        final = {f"final/{k}": v for k, v in summary.final_metrics().items()}
        self.log_scalars(final, self.last_epoch)

    def close(self, status: str = "FINISHED") -> None:
        if self.started:
            self.writer.close()
