"""Medians per library, the markdown table and the PNG bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.vs_fastai import LIBRARIES


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import statistics

    rows = []
    for lib in LIBRARIES:
        rs = [r for r in runs if r["library"] == lib]
        if not rs:
            continue

        def mean(key: str, rs=rs) -> float:
            return statistics.fmean(r[key] for r in rs)

        def spread(key: str, rs=rs) -> str:
            vals = [r[key] for r in rs]
            return f"{100 * min(vals):.1f}-{100 * max(vals):.1f}" if len(vals) > 1 else ""

        rows.append({
            "library": lib, "seeds": len(rs),
            "accuracy": 100 * mean("accuracy"), "accuracy_range": spread("accuracy"),
            "tta_accuracy": 100 * mean("tta_accuracy"),
            "tta_accuracy_range": spread("tta_accuracy"),
            "wall_seconds": mean("wall_seconds"), "s_per_epoch": mean("s_per_epoch"),
            "train_images_per_s": mean("train_images_per_s"),
            "peak_rss_mb": mean("peak_rss_mb"), "peak_tree_rss_mb": mean("peak_tree_rss_mb"),
        })
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| library | seeds | accuracy % (range) | TTA accuracy % (range) | wall s | s/epoch "
            "| train images/s | peak RSS MB (tree) |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        acc = f"{r['accuracy']:.2f}" + (f" ({r['accuracy_range']})" if r["accuracy_range"] else "")
        tta = f"{r['tta_accuracy']:.2f}" + (
            f" ({r['tta_accuracy_range']})" if r["tta_accuracy_range"] else "")
        lines.append(f"| {r['library']} | {r['seeds']} | {acc} | {tta} | {r['wall_seconds']:.0f} "
                     f"| {r['s_per_epoch']:.1f} | {r['train_images_per_s']:.0f} "
                     f"| {r['peak_rss_mb']:.0f} ({r['peak_tree_rss_mb']:.0f}) |")
    by = {r["library"]: r for r in rows}
    if len(by) == 2:
        o, f = by["ours"], by["fastai"]
        lines.append(
            f"| **ours vs fastai** | | {o['accuracy'] - f['accuracy']:+.2f} points "
            f"| {o['tta_accuracy'] - f['tta_accuracy']:+.2f} points "
            f"| {o['wall_seconds'] / f['wall_seconds']:.2f}x "
            f"| {o['s_per_epoch'] / f['s_per_epoch']:.2f}x "
            f"| {o['train_images_per_s'] / f['train_images_per_s']:.2f}x "
            f"| {o['peak_rss_mb'] / f['peak_rss_mb']:.2f}x |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(results)
    metrics = [("accuracy", "accuracy %"), ("tta_accuracy", "TTA accuracy %"),
               ("wall_seconds", "wall s"), ("train_images_per_s", "train images/s"),
               ("peak_rss_mb", "peak RSS MB")]
    fig, axes = plt.subplots(len(cases), len(metrics), figsize=(3.2 * len(metrics),
                                                                 2.8 * len(cases)),
                             squeeze=False)
    for ci, case in enumerate(cases):
        rows = {r["library"]: r for r in results[case]["summary"]}
        for mi, (key, label) in enumerate(metrics):
            ax = axes[ci][mi]
            libs = [lib for lib in LIBRARIES if lib in rows]
            vals = [rows[lib][key] for lib in libs]
            bars = ax.bar(libs, vals, color=["tab:blue", "tab:orange"][: len(libs)])
            ax.bar_label(bars, fmt="%.1f" if "acc" in key else "%.0f", fontsize=8)
            ax.set_title(f"{case}\n{label}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
