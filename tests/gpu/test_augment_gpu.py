"""Batch augmentation on CUDA tensors: seeded by a CUDA generator it repeats exactly, and the
normalised input on the GPU equals the serving image path's (service.imaging.to_model_input)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_cuda_generator_on_cuda_tensors() -> None:
    import torch

    from service.imaging import to_model_input
    from training.augment import AugmentConfig, BatchAugment, to_float_nchw

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 40, 40, 3), dtype=torch.uint8, generator=g).cuda()
    aug = BatchAugment(AugmentConfig(), 32)
    a = aug(x, torch.Generator(device="cuda").manual_seed(0))
    b = aug(x, torch.Generator(device="cuda").manual_seed(0))
    assert a.is_cuda and a.shape == (8, 3, 32, 32) and torch.equal(a, b)
    np.testing.assert_array_equal(to_float_nchw(x).cpu().numpy(), to_model_input(x.cpu().numpy()))
