"""Random batch augmentation on the device, fastai ``aug_transforms`` style.

Why batch-level and why one grid: the item stage only presizes (cheap, CPU), and the whole batch
is augmented on the accelerator. Random resized crop, flips, rotation, zoom and perspective warp
are each a 3x3 (projective) matrix on normalised coordinates; they are multiplied into ONE matrix
per image, turned into ONE sampling grid and applied with ONE ``F.grid_sample`` -- a single
interpolation, so the augmented image is no blurrier than a plain resize (fastai's reason for
composing its affine and coordinate transforms).

Lighting follows fastai: brightness and contrast in logit space (``sigmoid(logit(x) * c + b)``),
which keeps values in (0, 1) without clipping highlights.

All randomness comes from the ``generator`` argument (CPU or CUDA), drawn in one fixed layout,
so a seeded run is reproducible whichever transforms are switched on.

``to_float_nchw`` is the validation path: exactly ``service.imaging.to_model_input``'s numbers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from training.auto_augment import batch_policy_for
from training.config import AugmentConfig
from training.item_transforms import ItemTransform

# k / 255 computed by numpy in float32, as service.imaging.to_model_input does: a table lookup is
# bit-identical on every device, where a device division by a scalar may multiply by 1/255.
_BYTE_TO_UNIT = torch.from_numpy(np.arange(256, dtype=np.float32) / np.float32(255.0))
_LUT_CACHE: dict[torch.device, Tensor] = {}

_CROP_TRIES = 10  # as torchvision's RandomResizedCrop
_LOGIT_EPS = 1e-6


def to_float_nchw(x: Tensor) -> Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) / 255; (N, V, H, W, 3) -> (N*V, 3, H, W).

    Views of one image stay adjacent, as service.imaging.stack_views orders them.
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image batch, got {x.dtype}")
    if x.ndim == 5:
        x = x.reshape(-1, *x.shape[2:])
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) or (N, V, H, W, 3) uint8, got {tuple(x.shape)}")
    lut = _LUT_CACHE.get(x.device)
    if lut is None:
        lut = _LUT_CACHE[x.device] = _BYTE_TO_UNIT.to(x.device)
    return lut[x.permute(0, 3, 1, 2).to(torch.int32)].contiguous()


class BatchAugment:
    """uint8 (N, H, W, 3) batch -> augmented float32 (N, 3, size, size) in [0, 1], same device."""

    # Column layout of the single uniform draw per image (fixed, so seeds are reproducible).
    _COLS = {
        "scale": slice(0, _CROP_TRIES),
        "ratio": slice(_CROP_TRIES, 2 * _CROP_TRIES),
    }
    _NAMED = (
        "crop_x", "crop_y", "flip", "flip_vert", "p_rotate", "rotate", "p_zoom", "zoom",
        "zoom_x", "zoom_y", "p_warp", "warp_x", "warp_y", "p_bright", "bright", "p_contrast",
        "contrast", "shift_x", "shift_y",
    )

    def __init__(self, cfg: AugmentConfig, size: int) -> None:
        if size < 1:
            raise ValueError(f"augmentation size must be >= 1 pixel, got {size}")
        self.cfg = cfg
        self.size = size
        self.epoch = 0  # the run's epoch (fit sets it): the parity alternate_flip follows
        self._base_grid: dict[torch.device, Tensor] = {}
        self.policy = batch_policy_for(cfg)  # None unless auto_augment / random_erasing is on
        self.item_transform = ItemTransform(cfg.item_transform) if cfg.item_transform else None

    def __repr__(self) -> str:
        return f"BatchAugment(size={self.size}, cfg={self.cfg})"

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
            raise ValueError(f"expected uint8 (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
        original = x  # alternate_flip's per-image parity: before any random item transform
        if self.item_transform is not None:
            x = self.item_transform(x, generator)
        n, h, w, _ = x.shape
        img = to_float_nchw(x)
        if n == 0:
            return img.new_zeros((0, 3, self.size, self.size))
        u = self._draw(n, generator, x.device)
        if self.cfg.flip and self.cfg.alternate_flip:
            u["flip"] = alternating_flip(original, self.epoch)
        with torch.autocast(device_type=x.device.type, enabled=False):
            mat = self._matrices(u, h, w)
            grid = self._grid(mat, x.device)
            out = F.grid_sample(
                img, grid, mode="bilinear", padding_mode="reflection", align_corners=False
            )
            out = self._lighting(out, u)
        out = out.clamp_(0.0, 1.0)
        return self.policy(out) if self.policy is not None else out

    # --- randomness ------------------------------------------------------------------------------

    def _draw(self, n: int, generator: torch.Generator | None, device: torch.device) -> dict:
        width = 2 * _CROP_TRIES + len(self._NAMED)
        gen_device = generator.device if generator is not None else device
        u = torch.rand((n, width), generator=generator, device=gen_device).to(device)
        out = {k: u[:, s] for k, s in self._COLS.items()}
        out.update({k: u[:, 2 * _CROP_TRIES + i] for i, k in enumerate(self._NAMED)})
        return out

    # --- geometry --------------------------------------------------------------------------------

    def _matrices(self, u: dict, h: int, w: int) -> Tensor:
        """One 3x3 map per image from output to input normalised coordinates:
        crop @ zoom @ rotate @ flip @ warp."""
        c = self.cfg
        n = u["flip"].shape[0]
        dev = u["flip"].device
        eye = torch.eye(3, device=dev).expand(n, 3, 3)

        crop = self._crop(u, h, w)

        sx = torch.ones(n, device=dev)
        sy = torch.ones(n, device=dev)
        if c.flip:
            sx = torch.where(u["flip"] < 0.5, -sx, sx)
        if c.flip_vert:
            sy = torch.where(u["flip_vert"] < 0.5, -sy, sy)
        flip = _affine(sx, 0.0 * sx, 0.0 * sx, 0.0 * sx, sy, 0.0 * sx)

        theta = math.radians(c.max_rotate) * (2 * u["rotate"] - 1)
        theta = torch.where(u["p_rotate"] < c.p_affine, theta, torch.zeros_like(theta))
        cos, sin = torch.cos(theta), torch.sin(theta)
        rotate = _affine(cos, -sin, 0.0 * cos, sin, cos, 0.0 * cos)

        s = 1.0 / (c.min_zoom + (c.max_zoom - c.min_zoom) * u["zoom"])
        s = torch.where(u["p_zoom"] < c.p_affine, s, torch.ones_like(s))
        zoom = _affine(s, 0.0 * s, (1 - s) * (2 * u["zoom_x"] - 1), 0.0 * s, s,
                       (1 - s) * (2 * u["zoom_y"] - 1))

        mat = crop @ zoom @ rotate @ flip
        if c.max_translate > 0:  # a fraction f of the side is 2f in normalised coordinates
            tx = 2 * c.max_translate * (2 * u["shift_x"] - 1)
            ty = 2 * c.max_translate * (2 * u["shift_y"] - 1)
            one = torch.ones_like(tx)
            mat = _affine(one, 0.0 * one, tx, 0.0 * one, one, ty) @ mat
        if c.max_warp > 0 and c.p_affine > 0:
            mx = c.max_warp * (2 * u["warp_x"] - 1)
            my = c.max_warp * (2 * u["warp_y"] - 1)
            warp = _homography_from_corners(mx, my)
            warp = torch.where((u["p_warp"] < c.p_affine)[:, None, None], warp, eye)
            mat = mat @ warp
        return mat

    def _crop(self, u: dict, h: int, w: int) -> Tensor:
        """Random resized crop (area in [min_scale, 1], ratio in [1/max_aspect, max_aspect])."""
        n = u["crop_x"].shape[0]
        dev = u["crop_x"].device
        if self.cfg.min_scale >= 1.0:
            one = torch.ones(n, device=dev)
            return _affine(one, 0.0 * one, 0.0 * one, 0.0 * one, one, 0.0 * one)
        area = self.cfg.min_scale + (1.0 - self.cfg.min_scale) * u["scale"]
        ratio_range = (1.0 / self.cfg.max_aspect, self.cfg.max_aspect)
        lo, hi = math.log(ratio_range[0]), math.log(ratio_range[1])
        ratio = torch.exp(lo + (hi - lo) * u["ratio"])
        fw = torch.sqrt(area * ratio * h / w)  # crop width as a fraction of the image width
        fh = torch.sqrt(area / ratio * w / h)
        ok = (fw <= 1.0) & (fh <= 1.0)
        first = ok.float().argmax(dim=1, keepdim=True)  # argmax returns the first acceptable try
        fw_try = fw.gather(1, first)[:, 0]
        fh_try = fh.gather(1, first)[:, 0]
        # torchvision's fallback: the whole image, aspect ratio clamped into the allowed range.
        in_ratio = w / h
        fb_w = min(1.0, ratio_range[1] / in_ratio)
        fb_h = min(1.0, in_ratio / ratio_range[0])
        any_ok = ok.any(dim=1)
        fw = torch.where(any_ok, fw_try, torch.full_like(fw_try, fb_w))
        fh = torch.where(any_ok, fh_try, torch.full_like(fh_try, fb_h))
        tx = (1.0 - fw) * (2 * u["crop_x"] - 1)
        ty = (1.0 - fh) * (2 * u["crop_y"] - 1)
        return _affine(fw, 0.0 * fw, tx, 0.0 * fw, fh, ty)

    def _grid(self, mat: Tensor, device: torch.device) -> Tensor:
        base = self._base_grid.get(device)
        if base is None:
            # Output pixel centres in normalised coordinates (align_corners=False convention).
            idx = torch.arange(self.size, device=device, dtype=torch.float32)
            t = (idx * 2 + 1) / self.size - 1
            yy, xx = torch.meshgrid(t, t, indexing="ij")
            base = torch.stack([xx, yy, torch.ones_like(xx)], dim=-1).reshape(-1, 3)
            self._base_grid[device] = base
        pts = torch.einsum("nij,pj->npi", mat, base)
        denom = pts[..., 2:]
        denom = torch.where(denom.abs() < 1e-6, torch.full_like(denom, 1e-6), denom)
        xy = pts[..., :2] / denom
        return xy.reshape(mat.shape[0], self.size, self.size, 2)

    # --- lighting --------------------------------------------------------------------------------

    def _lighting(self, x: Tensor, u: dict) -> Tensor:
        c = self.cfg
        if c.max_lighting <= 0 or c.p_lighting <= 0:
            return x
        bright_on = u["p_bright"] < c.p_lighting
        contrast_on = u["p_contrast"] < c.p_lighting
        # fastai: brightness b ~ U(0.5 (1 - m), 0.5 (1 + m)) added as logit(b);
        # contrast ~ log-uniform in [1 - m, 1 / (1 - m)] multiplies the logits.
        b = 0.5 * (1 - c.max_lighting) + c.max_lighting * u["bright"]
        shift = torch.where(bright_on, torch.logit(b), torch.zeros_like(b))
        log_c = math.log(1 - c.max_lighting)
        scale = torch.exp(log_c + (-2 * log_c) * u["contrast"])
        scale = torch.where(contrast_on, scale, torch.ones_like(scale))
        lit = torch.sigmoid(
            torch.logit(x, eps=_LOGIT_EPS) * scale[:, None, None, None] + shift[:, None, None, None]
        )
        changed = (bright_on | contrast_on)[:, None, None, None]
        return torch.where(changed, lit, x)  # untouched images keep their exact values


def alternating_flip(x: Tensor, epoch: int) -> Tensor:
    """A flip draw (< 0.5 mirrors) that mirrors each image on every other epoch.

    Which half of the images starts mirrored comes from the parity of each image's pixel sum:
    a property of the image itself, so no sample index has to travel with the batch, and the
    same image gets the same answer every epoch. Uint8 (N, H, W, C) in, float (N,) out.
    """
    parity = x.sum(dim=(1, 2, 3), dtype=torch.int64) % 2
    mirrored = (parity + epoch) % 2 == 1
    return torch.where(mirrored, 0.0, 1.0).to(torch.float32)


def _affine(a: Tensor, b: Tensor, c: Tensor, d: Tensor, e: Tensor, f: Tensor) -> Tensor:
    """Batch of [[a, b, c], [d, e, f], [0, 0, 1]]."""
    zero = torch.zeros_like(a)
    one = torch.ones_like(a)
    return torch.stack([a, b, c, d, e, f, zero, zero, one], dim=1).reshape(-1, 3, 3)


def _homography_from_corners(mx: Tensor, my: Tensor) -> Tensor:
    """The perspective map taking the corners of [-1, 1]^2 to fastai's warped corners."""
    src = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], device=mx.device)
    dst = torch.stack(
        [
            torch.stack([-1 - my, -1 - mx], dim=-1),
            torch.stack([-1 + my, 1 + mx], dim=-1),
            torch.stack([1 + my, -1 + mx], dim=-1),
            torch.stack([1 - my, 1 - mx], dim=-1),
        ],
        dim=1,
    )  # (N, 4, 2)
    n = mx.shape[0]
    u, v = src[:, 0].expand(n, 4), src[:, 1].expand(n, 4)
    X, Y = dst[..., 0], dst[..., 1]  # noqa: N806 - the usual names for target coordinates
    zero, one = torch.zeros_like(X), torch.ones_like(X)
    rows_x = torch.stack([u, v, one, zero, zero, zero, -u * X, -v * X], dim=-1)
    rows_y = torch.stack([zero, zero, zero, u, v, one, -u * Y, -v * Y], dim=-1)
    a = torch.cat([rows_x, rows_y], dim=1)  # (N, 8, 8)
    rhs = torch.cat([X, Y], dim=1)  # (N, 8)
    coef, _ = torch.linalg.solve_ex(a, rhs)  # no host sync on the singular-matrix check
    return torch.cat([coef, torch.ones_like(coef[:, :1])], dim=1).reshape(-1, 3, 3)
