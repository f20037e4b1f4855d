"""Optimisers a recipe can choose (``train.optimizer``) and per-kind learning-rate multipliers.

``adamw`` is the chapter-7 recipe's (training.schedule.build_optimizer, unchanged). ``sgd`` is
Nesterov SGD as airbench94 (K. Jordan, arXiv 2404.00498) sets it up, our own code:

- the recipe's lr is in airbench's units: the LR of a loss SUMMED over the batch, divided by
  ``kilostep_scale = 1024 (1 + 1/(1 - momentum))`` so the step size does not depend on the
  momentum (with constant gradients Nesterov's steps are 1 + 1/(1 - momentum) times the
  gradient). Our loss is the batch's mean, so torch's lr is ``lr x batch_size / kilostep_scale``;
- weight decay is decoupled from the learning rate: its gradient term moves a parameter by
  ``weight_decay x batch_size / kilostep_scale`` (times the schedule's factor, through the
  momentum like a gradient) whatever its group's LR multiplier: torch's SGD gets
  ``weight_decay / group_lr``, which cancels the group's LR.

``lr_mults`` multiplies the LR of a kind of parameter: ``bn_bias`` (airbench's 64x on the
BatchNorm biases, its third-biggest gain), ``bn_weight``, ``head``, ``stem``. Each layer group
(discriminative LRs) is split by kind, so the two combine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from training.config import OPTIMIZERS
from training.models.classifier import BN_TYPES
from training.schedule import build_optimizer


def kilostep_scale(momentum: float) -> float:
    """airbench's LR unit: 1024 steps of an SGD whose momentum sums to 1 + 1/(1 - momentum)."""
    return 1024 * (1 + 1 / (1 - momentum))


def param_kinds(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its kind (see PARAM_KINDS); BatchNorm first, then head, then stem."""
    kinds: dict[int, str] = {}
    for module in model.modules():
        if isinstance(module, BN_TYPES):
            if isinstance(module.bias, nn.Parameter):
                kinds[id(module.bias)] = "bn_bias"
            if isinstance(module.weight, nn.Parameter):
                kinds[id(module.weight)] = "bn_weight"
    for part, kind in (("head", "head"), ("stem", "stem")):
        sub = _stem(model) if part == "stem" else getattr(model, "head", None)
        for p in sub.parameters() if sub is not None else ():
            kinds.setdefault(id(p), kind)
    for p in model.parameters():
        kinds.setdefault(id(p), "other")
    return kinds


def _stem(model: nn.Module) -> nn.Module | None:
    body = getattr(model, "body", None)
    return body[0] if isinstance(body, nn.Sequential) and len(body) else None


def split_by_kind(model: nn.Module, groups: Sequence[Sequence[nn.Parameter]],
                  lrs: Sequence[float], lr_mults: Mapping[str, float]) -> list[dict]:
    """Each (layer group, lr) split into one torch param group per kind with a multiplier."""
    kinds = param_kinds(model)
    out = []
    for params, lr in zip(groups, lrs, strict=True):
        by_kind: dict[str, list[nn.Parameter]] = {}
        for p in params:
            kind = kinds.get(id(p), "other")
            by_kind.setdefault(kind if kind in lr_mults else "other", []).append(p)
        for kind, ps in by_kind.items():
            out.append({"params": ps, "lr": lr * lr_mults.get(kind, 1.0), "kind": kind})
    return out


def make_optimizer(model: nn.Module, groups: Sequence[Sequence[nn.Parameter]],
                   lrs: Sequence[float], *, name: str = "adamw", weight_decay: float = 0.01,
                   lr_mults: Mapping[str, float] | None = None, momentum: float = 0.85,
                   batch_size: int = 1024) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``groups`` (layer groups) at ``lrs`` (the recipe's units)."""
    lr_mults = dict(lr_mults or {})
    if name == "adamw" and not lr_mults:
        return build_optimizer([list(g) for g in groups], list(lrs), weight_decay)
    param_groups = [g for g in split_by_kind(model, groups, lrs, lr_mults) if g["params"]]
    if name == "adamw":
        opt = build_optimizer([g["params"] for g in param_groups],
                              [g["lr"] for g in param_groups], weight_decay)
        for g, spec in zip(opt.param_groups, param_groups, strict=True):
            g["kind"] = spec["kind"]
        return opt
    if name != "sgd":
        raise ValueError(f"unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")
    scale = kilostep_scale(momentum)
    decay = weight_decay * batch_size / scale  # per step, at the schedule's peak
    for g in param_groups:
        g["lr"] = g["lr"] * batch_size / scale  # x batch_size: our loss is the batch's mean
        g["weight_decay"] = decay / g["lr"]  # torch multiplies it by the group's lr again
    return torch.optim.SGD(param_groups, lr=param_groups[0]["lr"], momentum=momentum,
                           nesterov=True)
