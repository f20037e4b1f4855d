"""training.augment: the batch augmentation's contract and the exact validation conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from service.imaging import to_model_input
from training.augment import AugmentConfig, BatchAugment, to_float_nchw

OFF = AugmentConfig(min_scale=1.0, flip=False, flip_vert=False, max_rotate=0.0, max_zoom=1.0,
                    max_warp=0.0, max_lighting=0.0, p_affine=0.0, p_lighting=0.0)


def _batch(n: int = 8, h: int = 40, w: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g)


def _ramp(n: int, size: int) -> torch.Tensor:
    """Every row 0..255 left to right: a horizontal coordinate you can read off the pixels."""
    row = torch.linspace(0, 255, size).round().to(torch.uint8)
    return row.view(1, 1, size, 1).expand(n, size, size, 3).contiguous()


def test_to_float_nchw_is_exactly_to_model_input() -> None:
    x = (torch.arange(6 * 8 * 8 * 3) % 256).to(torch.uint8).view(6, 8, 8, 3)
    got = to_float_nchw(x)
    assert got.dtype == torch.float32 and got.shape == (6, 3, 8, 8)
    np.testing.assert_array_equal(got.numpy(), to_model_input(x.numpy()))
    views = _batch(4, 5, 5).view(2, 2, 5, 5, 3)
    np.testing.assert_array_equal(to_float_nchw(views).numpy(),
                                  to_model_input(views.reshape(4, 5, 5, 3).numpy()))
    every_byte = torch.arange(256, dtype=torch.uint8).view(1, 1, 256, 1).expand(1, 1, 256, 3)
    np.testing.assert_array_equal(to_float_nchw(every_byte).numpy(),
                                  to_model_input(every_byte.numpy()))


def test_to_float_nchw_rejects_floats() -> None:
    with pytest.raises(TypeError):
        to_float_nchw(torch.zeros(1, 4, 4, 3))


@pytest.mark.parametrize(("h", "w", "size"), [(40, 40, 32), (48, 36, 24), (20, 20, 20)])
def test_output_shape_dtype_and_range(h: int, w: int, size: int) -> None:
    out = BatchAugment(AugmentConfig(), size)(_batch(16, h, w), torch.Generator().manual_seed(1))
    assert out.shape == (16, 3, size, size) and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.isfinite(out).all()


def test_reproducible_with_the_same_generator_seed() -> None:
    aug = BatchAugment(AugmentConfig(max_lighting=0.4, flip_vert=True), 32)
    x = _batch()
    a = aug(x, torch.Generator().manual_seed(123))
    b = aug(x, torch.Generator().manual_seed(123))
    c = aug(x, torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize(("h", "w", "size"), [(40, 40, 32), (32, 32, 64), (30, 45, 17)])
def test_everything_off_is_a_plain_bilinear_resize(h: int, w: int, size: int) -> None:
    x = _batch(4, h, w)
    out = BatchAugment(OFF, size)(x, torch.Generator().manual_seed(0))
    ref = F.interpolate(to_float_nchw(x), size=(size, size), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_probabilities_zero_switch_everything_off_even_with_ranges_set() -> None:
    cfg = AugmentConfig(min_scale=1.0, flip=False, p_affine=0.0, p_lighting=0.0)
    x = _batch(4)
    out = BatchAugment(cfg, 32)(x, torch.Generator().manual_seed(5))
    ref = F.interpolate(to_float_nchw(x), size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_flip_mirrors_about_half_the_images() -> None:
    cfg = AugmentConfig(**{**OFF.to_dict(), "flip": True})
    x = _batch(64, 16, 16)
    out = BatchAugment(cfg, 16)(x, torch.Generator().manual_seed(0))
    plain = to_float_nchw(x)
    same = [torch.allclose(o, p, atol=1e-5) for o, p in zip(out, plain, strict=True)]
    flipped = [torch.allclose(o, p.flip(-1), atol=1e-5) for o, p in zip(out, plain, strict=True)]
    assert all(s != f for s, f in zip(same, flipped, strict=True))  # each exactly one of the two
    assert 16 < sum(flipped) < 48


def test_random_resized_crop_keeps_orientation_and_crops_inside() -> None:
    """On a left-to-right ramp a crop is a steeper ramp over a sub-range, never reversed."""
    cfg = AugmentConfig(**{**OFF.to_dict(), "min_scale": 0.35})
    size = 64
    out = BatchAugment(cfg, size)(_ramp(32, size), torch.Generator().manual_seed(3))[:, 0]
    rows = out[:, size // 2]  # (N, size): the middle row of each image
    assert (rows.diff(dim=1) >= -1e-6).all()  # no flips, no rotation in this config
    span = rows[:, -1] - rows[:, 0]
    assert (span < 0.999).all() and (span > 0.3).all()  # a real sub-range, not the whole image
    assert (out.std(dim=1) < 1e-5).all()  # columns stay constant: no shear or rotation


def test_geometry_and_lighting_change_the_batch_but_stay_in_range() -> None:
    cfg = AugmentConfig(min_scale=1.0, flip=False, max_rotate=30, max_zoom=1.5, max_warp=0.3,
                        max_lighting=0.5, p_affine=1.0, p_lighting=1.0)
    x = _batch(8, 32, 32)
    out = BatchAugment(cfg, 32)(x, torch.Generator().manual_seed(0))
    plain = to_float_nchw(x)
    assert all(not torch.allclose(o, p, atol=1e-3) for o, p in zip(out, plain, strict=True))
    assert out.min() > 0.0 and out.max() < 1.0  # logit-space lighting never clips


def test_rejects_float_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment(AugmentConfig(), 8)(torch.zeros(2, 8, 8, 3))


def test_config_checks_ranges() -> None:
    with pytest.raises(ValueError, match="min_scale"):
        AugmentConfig(min_scale=0.0)
    with pytest.raises(ValueError, match="p_affine"):
        AugmentConfig(p_affine=1.5)
