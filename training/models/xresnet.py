"""xresnet: the "bag of tricks" ResNet (He et al. 2018) as fastai builds it, for training from
scratch.

What differs from torchvision's ResNet, and why:
- stem of three 3x3 convs (3 -> 32 -> 32 -> 64, the first with stride 2) instead of one 7x7:
  same receptive field, more non-linearity, cheaper;
- downsampling shortcuts are AvgPool(2) then a 1x1 conv, so no activations are thrown away
  (a strided 1x1 conv reads one pixel in four);
- the last BatchNorm of every residual branch starts at zero, so each block starts as the
  identity and deep nets train stably at high learning rates;
- Kaiming-normal init for every conv and linear layer, zero biases.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


def conv_bn(ni: int, nf: int, ks: int = 3, stride: int = 1, *, act: bool = True,
            zero_bn: bool = False) -> nn.Sequential:
    """conv (no bias) -> BatchNorm (gamma 0 if zero_bn) -> ReLU (if act): fastai's ConvLayer."""
    bn = nn.BatchNorm2d(nf)
    nn.init.constant_(bn.weight, 0.0 if zero_bn else 1.0)
    nn.init.zeros_(bn.bias)
    layers: list[nn.Module] = [
        nn.Conv2d(ni, nf, ks, stride=stride, padding=ks // 2, bias=False),
        bn,
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """Basic (expansion 1) or bottleneck (expansion 4) residual block, fastai layout.

    ni, nf: input / output widths before expansion (the block maps ni*exp -> nf*exp channels).
    """

    def __init__(self, expansion: int, ni: int, nf: int, stride: int = 1) -> None:
        super().__init__()
        n_in, n_out = ni * expansion, nf * expansion
        if expansion == 1:
            self.convpath = nn.Sequential(
                conv_bn(n_in, nf, 3, stride),
                conv_bn(nf, n_out, 3, act=False, zero_bn=True),
            )
        else:
            self.convpath = nn.Sequential(
                conv_bn(n_in, nf, 1),
                conv_bn(nf, nf, 3, stride),
                conv_bn(nf, n_out, 1, act=False, zero_bn=True),
            )
        idpath: list[nn.Module] = []
        if stride != 1:
            idpath.append(nn.AvgPool2d(stride, stride, ceil_mode=True))
        if n_in != n_out:
            idpath.append(conv_bn(n_in, n_out, 1, act=False))
        self.idpath = nn.Sequential(*idpath)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.convpath(x) + self.idpath(x))


def xresnet_body(
    layers: Sequence[int],
    *,
    expansion: int = 1,
    stem_widths: Sequence[int] = (32, 32, 64),
    widths: Sequence[int] = (64, 128, 256, 512),
    c_in: int = 3,
) -> tuple[nn.Sequential, int]:
    """(body, n_features): body = [stem (3 convs + maxpool), stage 1, ..., stage k] as groups."""
    sizes = [c_in, *stem_widths]
    stem = nn.Sequential(
        *[conv_bn(sizes[i], sizes[i + 1], 3, stride=2 if i == 0 else 1) for i in range(3)],
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    # fastai: the first stage's input width is stem_out / expansion, so n_in = stem_out.
    block_widths = [stem_widths[-1] // expansion, *widths]
    stages = []
    for i, n_blocks in enumerate(layers):
        stages.append(
            nn.Sequential(
                *[
                    ResBlock(
                        expansion,
                        block_widths[i] if j == 0 else block_widths[i + 1],
                        block_widths[i + 1],
                        stride=(1 if i == 0 else 2) if j == 0 else 1,
                    )
                    for j in range(n_blocks)
                ]
            )
        )
    body = nn.Sequential(stem, *stages)
    init_cnn(body)
    return body, block_widths[-1] * expansion


def init_cnn(module: nn.Module) -> None:
    """Kaiming-normal conv/linear weights and zero biases (BatchNorm weights untouched)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# name -> (blocks per stage, expansion, stem widths, stage widths)
XRESNET_CONFIGS: dict[str, tuple[tuple[int, ...], int, tuple[int, ...], tuple[int, ...]]] = {
    "xresnet18": ((2, 2, 2, 2), 1, (32, 32, 64), (64, 128, 256, 512)),
    "xresnet34": ((3, 4, 6, 3), 1, (32, 32, 64), (64, 128, 256, 512)),
    "xresnet50": ((3, 4, 6, 3), 4, (32, 32, 64), (64, 128, 256, 512)),
    # one block per stage, narrow: trains 8x8 digits (upscaled to 16-32 px) in seconds on a CPU
    "xresnet_tiny": ((1, 1, 1, 1), 1, (16, 16, 16), (16, 32, 64, 128)),
}


def build_xresnet(name: str) -> tuple[nn.Sequential, int]:
    """(body, n_features) for one of XRESNET_CONFIGS."""
    layers, expansion, stem_widths, widths = XRESNET_CONFIGS[name]
    return xresnet_body(layers, expansion=expansion, stem_widths=stem_widths, widths=widths)
