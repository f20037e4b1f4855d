"""Request inputs -> model-input rows, with the core's typed errors: encoded images (decoded by
``service.imaging`` with the model's recorded transform) and already-preprocessed pixels.

Where decoding runs is the core's choice (``InferenceCore._run``): a small image that is the
only one in the core decodes on the event loop (``first_rows_inline``), everything else in the
decode pool. Why: a CIFAR-sized JPEG decodes in ~0.1 ms, less than the two thread hand-offs a
pool costs it (submit, then the self-pipe wake-up of the loop; docs/benchmarks-history.md,
"Serving").
Among other requests the pool is kept: while it decodes, the loop admits the rest of a burst,
and the batcher, seeing them on their way, gives them one pass. The inline path is bounded by
bytes and by pixels, and the pixel bound is checked from the header before any pixel is
decoded, so neither a large photo nor a decompression bomb ever blocks the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.core.errors import ImageTooLarge, InvalidImage, InvalidRequest
from service.imaging import (
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    decode_side,
    eval_view,
    render_views,
    to_model_input,
)
from service.model_repository import ModelCard

# Decoded on the event loop when both hold: at most this many encoded bytes and pixels (a
# 256 x 256 image decodes well under a millisecond).
INLINE_MAX_BYTES = 256 * 1024
INLINE_MAX_PIXELS = 256 * 256
# Preprocessed pixels may overshoot [0, 1] this much (resampling ringing) before they are refused
# as being on another scale (0-255, or already mean/std-normalised: the graph normalises itself).
PIXEL_RANGE_TOLERANCE = 0.05


@dataclass
class DecodedImage:
    """One request's image, decoded once: the plain view's rows are rendered at once, the
    other TTA views only when asked (``tta=auto`` renders them for unsure images alone)."""

    image: Image.Image
    center: np.ndarray  # (S, S, 3) uint8: the evaluation view

    def rows(self, card: ModelCard, views: Sequence[str]) -> np.ndarray:
        """(V, 3, S, S) float32 model input of ``views``, in the order given."""
        if tuple(views) == ("center",):
            return to_model_input(self.center)
        return to_model_input(render_views(self.image, card.eval_spec, views,
                                           card.tta.zoom_ratio, center=self.center))

    @property
    def small(self) -> bool:
        """Small enough to render more views on the event loop (see the module docstring)."""
        w, h = self.image.size
        return w * h <= INLINE_MAX_PIXELS


def decode_request_image(image: bytes, card: ModelCard, max_pixels: int) -> DecodedImage:
    """Bytes -> the decoded image and its evaluation view; InvalidImage / ImageTooLarge."""
    if len(image) == 0:
        raise InvalidImage("image is empty (0 bytes); send the encoded file's bytes "
                           "(JPEG, PNG, WebP, BMP, GIF, TIFF)")
    try:
        # The model's TTA spec whether or not this request asks for TTA: the same DCT
        # scale as training's evaluation, so the tensors are the same (imaging.decode_side).
        img = decode_image(bytes(image), max_pixels=max_pixels,
                           min_side=decode_side(card.eval_spec, card.tta))
    except ImageTooLargeError as e:
        raise ImageTooLarge(str(e).replace("image bytes is", "image is", 1)) from e
    except ImageDecodeError as e:
        raise InvalidImage(str(e).replace("image bytes", "image", 1)) from e
    return DecodedImage(img, eval_view(img, card.eval_spec))


def first_rows(image: bytes, card: ModelCard, views: Sequence[str],
               max_pixels: int) -> tuple[DecodedImage, np.ndarray]:
    """Decode, then render the rows of the first pass (``views``)."""
    decoded = decode_request_image(image, card, max_pixels)
    return decoded, decoded.rows(card, views)


def image_rows(image: bytes, card: ModelCard, tta: bool, max_pixels: int) -> np.ndarray:
    """Bytes -> (V, 3, H, W) float32 model input; V = 1, or the TTA views."""
    return first_rows(image, card, card.tta.views if tta else ("center",), max_pixels)[1]


def first_rows_inline(image: bytes, card: ModelCard, views: Sequence[str],
                      max_pixels: int) -> tuple[DecodedImage, np.ndarray] | None:
    """``first_rows`` when the image is small enough for the event loop, else None (the caller
    decodes it in the pool). A refusal under ``max_pixels`` itself is raised as usual."""
    if len(image) > INLINE_MAX_BYTES:
        return None
    try:
        return first_rows(image, card, views, min(max_pixels, INLINE_MAX_PIXELS))
    except ImageTooLarge:
        if max_pixels <= INLINE_MAX_PIXELS:
            raise
        return None


def check_pixels_shape(pixels: np.ndarray, name: str, version: int, size: int) -> np.ndarray:
    """dtype and shape against the model's input contract; returns a C-contiguous array."""
    expected = f"[N, 3, {size}, {size}]"
    contract = (f"{name} v{version} takes float32 {expected}, N >= 1: NCHW RGB in "
                f"[0, 1], {size} = model.json eval_transform.size")
    if not isinstance(pixels, np.ndarray):
        raise InvalidRequest(f"pixels must be a numpy array, got {type(pixels).__name__}; "
                             f"{contract}")
    if pixels.dtype != np.float32:
        raise InvalidRequest(f"pixels are {pixels.dtype}, not float32; {contract}")
    if pixels.ndim != 4 or pixels.shape[1:] != (3, size, size) or pixels.shape[0] < 1:
        raise InvalidRequest(f"pixels have shape {list(pixels.shape)}, expected {expected}; "
                             f"{contract}")
    return np.ascontiguousarray(pixels)


def check_pixel_values(pixels: np.ndarray) -> None:
    """Finite and in [0, 1] (give or take resampling overshoot); a pass over every value."""
    low, high = float(pixels.min()), float(pixels.max())  # NaN propagates through both
    if not (np.isfinite(low) and np.isfinite(high)):
        rows = np.flatnonzero(~np.isfinite(pixels).reshape(len(pixels), -1).all(axis=1))
        raise InvalidRequest(f"pixels hold NaN or infinite values (rows {rows[:10].tolist()}, "
                             "0-based); send finite values in [0, 1]")
    tol = PIXEL_RANGE_TOLERANCE
    if low < -tol or high > 1 + tol:
        raise InvalidRequest(
            f"pixel values span [{low:g}, {high:g}]; the model takes RGB in [0, 1] (8-bit "
            "values divided by 255) and normalises (mean/std) inside its graph, so send them "
            "unnormalised")
