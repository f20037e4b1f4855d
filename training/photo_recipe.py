"""The default photo recipe: what ``training fit --data photos/`` trains without ``--config``, and
what ``training recipe --data photos/`` prints to save and edit.

fastai's ``vision_learner(dls, resnet34, metrics=accuracy).fine_tune(n)`` with
``item_tfms=Resize(460), batch_tfms=aug_transforms(size=224, min_scale=0.75)`` (fastbook's pets),
translated key by key:

- a torchvision resnet34 (``--arch resnet18`` for a smaller one), with its published ImageNet
  weights when they can be had (``model.pretrained = "auto"``), else from scratch with a
  one-line warning; normalised with the weights' own statistics (ImageNet's);
- presize 460 on the CPU, then random resized crops of at least 75% of it to 224 on the device
  (``RandomSplitter(valid_pct=0.2, seed=42)`` for the split);
- ``aug_transforms``' defaults otherwise: flips, rotate 10 degrees, zoom 1.1, warp 0.2,
  lighting 0.2, each with probability 0.75;
- ``fine_tune``: one frozen epoch (head only) at ``base_lr`` 2e-3, then the whole network at
  half of it with discriminative learning rates over ``lr_mult`` 100, AdamW with weight decay
  0.01, no label smoothing or MixUp (fastai's ``vision_learner`` defaults);
- TTA at the end (the centre, a flip and four corner views, centre weighted 0.25 as
  ``learn.tta``'s ``beta``).

How the machine decides sizes and epochs (``train.device``, "auto": the GPU when there is one):

- a CUDA GPU: 224 px from a 460 px presize, batches of 64 (fastai's), 1 frozen + 4 epochs;
- the CPU: 160 px from a 320 px presize (the same 2:1 presize ratio, half the pixels: about half
  the time per image), batches of 32, 1 frozen + 2 epochs -- a first result in minutes on a
  laptop for a few hundred photos, rather than a best one.

Measured here (no GPU, no network, so resnet34 from scratch after the one-line warning): 240
CIFAR-10 cat and dog photos (192 train / 48 valid) with the CPU plan took 165 s of CPU time for
the 1 + 2 epochs and the TTA evaluation (5 min 52 s of wall time on a 2-core VM shared at load
10-14; 2026-12-07, torch 2.15); its 0.58 accuracy is what the warning predicts from scratch.

Against airbench94's options (issue 23; docs/ablation.md, "Photo folders", 2 seeds, photo folders
built from upscaled CIFAR-10 photos, resnet18 at 96 px from scratch): translate TTA views (shifts
of +-3 px and their mirrors) instead of the crops scored 39.4% against 39.9% (+0.4 / -1.4 by
seed), so the crops stay. Nesterov SGD, the whole-run schedule and lookahead helped the
from-scratch chapter-7 recipe (recipes/imagenette.toml uses them), but this recipe is for
fine-tuning published weights, which cannot be measured here (no weights, no network): it keeps
fine_tune's AdamW and two one-cycles until that is measured.

The checkpoint kept is the last epoch's (``train.select = "last"``, as ``fine_tune`` ends), so
its validation accuracy was not chosen on the validation set.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_ARCH = "resnet34"


@dataclass(frozen=True)
class MachinePlan:
    """The numbers the machine decides: training side and presize (pixels), batch, epochs."""

    device: str
    size: int
    presize: int
    batch_size: int
    epochs: int  # after the one frozen epoch


GPU_PLAN = MachinePlan("a CUDA GPU", size=224, presize=460, batch_size=64, epochs=4)
CPU_PLAN = MachinePlan("the CPU", size=160, presize=320, batch_size=32, epochs=2)


def machine_plan(device: str = "auto") -> MachinePlan:
    """GPU_PLAN where training will run on a CUDA GPU (``device`` "auto" or "cuda"), else
    CPU_PLAN."""
    import torch

    return GPU_PLAN if device != "cpu" and torch.cuda.is_available() else CPU_PLAN


_TEMPLATE = """\
# The default photo recipe (training/photo_recipe.py): fastai's vision_learner(dls, resnet34)
# + fine_tune translated -- ImageNet-pretrained torchvision network, presize then random
# resized crops, aug_transforms' augmentation, 1 frozen epoch then discriminative LRs, TTA.
# Sizes and epochs were chosen for {plan.device}: a CUDA GPU trains 224 px from a 460 px presize,
# batches of 64, 1 + 4 epochs; the CPU 160 px from 320 px, batches of 32, 1 + 2 epochs.
# Not measured in this project (its machines have no network for the ImageNet weights).
#   training fit --config THIS_FILE

[data]
path = {data}
# a `path,label[,is_valid]` file instead of class folders
csv = {csv}
# labels from file names: the regex's first group, e.g. '(.+)_\\d+.jpg$' (pets)
label_regex = {label_regex}
valid_pct = 0.2           # random split when there is no valid/ folder or is_valid column
seed = 42
# pixels: the item stage (decoded once, on the CPU) before the batch's random crops
presize = {plan.presize}
normalize = "imagenet"    # pretrained weights use their own statistics anyway

[model]
arch = "{arch}"
pretrained = "auto"       # published ImageNet weights if cached or downloadable, else scratch

[augment]                 # fastai aug_transforms(min_scale=0.75)
min_scale = 0.75
flip = true
max_rotate = 10.0
max_zoom = 1.1
max_warp = 0.2
max_lighting = 0.2

[train]
output = {output}
device = "{device}"
freeze_epochs = 1         # fine_tune: the head alone first (BatchNorm stays trainable)
lr_mult = 100.0           # then body groups at lr/100 ... lr
weight_decay = 0.01
label_smoothing = 0.0
mixup = 0.0
select = "last"           # keep the last epoch, as fine_tune ends

# one stage: size in pixels, epochs after the frozen one, lr = fine_tune's base_lr (the
# unfrozen epochs use half of it)
[[stages]]
size = {plan.size}
batch_size = {plan.batch_size}
epochs = {plan.epochs}
lr = 2e-3

[tta]                     # crops: translate views scored no better (docs/ablation.md)
views = ["center", "hflip", "top_left", "top_right", "bottom_left", "bottom_right"]
zoom_ratio = 1.15
combine = "mean"
beta = 0.25
"""


def photo_recipe_toml(data: str | Path, *, arch: str = DEFAULT_ARCH, device: str = "auto",
                      csv: str | Path | None = None, label_regex: str = "") -> str:
    """The default photo recipe for ``data`` as commented TOML (what ``training recipe``
    prints and ``fit --data`` without --config trains)."""
    plan = machine_plan(device)
    name = Path(data).resolve().name or "photos"
    return _TEMPLATE.format(plan=plan, data=_toml_str(str(data)), arch=arch, device=device,
                            csv=_toml_str(str(csv or "")), label_regex=_toml_str(label_regex),
                            output=_toml_str(f"runs/{name}"))


def photo_recipe_dict(data: str | Path, **kwargs: Any) -> dict[str, Any]:
    """The same recipe as the raw dict a recipe file reads into (``--set`` applies to it)."""
    return tomllib.loads(photo_recipe_toml(data, **kwargs))


def _toml_str(value: str) -> str:
    # a JSON string is a valid TOML basic string (same escapes)
    return json.dumps(value, ensure_ascii=False)
