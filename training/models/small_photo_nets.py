"""Networks for small photos (CIFAR-sized, 24-32 px), trained from scratch in minutes.

``airbench``: the network of Keller Jordan's airbench94 (2024), the fastest known route to 94%
on CIFAR-10: a 2x2 stem conv, then three blocks of (conv -> max-pool -> BN -> GELU -> conv ->
BN -> GELU) with widths 64/256/256, global max-pool, one linear layer. No residual
connections: at 32 px, three pooled blocks already see the whole image, and plain convs are
the cheapest FLOPs on a CPU. Measured on the 2-core CI machine (batch 256, channels_last,
fp32): ~225 training images/s, against ~47 for a DAWNBench ResNet-9 (widths 64-512) and
~120 for a half-width ResNet-9 -- which is why the CIFAR recipe uses it.

What we keep from airbench and what we leave: its architecture, BN momentum and GELU; not its
frozen whitening stem, Nesterov-SGD/lookahead schedule or logit scaling, which are specific
to its own training loop -- ours is the chapter-7 recipe (AdamW + one-cycle).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def _conv_group(c_in: int, c_out: int) -> nn.Sequential:
    """conv -> max-pool(2) -> BN -> GELU -> conv -> BN -> GELU: one resolution level."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.MaxPool2d(2),
        _bn(c_out),
        nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        _bn(c_out),
        nn.GELU(),
    )


def _bn(c: int) -> nn.BatchNorm2d:
    # airbench's BN momentum (torch convention): statistics follow the fast-changing weights
    # of a short schedule; eps as torch's default.
    return nn.BatchNorm2d(c, momentum=0.4)


def airbench_body(widths: Sequence[int] = (64, 256, 256),
                  stem_width: int = 24) -> tuple[nn.Sequential, int]:
    """(body, n_features): body = [stem, block 1, block 2, block 3] as layer groups."""
    stem = nn.Sequential(nn.Conv2d(3, stem_width, 2, padding=0, bias=True), nn.GELU())
    sizes = [stem_width, *widths]
    blocks = [_conv_group(sizes[i], sizes[i + 1]) for i in range(len(widths))]
    body = nn.Sequential(stem, *blocks)
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return body, widths[-1]


# name -> (block widths, stem width)
SMALL_PHOTO_CONFIGS: dict[str, tuple[tuple[int, ...], int]] = {
    "airbench": ((64, 256, 256), 24),
    # half the widths: ~5x faster on a CPU, for tests and quick experiments
    "airbench_small": ((32, 128, 128), 24),
}


def build_small_photo_net(name: str) -> tuple[nn.Sequential, int]:
    widths, stem_width = SMALL_PHOTO_CONFIGS[name]
    return airbench_body(widths, stem_width)


def global_max_pool() -> list[nn.Module]:
    """airbench's head pooling (max, not average): the strongest evidence of a part wins."""
    return [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
