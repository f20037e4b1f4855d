"""Models: xresnets trained from scratch, or torchvision classifiers, all as a Classifier.

Every model is ``Classifier(normalize -> body -> head)``. Normalisation (mean/std) is inside the
module, hence inside the exported ONNX graph: its input is [0, 1] NCHW RGB, the contract in
docs/architecture.md. ``pretrained="imagenet"`` (or ``"auto"``) takes the arch's published
weights through the ecosystem's caches (training.models.hub_weights); ``pretrained=PATH`` reads
a local file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.data.stats import IMAGENET_MEAN, IMAGENET_STD
from training.errors import ConfigError
from training.models import hub_weights
from training.models.classifier import (
    Classifier,
    Normalize,
    add_logit_scale,
    init_linear,
    make_head,
)
from training.models.small_photo_nets import (
    SMALL_PHOTO_CONFIGS,
    build_small_photo_net,
    global_max_pool,
)
from training.models.timm_models import build_timm_body, is_timm_arch
from training.models.torchvision_models import (
    build_torchvision,
    family_of,
    final_layer_name,
    split_torchvision,
    supported_torchvision_models,
)
from training.models.xresnet import XRESNET_CONFIGS, build_xresnet

logger = logging.getLogger(__name__)

__all__ = [
    "Classifier",
    "Normalize",
    "available_archs",
    "build_model",
    "evaluated_state",
    "init_linear",
    "load_pretrained",
]

_MAX_KEYS_LISTED = 5
_EMA_PREFIX = "module."  # torch.optim.swa_utils.AveragedModel keeps the model as .module
_ARCH_HINT = ("use xresnet18/34/50, xresnet_tiny, airbench (small photos) or a torchvision "
              "classification model such as resnet50 (training.models.available_archs() lists "
              "them)")


def available_archs() -> list[str]:
    """Our xresnets, then every torchvision classification model that can be cut into groups."""
    return [*XRESNET_CONFIGS, *SMALL_PHOTO_CONFIGS, *supported_torchvision_models()]


def build_model(
    arch: str,
    n_classes: int,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    pretrained: str | Path | None = None,
    dropout: float = 0.0,
    logit_scale: float = 1.0,
) -> Classifier:
    """A Classifier for ``arch`` with an ``n_classes`` head.

    pretrained: "imagenet": the arch's published weights (torchvision's weights enum DEFAULT,
        timm's default tag), from the torch.hub / Hugging Face cache or downloaded into it;
        "auto": the same, or from scratch with a warning when they cannot be had; or a local
        state dict -- torchvision's format for torchvision archs, or a Classifier state /
        tta-serve checkpoint (its EMA weights when it has them) for any arch. A final layer with
        a different class count is dropped (a new head is trained); any other mismatch is a
        ConfigError. The given mean/std win over the weights' (pass the ones they were trained
        with: hub_weights.weights_stats for the published ones).
    dropout: probability of a Dropout before the final Linear (0 = none, fastai's xresnet).
    logit_scale: multiply the head's input (so the logits' weight part) by this (airbench: 1/9).
    """
    if n_classes < 1:
        raise ConfigError(f"n_classes must be >= 1, got {n_classes}")
    normalize = Normalize(mean, std)
    named = hub_weights.is_weights_name(pretrained)
    state = _read_state(pretrained, arch) if pretrained is not None and not named else None

    if arch in XRESNET_CONFIGS:
        _published(arch, pretrained)  # none: an error for "imagenet", a warning for "auto"
        body, n_features = build_xresnet(arch)
        model = Classifier(normalize, body, make_head(n_features, n_classes, dropout=dropout),
                           arch=arch)
    elif arch in SMALL_PHOTO_CONFIGS:
        _published(arch, pretrained)
        body, n_features = build_small_photo_net(arch)
        head = make_head(n_features, n_classes, dropout=dropout, pre=global_max_pool())
        model = Classifier(normalize, body, head, arch=arch)
    elif family_of(arch) is not None:
        tv_state = None if state is None or _is_classifier_state(state) else state
        model = _torchvision_classifier(arch, n_classes, normalize, dropout, pretrained, tv_state)
        state = None if tv_state is not None else state
    elif is_timm_arch(arch):  # "timm/NAME": a timm backbone
        timm_state = None if state is None or _is_classifier_state(state) else state
        body, n_features = build_timm_body(arch, state=timm_state, source=pretrained,
                                           weights_file=_published(arch, pretrained))
        state = None if timm_state is not None else state
        model = Classifier(normalize, body, make_head(n_features, n_classes, dropout=dropout,
                                                      pre=[nn.Flatten()]), arch=arch)
    else:
        raise ConfigError(f"unknown arch {arch!r}; {_ARCH_HINT}")
    if state is not None:
        if not _is_classifier_state(state):
            raise ConfigError(
                f"{pretrained} is not a Classifier state dict or tta-serve checkpoint; "
                f"torchvision-format weights only fit torchvision archs, not {arch!r}"
            )
        _load_matching(model, state, f"head.{len(model.head) - 1}", pretrained, arch)
    return add_logit_scale(model, logit_scale)


def _torchvision_classifier(arch: str, n_classes: int, normalize: Normalize, dropout: float,
                            pretrained: object, tv_state: Mapping[str, torch.Tensor] | None
                            ) -> Classifier:
    """The torchvision model with its published weights or a torchvision-format state dict
    loaded (final layer dropped for another class count), then cut into body groups + head."""
    try:
        tv = build_torchvision(arch, n_classes)
    except ValueError as e:  # a family prefix but no such model ("resnet9000")
        raise ConfigError(f"unknown arch {arch!r} ({e}); {_ARCH_HINT}") from e
    groups, pre, final = split_torchvision(arch, tv)
    published = _published(arch, pretrained)
    if published is not None:
        _load_matching(tv, published, final_layer_name(tv, final),
                       f"{arch}'s published weights", arch)
    if tv_state is not None:
        _load_matching(tv, tv_state, final_layer_name(tv, final), pretrained, arch)
    head = nn.Sequential(*pre, *([nn.Dropout(dropout)] if dropout > 0 else []), final)
    return Classifier(normalize, nn.Sequential(*groups), head, arch=arch)


def load_pretrained(model: Classifier, path: str | Path) -> None:
    """Load a Classifier state / checkpoint from ``path`` into ``model`` (head dropped if the class
    count differs)."""
    state = _read_state(path, model.arch)
    if not _is_classifier_state(state):
        raise ConfigError(f"{path} is not a Classifier state dict or tta-serve checkpoint")
    _load_matching(model, state, f"head.{len(model.head) - 1}", path, model.arch)


def _published(arch: str, pretrained: object) -> Any:
    """The published weights ``pretrained`` names (hub_weights.resolve), else None."""
    if not hub_weights.is_weights_name(pretrained):
        return None
    return hub_weights.resolve(arch, str(pretrained))


def evaluated_state(checkpoint: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    """The weights a tta-serve checkpoint's training evaluated: the EMA copy when it carries one
    (last.pt with train.ema > 0; torch's AveragedModel keeps the model as ``module.``), else
    ``model`` (best.pt's ``model`` already is the evaluated one)."""
    ema = checkpoint.get("ema")
    if isinstance(ema, Mapping) and any(k.startswith(_EMA_PREFIX) for k in ema):
        return {k.removeprefix(_EMA_PREFIX): v for k, v in ema.items()
                if k.startswith(_EMA_PREFIX)}
    return checkpoint["model"]


def _read_state(path: str | Path, arch: str) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"pretrained weights file {p} does not exist (save a torchvision or timm state dict "
            "or a tta-serve checkpoint there first, or use --pretrained without a path for the "
            "arch's published ImageNet weights)"
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise ConfigError(f"cannot read pretrained weights {p}: {e}") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        if obj.get("arch") not in (None, arch):
            raise ConfigError(f"{p} holds a {obj['arch']!r} checkpoint, not {arch!r}")
        obj = evaluated_state(obj)  # as evaluate and export read a checkpoint
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(v, torch.Tensor) for v in obj.values()
    ):
        raise ConfigError(f"{p} does not contain a state dict (name -> tensor)")
    # DataParallel / DDP and torch.compile wrap the names; the weights are the same.
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def _is_classifier_state(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("body.", "head.")) for k in state)


def _load_matching(
    module: nn.Module, state: Mapping[str, torch.Tensor], final: str, path: object, arch: str
) -> None:
    """Load ``state`` strictly except for the final layer (dropped when its shape differs) and
    the normalisation buffers (the caller's mean/std are kept)."""
    own = module.state_dict()
    state = dict(state)
    for k in [k for k in state if k.startswith("normalize.")]:
        if k in own and not torch.allclose(state[k].float(), own[k].float()):
            logger.warning(
                "%s was trained with %s = %s; using %s as given", path, k,
                state[k].flatten().tolist(), own[k].flatten().tolist(),
            )
        del state[k]
    final_keys = {k for k in own if k.startswith(final + ".")}
    new_head = any(k in state and state[k].shape != own[k].shape for k in final_keys)
    if new_head:
        logger.info("%s: final layer %s has a different class count; training a new one",
                    path, final)
        for k in final_keys:
            state.pop(k, None)
    missing = [k for k in own if k not in state and not k.startswith("normalize.")
               and not (new_head and k in final_keys)]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
                  if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected),
                           ("wrong shape", mismatched)):
            if keys:
                listed = ", ".join(keys[:_MAX_KEYS_LISTED])
                more = " ..." if len(keys) > _MAX_KEYS_LISTED else ""
                parts.append(f"{len(keys)} {what} ({listed}{more})")
        raise ConfigError(f"{path} does not fit arch {arch!r}: " + "; ".join(parts))
    module.load_state_dict(state, strict=False)
    logger.info("loaded pretrained weights from %s", path)
