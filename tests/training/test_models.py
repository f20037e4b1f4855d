"""training.models: xresnet structure and init, torchvision wrapping, groups, freezing, weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from training.errors import ConfigError
from training.models import Classifier, available_archs, build_model
from training.models.torchvision_models import build_torchvision, split_torchvision
from training.models.xresnet import ResBlock

XRESNETS = ["xresnet18", "xresnet34", "xresnet50", "xresnet_tiny"]
IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def _params(groups: list[list[nn.Parameter]]) -> list[int]:
    return [id(p) for g in groups for p in g]


@pytest.fixture(scope="module")
def xresnets() -> dict[str, Classifier]:
    torch.manual_seed(0)
    return {arch: build_model(arch, 7) for arch in XRESNETS}


@pytest.mark.parametrize("arch", XRESNETS)
def test_xresnet_gives_logits_and_has_fastai_structure(xresnets, arch: str) -> None:
    model = xresnets[arch].eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert model.n_classes == 7 and model.arch == arch
    stem = model.body[0]
    convs = [m for m in stem.modules() if isinstance(m, nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]  # three-conv stem
    assert convs[0].in_channels == 3 and isinstance(stem[-1], nn.MaxPool2d)
    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    assert len(blocks) == {"xresnet18": 8, "xresnet34": 16, "xresnet50": 16,
                           "xresnet_tiny": 4}[arch]
    for block in blocks:
        last_bn = block.convpath[-1][1]
        assert isinstance(last_bn, nn.BatchNorm2d) and torch.all(last_bn.weight == 0)
        first_bn = block.convpath[0][1]
        assert torch.all(first_bn.weight == 1)
        down = [m for m in block.idpath if isinstance(m, nn.AvgPool2d)]
        if block.convpath[0][0].stride != (1, 1) or (len(block.convpath) == 3
                                                     and block.convpath[1][0].stride != (1, 1)):
            assert down, "a strided block downsamples its shortcut with AvgPool"
    assert isinstance(model.head[0], nn.AdaptiveAvgPool2d) and isinstance(model.head[-1],
                                                                          nn.Linear)


@pytest.mark.parametrize(("arch", "resnet"), [("xresnet18", "resnet18"),
                                             ("xresnet34", "resnet34"),
                                             ("xresnet50", "resnet50")])
def test_xresnet_is_resnet_except_the_stem(xresnets, arch: str, resnet: str) -> None:
    """Same stages and 1x1 shortcut convs as torchvision's ResNet (the avg-pool adds no weights);
    only the stem differs: three 3x3 convs 3->32->32->64 + BNs instead of one 7x7 conv + BN."""
    tv = torchvision.models.get_model(resnet, weights=None)
    tv_body = sum(p.numel() for n, p in tv.named_parameters() if not n.startswith("fc"))
    tv_stem = 64 * 3 * 7 * 7 + 2 * 64
    x_stem = 32 * 3 * 9 + 32 * 32 * 9 + 64 * 32 * 9 + 2 * (32 + 32 + 64)
    ours = sum(p.numel() for p in xresnets[arch].body.parameters())
    assert ours == tv_body - tv_stem + x_stem
    assert xresnets[arch].n_features == tv.fc.in_features


def test_kaiming_init(xresnets) -> None:
    conv = xresnets["xresnet50"].body[4][0].convpath[1][0]  # a 3x3 conv, fan_in 512 * 9
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert abs(conv.weight.std().item() - np.sqrt(2 / fan_in)) / np.sqrt(2 / fan_in) < 0.05


@pytest.mark.parametrize("arch", ["xresnet18", "xresnet50", "xresnet_tiny"])
def test_layer_groups_cover_every_parameter_once(xresnets, arch: str) -> None:
    model = xresnets[arch]
    groups = model.layer_groups()
    ids = _params(groups)
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert len(groups) == len(model.body) + 1 == 6  # stem, 4 stages, head
    assert {id(p) for p in groups[-1]} == {id(p) for p in model.head.parameters()}


@pytest.mark.parametrize("train_bn", [True, False])
def test_freeze_body_and_unfreeze(train_bn: bool) -> None:
    model = build_model("xresnet_tiny", 3)
    model.freeze_body(train_bn=train_bn)
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            if name.startswith("head"):
                assert p.requires_grad, name
            elif isinstance(module, nn.BatchNorm2d):
                assert p.requires_grad == train_bn, name
            else:
                assert not p.requires_grad, name
    model.unfreeze()
    assert all(p.requires_grad for p in model.parameters())


def test_reset_head() -> None:
    model = build_model("xresnet_tiny", 3)
    body_before = {k: v.clone() for k, v in model.body.state_dict().items()}
    model.reset_head(5)
    assert model.n_classes == 5 and model.eval()(torch.rand(2, 3, 16, 16)).shape == (2, 5)
    for k, v in model.body.state_dict().items():
        assert torch.equal(v, body_before[k])


def test_normalization_is_inside_the_model() -> None:
    model = build_model("xresnet_tiny", 2, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.25))
    x = torch.full((1, 3, 2, 2), 0.6)
    out = model.normalize(x)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([1.0, 0.8, 1.2]))
    assert {"normalize.mean", "normalize.std"} <= set(model.state_dict())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_model_by_name_matches_torchvision(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 4, **IDENTITY).eval()
    assert model.n_classes == 4 and 3 <= len(model.body) <= 5
    ids = _params(model.layer_groups())
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    # The re-cut model computes exactly what torchvision's forward computes with these weights.
    tv = torchvision.models.get_model(name, weights=None, num_classes=4).eval()
    tv.load_state_dict(_to_torchvision_keys(model, name, tv))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x))


def _to_torchvision_keys(model: Classifier, name: str, tv: nn.Module) -> dict:
    """Our Classifier's weights under torchvision's names (both share module objects)."""
    groups, pre, final = split_torchvision(name, tv)
    ours = Classifier(model.normalize, nn.Sequential(*groups), nn.Sequential(*pre, final))
    ours.load_state_dict(model.state_dict())
    return tv.state_dict()


def test_unknown_arch() -> None:
    with pytest.raises(ConfigError, match="unknown arch"):
        build_model("resnet9000", 3)
    archs = available_archs()
    assert {"xresnet18", "xresnet34", "xresnet50", "xresnet_tiny", "resnet50",
            "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny"} <= set(archs)
    assert "vit_b_16" not in archs


# --- pretrained weights from local files -------------------------------------------------------


def test_classifier_state_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = build_model("xresnet_tiny", 3).eval()
    for m in src.modules():  # make the zero-init BNs non-trivial so the check means something
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    loaded = build_model("xresnet_tiny", 3, pretrained=path).eval()
    x = torch.rand(4, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), src(x), rtol=0, atol=0)

    ckpt = {"format": "tta-serve-checkpoint/1", "arch": "xresnet_tiny", "classes": ["a", "b", "c"],
            "model": src.state_dict()}
    torch.save(ckpt, tmp_path / "best.pt")
    other = build_model("xresnet_tiny", 5, pretrained=tmp_path / "best.pt")  # new class count
    assert other.n_classes == 5
    for k, v in src.body.state_dict().items():
        assert torch.equal(other.body.state_dict()[k], v)


def test_torchvision_format_weights_load_and_drop_the_1000_class_head(tmp_path: Path) -> None:
    torch.manual_seed(2)
    tv = torchvision.models.resnet18(weights=None)  # what torchvision's weight files hold
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    model = build_model("resnet18", 6, pretrained=path)
    assert model.n_classes == 6
    torch.testing.assert_close(model.body[0][0].weight, tv.conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.body[4][1].conv2.weight, tv.layer4[1].conv2.weight,
                               rtol=0, atol=0)
    same_classes = build_model("resnet18", 1000, pretrained=path)  # the head is kept
    torch.testing.assert_close(same_classes.head[-1].weight, tv.fc.weight, rtol=0, atol=0)


def test_pretrained_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build_model("xresnet_tiny", 3, pretrained=tmp_path / "missing.pt")
    torch.save(build_model("xresnet18", 3).state_dict(), tmp_path / "x18.pt")
    with pytest.raises(ConfigError, match="does not fit arch 'xresnet34'.*missing"):
        build_model("xresnet34", 3, pretrained=tmp_path / "x18.pt")
    torch.save({"arch": "xresnet18", "model": {"w": torch.zeros(1)}}, tmp_path / "ck.pt")
    with pytest.raises(ConfigError, match="'xresnet18' checkpoint, not 'xresnet_tiny'"):
        build_model("xresnet_tiny", 3, pretrained=tmp_path / "ck.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="cannot read"):
        build_model("xresnet_tiny", 3, pretrained=tmp_path / "junk.pt")


@pytest.mark.slow  # the dynamo exporter takes ~5-15 s; tests/training/test_export.py covers export
def test_exports_to_onnx_and_matches_onnxruntime(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(3)
    model = build_model("xresnet_tiny", 4, mean=(0.3, 0.3, 0.3), std=(0.3, 0.3, 0.3)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.rand(2, 3, 32, 32),), path, input_names=["pixels"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(5, 3, 32, 32)
    got = session.run(None, {"pixels": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_build_torchvision_never_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    assert build_torchvision("mobilenet_v3_small", 3).classifier[-1].out_features == 3


@pytest.mark.slow  # ~5-10 s on a 2-core CPU
def test_xresnet_tiny_learns_the_digits(digits_dir: Path) -> None:
    """Data, augmentation and model together: >= 95% on the held-out digits in a few epochs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is as fast, and immune to a busy machine
    try:
        _train_and_check_digits(digits_dir)
    finally:
        torch.set_num_threads(threads)


def _train_and_check_digits(digits_dir: Path) -> None:
    import torch.nn.functional as F

    from service.imaging import EvalSpec
    from training.augment import AugmentConfig, BatchAugment, to_float_nchw
    from training.data import build_dataloaders, compute_stats, load_items

    torch.manual_seed(0)
    split = load_items(digits_dir, check_images=False)
    mean, std = compute_stats(split, presize=40)
    dls = build_dataloaders(split, size=32, batch_size=64, presize=40, eval_spec=EvalSpec(32))
    model = build_model("xresnet_tiny", len(split.classes), mean=mean, std=std)
    augment = BatchAugment(AugmentConfig(flip=False, min_scale=0.75), 32)  # digits: no mirroring
    epochs = 6
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2,
                                                total_steps=epochs * len(dls.train))
    gen = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        dls.train.sampler.set_epoch(epoch)
        model.train()
        for x, y in dls.train:
            loss = F.cross_entropy(model(augment(x, gen)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in dls.valid:
            correct += (model(to_float_nchw(x)).argmax(1) == y).sum().item()
    assert correct / len(split.valid) >= 0.95
