"""timm backbones by name: layer groups, local weights only, and a digits model that trains,
exports and serves with the parity the export promises."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from service.core import CoreConfig, InferenceCore
from training.checkpoint import load_model
from training.cli import main
from training.data import Items, load_items
from training.errors import ConfigError
from training.evaluate import predict
from training.models import build_model
from training.models.timm_models import save_timm_state

RECIPE = Path(__file__).parents[2] / "recipes" / "digits.toml"
ARCH = "timm/test_resnet"  # timm's own tiny test network: seconds per epoch on a CPU


def test_layer_groups_split_every_parameter_once_stem_to_head():
    model = build_model("timm/resnet10t", 10)
    groups = model.layer_groups()
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert len(groups) == 6  # stem, 4 stages (timm's coarse group_matcher), head
    assert {id(p) for p in groups[-1]} == {id(p) for p in model.head.parameters()}
    model.freeze_body(train_bn=False)
    assert [p.requires_grad for g in groups[:-1] for p in g] == [False] * sum(
        len(g) for g in groups[:-1])
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 10)


def test_local_timm_and_torchvision_weights_load_and_the_classifier_is_replaced(tmp_path):
    path = save_timm_state("timm/resnet10t", tmp_path / "timm.pt")  # 1000-class timm file
    model = build_model("timm/resnet10t", 7, pretrained=path)
    saved = torch.load(path)
    assert torch.equal(model.body.timm_model.conv1[0].weight, saved["conv1.0.weight"])
    assert model.n_classes == 7
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "tv.pt")
    tv = torch.load(tmp_path / "tv.pt")
    model = build_model("timm/resnet18", 3, pretrained=tmp_path / "tv.pt")
    assert torch.equal(model.body.timm_model.layer4[1].conv2.weight, tv["layer4.1.conv2.weight"])


def test_weights_of_another_arch_or_an_unknown_name_are_config_errors(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "tv.pt")
    with pytest.raises(ConfigError, match=r"does not fit arch 'timm/resnet10t': \d+ missing"):
        build_model("timm/resnet10t", 3, pretrained=tmp_path / "tv.pt")
    with pytest.raises(ConfigError, match="unknown timm model 'no_such_net'"):
        build_model("timm/no_such_net", 3)
    with pytest.raises(ConfigError, match="does not exist.*--pretrained without a path"):
        build_model("timm/resnet10t", 3, pretrained=tmp_path / "missing.pt")


def test_a_timm_model_fine_tunes_on_digits_exports_and_serves_with_parity(
        digits_dir, tmp_path):
    """Fine-tune from a local timm file (frozen epoch, then discriminative LRs), export, then
    the serving core's probabilities equal PyTorch's within 1e-4."""
    weights = save_timm_state(ARCH, tmp_path / "weights.pt")
    out, models = tmp_path / "run", tmp_path / "models"
    assert main(["fit", "--config", str(RECIPE), "--data", str(digits_dir), "--output", str(out),
                 "--arch", ARCH, "--pretrained", str(weights), "--set", "train.freeze_epochs=1",
                 "--set", "train.lr_mult=10", "--set", "stages.0.epochs=3",
                 "--set", "stages.1.epochs=0", "--no-tta"]) == 0
    model, ckpt = load_model(out / "best.pt", torch.device("cpu"))
    assert ckpt.arch == ARCH and ckpt.metrics["accuracy"] >= 0.85  # chance is 0.10
    # --no-calibrate: this checks the served graph against torch (calibration is tested apart)
    assert main(["export", str(out / "best.pt"), "--name", "digits_timm", "--models-dir",
                 str(models), "--no-calibrate"]) == 0

    split = load_items(digits_dir, valid_pct=0.2, seed=42)
    picked = list(range(0, len(split.valid.paths), 30))
    items = Items([split.valid.paths[i] for i in picked], [split.valid.labels[i] for i in picked])
    spec = ckpt.eval_transform
    torch_probs = predict(model, items, eval_spec=spec, tta=None, device=torch.device("cpu"),
                          progress=False).probs
    with InferenceCore.create(CoreConfig(models_dir=models, poll_interval_s=0)) as core:
        answers = [asyncio.run(core.predict(Path(p).read_bytes(), top_k=10))
                   for p in items.paths]
    served = np.stack([a.probabilities for a in answers])
    assert np.abs(served - torch_probs).max() <= 1e-4
    assert (served.argmax(1) == torch_probs.argmax(1)).all()
