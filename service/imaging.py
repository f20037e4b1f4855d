"""The image -> model-input path, written once and torch-free.

Training's evaluation, the export parity check and both servers call these functions, so a
model's recorded validation accuracy and what the service answers cannot drift apart.
Training's *random* augmentation is training's own (torch, on the device); everything
deterministic lives here.

Input contract of every exported model: float32, NCHW, RGB, values in [0, 1]; normalisation
(mean/std) is inside the ONNX graph.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own bomb guard warns at ~89 Mpx; we refuse explicitly, with a message that says why.
DEFAULT_MAX_PIXELS = 40_000_000

# Pillow filters by the names recipes and model.json use (training's item stage uses them too).
RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}

TTA_VIEWS = (
    "center",  # the plain evaluation view
    "hflip",  # center, mirrored left-right
    "vflip",  # center, mirrored top-bottom
    "zoom_center",  # center crop of the image resized larger by zoom_ratio
    "top_left",  # corner crops of the zoomed image
    "top_right",
    "bottom_left",
    "bottom_right",
)

# Translate views, any offsets: "shift:DX,DY" is the plain view moved DX px right and DY px down
# (negative: left/up), the pixels that come in from outside filled by reflect padding;
# "hflip_shift:DX,DY" is that shifted view mirrored left-right. E.g. "shift:+1,+1",
# "hflip_shift:-2,+0". |DX| and |DY| must be smaller than the model's input size.
SHIFT_VIEW = re.compile(r"(?P<mirror>hflip_)?shift:(?P<dx>[+-]?\d+),(?P<dy>[+-]?\d+)")
VIEW_GRAMMAR = (f"a named view {list(TTA_VIEWS)}, or 'shift:DX,DY' / 'hflip_shift:DX,DY' "
                "(the plain view translated DX px right and DY px down with reflect padding, "
                "and its mirror; signed integers, e.g. 'shift:+2,+0')")


class ImageDecodeError(ValueError):
    """The bytes are not an image we can read."""


class ImageTooLargeError(ValueError):
    """The image has more pixels than the configured limit."""


@dataclass(frozen=True)
class EvalSpec:
    """The deterministic evaluation transform: resize the shorter side, then center crop.

    size: side of the square model input, pixels.
    resize_ratio: the shorter side is resized to round(size * resize_ratio) before the crop
        (1.0 keeps the whole short side; torchvision's presets use 256/224 ~= 1.14).
    """

    size: int
    resize_ratio: float = 1.0
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"eval size must be >= 1 pixel, got {self.size}")
        if self.resize_ratio < 1.0:
            raise ValueError(f"resize_ratio must be >= 1.0, got {self.resize_ratio}")
        if self.interpolation not in RESAMPLING:
            raise ValueError(
                f"interpolation {self.interpolation!r} unknown; use one of {sorted(RESAMPLING)}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EvalSpec:
        return cls(**d)


@dataclass(frozen=True)
class TTASpec:
    """A fixed set of deterministic views and how their probabilities are combined.

    combine="mean": p = beta * p(center) + (1 - beta) * mean(p(other views)), as fastai's
    ``tta(beta=0.25)``; beta=None averages all views equally.
    combine="max": element-wise max over all views, renormalised to sum to 1.
    weights (one per view, chosen by evidence at export: ``training calibrate``): p = sum of
    w_v * p(view v) / sum of w_v; they replace beta (combine "mean", beta None). A spec without
    weights (every model.json written before them) combines exactly as before. Weighted specs
    may hold a single view: export found that no other view helps, and serves none.
    """

    views: tuple[str, ...] = ("center", "zoom_center", "top_left", "top_right",
                              "bottom_left", "bottom_right")
    zoom_ratio: float = 1.15
    combine: str = "mean"
    beta: float | None = 0.25
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", tuple(self.views))
        unknown = [v for v in self.views if v not in TTA_VIEWS and not SHIFT_VIEW.fullmatch(v)]
        if unknown:
            raise ValueError(f"unknown TTA view(s) {unknown}; a view is {VIEW_GRAMMAR}")
        if len(set(self.views)) != len(self.views):
            raise ValueError(f"TTA views repeat: {list(self.views)}")
        if self.weights is not None:
            self._check_weights()
        elif len(self.views) < 2:
            raise ValueError("TTA needs at least two views")
        if self.combine not in ("mean", "max"):
            raise ValueError(f"TTA combine must be 'mean' or 'max', got {self.combine!r}")
        if self.combine == "mean" and self.beta is not None:
            if "center" not in self.views:
                raise ValueError("TTA with beta weights the 'center' view; add it to views")
            if not 0.0 <= self.beta <= 1.0:
                raise ValueError(f"TTA beta must be in [0, 1], got {self.beta}")
        if self.zoom_ratio < 1.0:
            raise ValueError(f"TTA zoom_ratio must be >= 1.0, got {self.zoom_ratio}")

    def _check_weights(self) -> None:
        weights = tuple(float(w) for w in self.weights or ())
        object.__setattr__(self, "weights", weights)
        if len(weights) != len(self.views):
            raise ValueError(f"TTA weights: {len(weights)} given for {len(self.views)} views")
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"TTA weights must be finite, >= 0 and not all 0; got {weights}")
        if self.combine != "mean" or self.beta is not None:
            raise ValueError("TTA weights replace beta: use combine 'mean' and beta None")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["views"] = list(self.views)
        if self.weights is None:
            del d["weights"]  # model.json as it was before weights existed
        else:
            d["weights"] = list(self.weights)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TTASpec:
        weights = d.get("weights")
        return cls(**{**d, "views": tuple(d["views"]),
                      "weights": None if weights is None else tuple(weights)})


# Views cropped from a zoomed copy of the image; every other view is computed from the plain
# evaluation view's pixels (flips, shifts).
_ZOOMED_VIEWS = frozenset({"zoom_center", "top_left", "top_right", "bottom_left", "bottom_right"})


def check_views_fit(spec: EvalSpec, tta: TTASpec) -> None:
    """Refuse shift views that move the whole view out (|DX| or |DY| >= the input size): reflect
    padding, as numpy's and PyTorch's 'reflect', needs the shift inside the view."""
    for view in tta.views:
        if (m := SHIFT_VIEW.fullmatch(view)) and max(abs(int(m["dx"])),
                                                     abs(int(m["dy"]))) >= spec.size:
            raise ValueError(f"TTA view {view!r} shifts by {spec.size} px or more; the model's "
                             f"input is {spec.size} px, so |DX| and |DY| must be < {spec.size}")


def decode_side(spec: EvalSpec, tta: TTASpec | None = None) -> int:
    """The shorter side an image needs for ``spec``'s view and ``tta``'s zoomed views.

    Pass the model's TTA spec whether or not a request asks for TTA: every caller that
    decodes for a model (training's evaluation, the export parity check, every server) then
    decodes a large JPEG to the same DCT scale, so the tensors stay identical everywhere.
    """
    side = spec.size * spec.resize_ratio
    if tta is not None and any(v in _ZOOMED_VIEWS for v in tta.views):
        side *= tta.zoom_ratio
    return max(1, math.ceil(side))


def decode_image(source: bytes | str | Path, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_side: int | None = None) -> Image.Image:
    """Decode JPEG/PNG/WebP/BMP/GIF (first frame)/TIFF into an upright RGB image.

    EXIF orientation is applied; alpha is composited over white; grayscale, palette, CMYK
    and 16-bit images become 8-bit RGB. The pixel limit is checked before pixels are decoded.

    min_side: the shorter side the caller will resize to (``decode_side``). A JPEG at least
    twice that size is then decoded by libjpeg's DCT-domain scaling (Pillow's ``draft``) at
    1/2, 1/4 or 1/8 scale, never below ``min_side``: a 12 MP photo decodes ~10x faster and the
    resize that follows has far fewer pixels to filter. Other formats decode in full.
    """
    name = str(source) if isinstance(source, str | Path) else "image bytes"
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            if len(source) == 0:
                raise ImageDecodeError("image is empty (0 bytes)")
            img = Image.open(io.BytesIO(source))
        else:
            img = Image.open(source)
        width, height = img.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{name} is {width}x{height} = {width * height:,} pixels; the limit is "
                f"{max_pixels:,} pixels (raise it with --max-pixels)"
            )
        img.seek(0)
        if min_side is not None and img.format == "JPEG":
            _draft(img, min_side)
        img.load()
        img = ImageOps.exif_transpose(img)
    except (ImageDecodeError, ImageTooLargeError):
        raise
    except UnidentifiedImageError as e:
        raise ImageDecodeError(
            f"{name} is not a recognised image format (JPEG, PNG, WebP, BMP, GIF, TIFF)"
        ) from e
    except Image.DecompressionBombError as e:  # over Pillow's own limit: too large, not bad
        raise ImageTooLargeError(
            f"{name} is over Pillow's decompression-bomb limit ({e}); the limit is "
            f"{max_pixels:,} pixels (raise it with --max-pixels)"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"{name} could not be decoded: {e}") from e
    return _to_rgb(img)


def _draft(img: Image.Image, min_side: int) -> None:
    """Ask libjpeg for the smallest DCT scale whose shorter side is still >= min_side.

    EXIF rotation does not change the shorter side, so it is safe to pick before transposing.
    Pillow's draft keeps each side >= the requested one; request a box with the right aspect.
    """
    w, h = img.size
    short = min(w, h)
    if short < 2 * min_side:
        return
    scale = min_side / short
    img.draft(img.mode, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def resize_shorter_side(img: Image.Image, target: int,
                        interpolation: str = "bilinear") -> Image.Image:
    """Resize so the shorter side is ``target`` pixels, keeping the aspect ratio."""
    w, h = img.size
    if w <= h:
        new_w, new_h = target, max(target, round(h * target / w))
    else:
        new_w, new_h = max(target, round(w * target / h)), target
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), RESAMPLING[interpolation])


def _crop(img: Image.Image, size: int, where: str) -> np.ndarray:
    w, h = img.size
    left = {"left": 0, "center": (w - size) // 2, "right": w - size}
    top = {"top": 0, "center": (h - size) // 2, "bottom": h - size}
    if where == "center":
        x, y = left["center"], top["center"]
    else:
        vert, horiz = where.split("_")
        x, y = left[horiz], top[vert]
    return np.asarray(img.crop((x, y, x + size, y + size)), dtype=np.uint8)


def resize_center_crop(img: Image.Image, resize_to: int, crop: int,
                       interpolation: str = "bilinear") -> np.ndarray:
    """Shorter side to ``resize_to`` then a centered ``crop`` square: HxWx3 uint8."""
    return _crop(resize_shorter_side(img, resize_to, interpolation), crop, "center")


def eval_view(img: Image.Image, spec: EvalSpec) -> np.ndarray:
    """The evaluation view of one image: (size, size, 3) uint8."""
    resize_to = round(spec.size * spec.resize_ratio)
    return resize_center_crop(img, resize_to, spec.size, spec.interpolation)


def shift_reflect(view: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``view`` (H, W, ...) moved ``dx`` px right and ``dy`` px down, same shape; the pixels that
    come in from outside are the view reflected at its border without repeating the edge pixel
    (numpy's and PyTorch's 'reflect', as airbench's multi-crop TTA pads its input)."""
    h, w = view.shape[:2]
    if abs(dx) >= w or abs(dy) >= h:
        raise ValueError(f"shift ({dx}, {dy}) must be smaller than the {w}x{h} view")
    pad = ((abs(dy), abs(dy)), (abs(dx), abs(dx))) + ((0, 0),) * (view.ndim - 2)
    padded = np.pad(view, pad, mode="reflect")
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[top:top + h, left:left + w]


def _shifted(center: np.ndarray, view: str) -> np.ndarray | None:
    """A shift view of the plain view, or None when ``view`` is not one."""
    m = SHIFT_VIEW.fullmatch(view)
    if m is None:
        return None
    out = shift_reflect(center, int(m["dx"]), int(m["dy"]))
    return out[:, ::-1] if m["mirror"] else out


def tta_views(img: Image.Image, spec: EvalSpec, tta: TTASpec) -> np.ndarray:
    """All TTA views of one image, in ``tta.views`` order: (V, size, size, 3) uint8."""
    return render_views(img, spec, tta.views, tta.zoom_ratio)


def render_views(img: Image.Image, spec: EvalSpec, views: Sequence[str],
                 zoom_ratio: float, center: np.ndarray | None = None) -> np.ndarray:
    """Any of the TTA views of one image, in the order given: (V, size, size, 3) uint8 (the
    core renders the plain view first and the others only when ``tta=auto`` needs them;
    ``center``: the plain view when it is already at hand)."""
    if center is None:
        center = eval_view(img, spec)
    zoomed: Image.Image | None = None
    out = []
    for view in views:
        if view == "center":
            out.append(center)
        elif view == "hflip":
            out.append(center[:, ::-1])
        elif view == "vflip":
            out.append(center[::-1, :])
        elif (shifted := _shifted(center, view)) is not None:
            out.append(shifted)
        else:
            if zoomed is None:
                zoom_to = max(round(spec.size * spec.resize_ratio * zoom_ratio), spec.size)
                zoomed = resize_shorter_side(img, zoom_to, spec.interpolation)
            out.append(_crop(zoomed, spec.size, "center" if view == "zoom_center" else view))
    return np.ascontiguousarray(np.stack(out))


def to_model_input(batch_hwc: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1]: the ONNX input contract."""
    if batch_hwc.ndim == 3:
        batch_hwc = batch_hwc[None]
    chw = np.ascontiguousarray(batch_hwc.transpose(0, 3, 1, 2), dtype=np.float32)
    return chw / np.float32(255.0)


def combine_tta(probs: np.ndarray, tta: TTASpec) -> np.ndarray:
    """Combine per-view probabilities (N, V, C) -> (N, C) by the recorded rule."""
    if probs.ndim != 3 or probs.shape[1] != len(tta.views):
        raise ValueError(f"expected (N, {len(tta.views)}, C) view probabilities, got {probs.shape}")
    probs = probs.astype(np.float64)
    if tta.weights is not None:
        w = np.asarray(tta.weights, dtype=np.float64)
        return (np.einsum("nvc,v->nc", probs, w) / w.sum()).astype(np.float32)
    if tta.combine == "max":
        out = probs.max(axis=1)
        return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)
    if tta.beta is None:
        return probs.mean(axis=1).astype(np.float32)
    center = tta.views.index("center")
    others = [i for i in range(len(tta.views)) if i != center]
    combined = tta.beta * probs[:, center] + (1.0 - tta.beta) * probs[:, others].mean(axis=1)
    return combined.astype(np.float32)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def stack_views(images: Sequence[Image.Image], spec: EvalSpec, tta: TTASpec | None) -> np.ndarray:
    """Model input for several images: (N*V, 3, H, W) float32, views of an image adjacent."""
    if tta is None:
        hwc = np.stack([eval_view(im, spec) for im in images])
    else:
        hwc = np.concatenate([tta_views(im, spec, tta) for im in images])
    return to_model_input(hwc)
