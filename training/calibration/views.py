"""Per-view probabilities of held-out photos through the served ONNX graph.

Every image is decoded and cut into views by ``service.imaging`` -- the path the service uses --
and run through ONNX Runtime, so what calibration fits is what the service will answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.imaging import (
    EvalSpec,
    ImageDecodeError,
    ImageTooLargeError,
    TTASpec,
    check_views_fit,
    decode_image,
    decode_side,
    render_views,
    to_model_input,
)

log = logging.getLogger(__name__)

# Tried by greedy forward selection besides the model's own TTA views: the mirror, the zoomed
# crops, and one- and two-pixel translations with their mirrors (airbench's multi-crop TTA).
CANDIDATE_VIEWS = (
    "hflip", "vflip", "zoom_center", "top_left", "top_right", "bottom_left", "bottom_right",
    "shift:+1,+1", "shift:-1,-1", "hflip_shift:+1,+1", "hflip_shift:-1,-1",
    "shift:+2,+0", "shift:-2,+0", "shift:+0,+2", "shift:+0,-2",
)
CHUNK_IMAGES = 128  # images decoded and run per ONNX Runtime call (bounded memory)


@dataclass(frozen=True)
class ViewProbabilities:
    """(N, V, C) probabilities of N labelled images under each of V views."""

    views: tuple[str, ...]
    probs: np.ndarray  # float32 (N, V, C)
    labels: np.ndarray  # int64 (N,)

    def of(self, views: Sequence[str]) -> np.ndarray:
        """(N, len(views), C), in the order asked."""
        return self.probs[:, [self.views.index(v) for v in views]]


def candidate_views(spec: EvalSpec, tta: TTASpec, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """"center" first, then the model's views, ``extra`` (or the standard set), those that fit."""
    wanted = ["center", *tta.views, *(extra or CANDIDATE_VIEWS)]
    out = []
    for view in dict.fromkeys(wanted):
        try:
            check_views_fit(spec, TTASpec(views=(view,), weights=(1.0,), beta=None,
                                          zoom_ratio=tta.zoom_ratio))
        except ValueError:
            log.info("candidate view %s does not fit %d px inputs; not tried", view, spec.size)
            continue
        out.append(view)
    return tuple(out)


def view_probabilities(onnx_path: Path, items: Sequence[tuple[Path, int]], spec: EvalSpec,
                       views: Sequence[str], zoom_ratio: float, *, input_name: str = "pixels",
                       decode_tta: TTASpec | None = None) -> ViewProbabilities:
    """Run every view of every image (undecodable ones skipped, with a warning).

    decode_tta: the TTA spec whose ``decode_side`` the servers decode with (the model's): large
    JPEGs are DCT-downscaled to the same scale as the service then.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    side = decode_side(spec, decode_tta or TTASpec(views=tuple(views), weights=(1.0,) * len(views),
                                                   beta=None, zoom_ratio=zoom_ratio))
    chunks, labels, started = [], [], time.monotonic()
    for start in range(0, len(items), CHUNK_IMAGES):
        rows = []
        for path, label in items[start:start + CHUNK_IMAGES]:
            try:
                img = decode_image(path, min_side=side)
            except (ImageDecodeError, ImageTooLargeError) as e:
                log.warning("skipping held-out image: %s", e)
                continue
            rows.append(render_views(img, spec, views, zoom_ratio))
            labels.append(label)
        if rows:
            x = to_model_input(np.concatenate(rows))
            out = session.run(None, {input_name: x})[0]
            chunks.append(out.reshape(len(rows), len(views), -1).astype(np.float32))
        done = min(start + CHUNK_IMAGES, len(items))
        log.info("views of %d/%d held-out images (%d views each, %.0f s)", done, len(items),
                 len(views), time.monotonic() - started)
    if not chunks:
        raise ValueError("none of the held-out images could be decoded")
    return ViewProbabilities(tuple(views), np.concatenate(chunks),
                             np.asarray(labels, dtype=np.int64))


def save(vp: ViewProbabilities, path: Path) -> None:
    np.savez_compressed(path, views=np.array(vp.views), probs=vp.probs, labels=vp.labels)


def load(path: Path) -> ViewProbabilities:
    with np.load(path) as z:
        return ViewProbabilities(tuple(str(v) for v in z["views"]), z["probs"], z["labels"])
