"""The calibration report's pictures: reliability diagrams and the risk-coverage curve (PNG,
matplotlib's Agg canvas, no pyplot state)."""

from __future__ import annotations

import io

import numpy as np

from service.calibration import reliability, risk_coverage


def _figure(width: float, height: float):  # noqa: ANN202 - matplotlib's Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:  # noqa: ANN001
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def reliability_png(panels: dict[str, dict[str, np.ndarray]], labels: np.ndarray,
                    title: str) -> bytes:
    """One panel per path ("plain", "TTA"), each with its curves ("before", "after"):
    accuracy against mean confidence per 15-bin, the diagonal being perfect calibration."""
    fig = _figure(5.0 * len(panels), 4.8)
    for i, (path, curves) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
        for name, probs in curves.items():
            r = reliability(probs.max(1), probs.argmax(1) == labels)
            seen = r.counts > 0
            ax.plot(r.confidence[seen], r.accuracy[seen], marker="o",
                    label=f"{name}: ECE {100 * r.ece:.2f}%")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1 probability, bin mean)")
        ax.set_ylabel("accuracy in the bin")
        ax.set_title(f"{path} answers")
        ax.legend(loc="upper left", fontsize=9)
    fig.suptitle(title, fontsize=11)
    return _png(fig)


def risk_coverage_png(curves: dict[str, np.ndarray], labels: np.ndarray, title: str,
                      chosen: tuple[float, float] | None = None) -> bytes:
    """Accuracy of the answered images against the share answered, per path; ``chosen``:
    (coverage, accuracy) at the model's min_confidence, marked."""
    fig = _figure(6.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    for name, probs in curves.items():
        _, coverage, accuracy = risk_coverage(probs.max(1), probs.argmax(1) == labels)
        ax.plot(coverage, accuracy, label=name)
    if chosen is not None:
        ax.plot([chosen[0]], [chosen[1]], marker="*", markersize=14, color="black",
                linestyle="none", label=f"min_confidence: {100 * chosen[0]:.1f}% answered, "
                                        f"accuracy {100 * chosen[1]:.2f}%")
    ax.set_xlabel("coverage (share of images answered, most confident first)")
    ax.set_ylabel("accuracy of the answered images")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    ax.set_title(title, fontsize=11)
    return _png(fig)
