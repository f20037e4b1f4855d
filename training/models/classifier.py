"""The one module shape every trained model has: normalize -> body -> head.

Normalisation lives inside the model (``Classifier.normalize``, mean/std as buffers) so it is part
of the exported ONNX graph: the service feeds [0, 1] pixels and cannot get the statistics wrong.
The body is an nn.Sequential of layer groups (stem first) so freezing and discriminative learning
rates (fastbook ch. 5/7) work the same for every architecture; the head ends in one nn.Linear
that ``reset_head`` replaces when the class list changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class Normalize(nn.Module):
    """(x - mean) / std per channel, on [0, 1] NCHW floats."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {mean} and {std}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class Scale(nn.Module):
    """Multiplies its input by a constant: airbench94's logit scaling (x 1/9), placed before the
    head's Linear so ``head[-1]`` stays the Linear. With a zero-bias head that is the logits
    scaled; the softmax starts flatter and the loss's gradients on the body are steadier."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


def add_logit_scale(model: Classifier, factor: float) -> Classifier:
    """Scale the head's input by ``factor`` (1 leaves the model as it is)."""
    if factor != 1.0:
        model.head.insert(len(model.head) - 1, Scale(factor))
    return model


def init_linear(layer: nn.Linear) -> nn.Linear:
    """Kaiming-normal weights, zero bias (fastai's head init)."""
    nn.init.kaiming_normal_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class Classifier(nn.Module):
    """normalize -> body (nn.Sequential of layer groups) -> head (..., nn.Linear) -> logits.

    head must be an nn.Sequential whose last module is the nn.Linear(n_features, n_classes).
    """

    def __init__(
        self, normalize: Normalize, body: nn.Sequential, head: nn.Sequential, *, arch: str = ""
    ) -> None:
        super().__init__()
        if not isinstance(head, nn.Sequential) or not isinstance(head[-1], nn.Linear):
            raise TypeError("Classifier head must be an nn.Sequential ending in nn.Linear")
        self.normalize = normalize
        self.body = body
        self.head = head
        self.arch = arch
        self.n_features: int = head[-1].in_features

    @property
    def n_classes(self) -> int:
        return self.head[-1].out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(self.normalize(x)))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Body groups (stem ... last stage), then the head: every parameter exactly once."""
        return [list(g.parameters()) for g in self.body] + [list(self.head.parameters())]

    def freeze_body(self, train_bn: bool = True) -> None:
        """Train only the head (and, with train_bn, the body's BatchNorm layers, as fastai does:
        their statistics must adapt to the new data)."""
        for module in self.body.modules():
            trainable = train_bn and isinstance(module, BN_TYPES)
            for p in module.parameters(recurse=False):
                p.requires_grad_(trainable)
        for p in self.head.parameters():
            p.requires_grad_(True)

    def unfreeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(True)

    def reset_head(self, n_classes: int) -> None:
        """A new final Linear for a different class list (kept on the old one's device/dtype)."""
        old = self.head[-1]
        new = init_linear(nn.Linear(self.n_features, n_classes))
        self.head[-1] = new.to(device=old.weight.device, dtype=old.weight.dtype)


def make_head(n_features: int, n_classes: int, *, dropout: float = 0.0,
              pre: Sequence[nn.Module] | None = None) -> nn.Sequential:
    """pool -> flatten -> (dropout) -> Linear; ``pre`` replaces pool + flatten when given."""
    layers = list(pre) if pre is not None else [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(init_linear(nn.Linear(n_features, n_classes)))
    return nn.Sequential(*layers)
