"""Initialisations from airbench94 (K. Jordan, arXiv 2404.00498), our own code, as recipe options.

- ``whiten_stem``: the first convolution's filters become the whitening transform of the
  training data's patches (the eigenvectors of their covariance, divided by the square root of
  the eigenvalues, each filter also negated, so GELU keeps both signs). The network starts from
  decorrelated, unit-variance inputs; the filters stay frozen (training.callbacks.StemFreeze).
  airbench's ablation: 35 -> 22 epochs to 94%.
- ``dirac_init``: every later convolution's first ``in_channels`` filters are the identity
  (``torch.nn.init.dirac_``), so at initialisation each block passes its input through and
  the signal reaches the head undamped. airbench: 22 -> 18 epochs.
- ``fix_bn_weights``: BatchNorm without a trainable scale (airbench trains only the biases).
  The weight becomes a buffer of ones under the same name, so checkpoints, ONNX export and
  models built without the option read the same state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.models.classifier import BN_TYPES, Classifier

WHITEN_EPS = 5e-4  # added to the eigenvalues: the flattest directions are not blown up


def stem_conv(model: Classifier) -> nn.Conv2d:
    """The first convolution of the body (the layer whitening replaces)."""
    for m in model.body[0].modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise ValueError(f"{model.arch!r} has no convolution in its stem to whiten")


@torch.no_grad()
def whitening_filters(images: Tensor, kernel: int, n_filters: int,
                      eps: float = WHITEN_EPS) -> Tensor:
    """(n_filters, C, k, k) whitening filters from normalised float images (N, C, H, W)."""
    c = images.shape[1]
    dim = c * kernel * kernel
    if n_filters % 2 or n_filters // 2 > dim:
        raise ValueError(f"whitening needs an even number of filters <= {2 * dim} for a "
                         f"{kernel}x{kernel} stem on {c} channels, the stem has {n_filters}")
    patches = F.unfold(images.double(), kernel).transpose(1, 2).reshape(-1, dim)
    patches = patches - patches.mean(0)
    cov = patches.T @ patches / len(patches)
    eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
    order = eigvals.argsort(descending=True)[: n_filters // 2]
    filters = eigvecs[:, order].T / torch.sqrt(eigvals[order, None] + eps)
    filters = filters.reshape(-1, c, kernel, kernel)
    return torch.cat([filters, -filters]).float()


@torch.no_grad()
def whiten_stem(model: Classifier, images_uint8_nhwc: Tensor, max_images: int = 5000) -> None:
    """Set the stem convolution to whiten ``images`` (the training split, uint8 NHWC) as the
    model's own normalisation sees them; its bias starts at zero."""
    conv = stem_conv(model)
    if conv.in_channels != images_uint8_nhwc.shape[-1] or conv.groups != 1:
        raise ValueError("whitening needs a plain RGB stem convolution")
    x = images_uint8_nhwc[:max_images].to(conv.weight.device)
    x = model.normalize(x.permute(0, 3, 1, 2).float() / 255.0)
    conv.weight.copy_(whitening_filters(x, conv.kernel_size[0], conv.out_channels))
    if conv.bias is not None:
        conv.bias.zero_()


@torch.no_grad()
def dirac_init(model: Classifier) -> int:
    """Identity filters in every convolution after the stem; returns how many it set."""
    stem = stem_conv(model)
    count = 0
    for m in model.body.modules():
        if isinstance(m, nn.Conv2d) and m is not stem and m.groups == 1 \
                and m.out_channels >= m.in_channels:
            nn.init.dirac_(m.weight[: m.in_channels])
            count += 1
    return count


def fix_bn_weights(model: nn.Module) -> int:
    """BatchNorm scales fixed at 1 (buffers, same names); returns how many layers changed."""
    count = 0
    for m in model.modules():
        if isinstance(m, BN_TYPES) and isinstance(m.weight, nn.Parameter):
            ones = torch.ones_like(m.weight.data)
            del m.weight
            m.register_buffer("weight", ones)
            count += 1
    return count
