"""The rows ``tta-serve predict`` writes (table, CSV or JSON, as they come) and its progress bar."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import IO, Any

from service.client.errors import ClientError
from service.client.results import Prediction

FORMATS = ("table", "csv", "json")
# tta_path: which path answered (plain or tta); unsure: below min_confidence ("not sure");
# calibrated: the probabilities went through the model's fitted temperature
CSV_COLUMNS = ("path", "label", "probability", "top_k", "model", "version", "tta_path", "unsure",
               "calibrated", "error")


def _top_k_text(p: Prediction) -> str:
    return ";".join(f"{c.label}:{c.probability:.6f}" for c in p.classes)


def row(path: Path, result: Prediction | ClientError) -> dict[str, Any]:
    """One output row: the prediction, or the error in the ``error`` column."""
    if isinstance(result, ClientError):
        return {"path": str(path), "label": "", "probability": "", "top_k": "", "model": "",
                "version": "", "tta_path": "", "unsure": "", "calibrated": "",
                "error": f"{result.code}: {result.message}"}
    return {"path": str(path), "label": result.label,
            "probability": f"{result.probability:.6f}", "top_k": _top_k_text(result),
            "model": result.model, "version": result.model_version, "tta_path": result.path,
            "unsure": str(result.unsure).lower(), "calibrated": str(result.calibrated).lower(),
            "error": ""}


class RowWriter:
    """Writes rows as they come (a CSV of a huge folder never waits for the end)."""

    def __init__(self, out: IO[str], fmt: str) -> None:
        self.out, self.fmt = out, fmt
        self.count = 0
        if fmt == "csv":
            self.csv = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
            self.csv.writeheader()
        elif fmt == "json":
            out.write("[")
        else:
            out.write(f"{'label':<12} {'prob':>8}  {'path'}\n")  # "?" after prob: unsure

    def write(self, path: Path, result: Prediction | ClientError) -> None:
        r = row(path, result)
        if self.fmt == "csv":
            self.csv.writerow(r)
        elif self.fmt == "json":
            item: dict[str, Any] = {"path": r["path"]}
            if isinstance(result, ClientError):
                item["error"] = result.message
                item["kind"] = result.code
            else:
                item.update(label=result.label, probability=result.probability,
                            classes=[{"label": c.label, "index": c.index,
                                      "probability": c.probability} for c in result.classes],
                            model=result.model, model_version=result.model_version,
                            tta=result.tta, tta_views=result.tta_views,
                            tta_mode=result.tta_mode, tta_path=result.path,
                            views_used=list(result.views_used), unsure=result.unsure,
                            calibrated=result.calibrated)
            self.out.write(("\n " if self.count == 0 else ",\n ") + json.dumps(item))
        elif isinstance(result, ClientError):
            self.out.write(f"{'ERROR':<12} {'':>8}  {r['path']}  ({r['error']})\n")
        else:
            mark = "?" if result.unsure else " "
            self.out.write(f"{r['label']:<12} {r['probability']:>8}{mark} {r['path']}\n")
        self.count += 1

    def close(self) -> None:
        if self.fmt == "json":
            self.out.write("\n]\n" if self.count else "]\n")
        self.out.flush()


class Progress:
    """``  312/1000 images  31%  120 img/s`` on stderr, redrawn at most 10 times a second."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.done = self.failed = 0
        self.start = self.last = time.monotonic()

    def update(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.1 or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            pct = 100 * self.done / max(self.total, 1)
            bar = "#" * int(pct / 5)
            sys.stderr.write(f"\r[{bar:<20}] {self.done}/{self.total} images {pct:3.0f}%  "
                             f"{rate:.0f} img/s  {self.failed} failed ")
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
