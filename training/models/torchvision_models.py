"""torchvision classification models, re-cut into Classifier's body groups + head.

torchvision's forward() does the pooling and flattening inline, so each family needs to say
where its feature extractor ends and its classifier begins; FAMILIES does that for the CNN
families, Swin and MaxViT (not ViT, GoogLeNet, Inception or SqueezeNet, whose forward() is more
than a chain of modules). Pretrained weights never download: ``weights=None`` always, and a local
state dict in torchvision's own format is loaded into the torchvision module before it is cut up.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import nn

# (body groups, head layers before the final Linear, the final Linear)
Split = tuple[list[nn.Module], list[nn.Module], nn.Linear]


def _pool_flatten() -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten()]


def _chunks(modules: list[nn.Module], n_groups: int) -> list[nn.Module]:
    """Contiguous, near-equal groups (by module count) as nn.Sequentials."""
    n_groups = min(n_groups, len(modules))
    return [nn.Sequential(*[modules[i] for i in idx])
            for idx in np.array_split(np.arange(len(modules)), n_groups)]


def _features_groups(features: nn.Sequential, n_stem: int = 1) -> list[nn.Module]:
    """Stem (first n_stem children) then the rest in three groups."""
    children = list(features.children())
    return [nn.Sequential(*children[:n_stem]), *_chunks(children[n_stem:], 3)]


def _resnet(m: nn.Module) -> Split:
    stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
    return [stem, m.layer1, m.layer2, m.layer3, m.layer4], _pool_flatten(), m.fc


def _regnet(m: nn.Module) -> Split:
    return [m.stem, *m.trunk_output.children()], _pool_flatten(), m.fc


def _shufflenet(m: nn.Module) -> Split:
    groups = [nn.Sequential(m.conv1, m.maxpool), m.stage2, m.stage3,
              nn.Sequential(m.stage4, m.conv5)]
    return groups, _pool_flatten(), m.fc


def _features_classifier(m: nn.Module) -> Split:
    """mobilenet_v2/v3, efficientnet(_v2): features -> global pool -> classifier[..., Linear]."""
    return _features_groups(m.features), [*_pool_flatten(), *m.classifier[:-1]], m.classifier[-1]


def _mnasnet(m: nn.Module) -> Split:
    return (_features_groups(m.layers, n_stem=3), [*_pool_flatten(), *m.classifier[:-1]],
            m.classifier[-1])


def _densenet(m: nn.Module) -> Split:
    # torchvision applies F.relu after the features; the head carries it as a module.
    return _features_groups(m.features, n_stem=4), [nn.ReLU(), *_pool_flatten()], m.classifier


def _vgg(m: nn.Module) -> Split:
    # AdaptiveAvgPool2d(7) (6 for alexnet) then the big fully connected layers, as torchvision.
    return (_features_groups(m.features), [m.avgpool, nn.Flatten(), *m.classifier[:-1]],
            m.classifier[-1])


def _convnext(m: nn.Module) -> Split:
    # classifier = LayerNorm2d, Flatten, Linear: it normalises the pooled (N, C, 1, 1) map.
    return _features_groups(m.features), [m.avgpool, *m.classifier[:-1]], m.classifier[-1]


def _swin(m: nn.Module) -> Split:
    # features end channels-last; norm, permute to NCHW, pool, flatten, as torchvision.
    return _features_groups(m.features), [m.norm, m.permute, m.avgpool, m.flatten], m.head


def _maxvit(m: nn.Module) -> Split:
    # classifier = pool, flatten, LayerNorm, Linear, Tanh, Linear.
    return [m.stem, *m.blocks], list(m.classifier[:-1]), m.classifier[-1]


# name prefix -> how to cut the model; longest prefix wins.
FAMILIES: dict[str, Callable[[nn.Module], Split]] = {
    "resnet": _resnet,
    "resnext": _resnet,
    "wide_resnet": _resnet,
    "regnet_": _regnet,
    "shufflenet_v2": _shufflenet,
    "mobilenet_v2": _features_classifier,
    "mobilenet_v3": _features_classifier,
    "efficientnet": _features_classifier,
    "mnasnet": _mnasnet,
    "densenet": _densenet,
    "vgg": _vgg,
    "alexnet": _vgg,
    "convnext": _convnext,
    "swin": _swin,
    "maxvit": _maxvit,
}


def family_of(name: str) -> Callable[[nn.Module], Split] | None:
    matches = [p for p in FAMILIES if name.startswith(p)]
    return FAMILIES[max(matches, key=len)] if matches else None


def supported_torchvision_models() -> list[str]:
    """torchvision classification model names this module can cut into body + head."""
    import torchvision

    return sorted(n for n in torchvision.models.list_models(module=torchvision.models)
                  if family_of(n) is not None)


def build_torchvision(name: str, n_classes: int) -> nn.Module:
    """torchvision.models.get_model(name, weights=None) with an n_classes final layer."""
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=n_classes)


def split_torchvision(name: str, model: nn.Module) -> Split:
    """(body groups, head layers before the final Linear, final Linear), sharing model's modules."""
    cut = family_of(name)
    if cut is None:
        raise KeyError(name)
    groups, pre, final = cut(model)
    if not isinstance(final, nn.Linear):
        raise TypeError(f"{name}: expected the classifier to end in nn.Linear, got {final}")
    return groups, pre, final


def final_layer_name(model: nn.Module, final: nn.Linear) -> str:
    """The dotted name of ``final`` inside ``model`` (e.g. 'fc', 'classifier.3')."""
    for name, module in model.named_modules():
        if module is final:
            return name
    raise ValueError("final layer not found in model")
