"""Plain CSV: OUTPUT/log/epochs.csv (one row per epoch) and OUTPUT/log/steps.csv (every
``log.every_n_steps`` batches). No dependency; opens in any spreadsheet or pandas."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from typing import Any

from training.trackers.base import Tracker


class CSVTracker(Tracker):
    name = "csv"

    def start(self) -> None:
        folder = self.run_dir / "log"
        folder.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, Any] = {}
        self.writers: dict[str, csv.writer] = {}
        for kind in ("epochs", "steps"):
            path = folder / f"{kind}.csv"
            append = self.resume and path.is_file()
            self.files[kind] = path.open("a" if append else "w", newline="")
            self.writers[kind] = csv.writer(self.files[kind])
        self.headers: dict[str, list[str]] = {}
        self.appending = {k: self.resume and f.tell() > 0 for k, f in self.files.items()}

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        kind = "epochs" if next(iter(values)).startswith("epoch/") else "steps"
        columns = [k.split("/", 1)[1] for k in values]
        if kind not in self.headers:
            self.headers[kind] = columns
            if not self.appending[kind]:
                self.writers[kind].writerow(["epoch" if kind == "epochs" else "step", *columns])
        self.writers[kind].writerow([step, *(repr(float(v)) for v in values.values())])
        if kind == "epochs":
            for f in self.files.values():
                f.flush()

    def close(self, status: str = "FINISHED") -> None:
        if self.started:
            for f in self.files.values():
                f.close()
