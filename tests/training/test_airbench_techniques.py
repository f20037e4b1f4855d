"""airbench94's techniques as recipe options (issue 23), each against what it must do, on tiny
tensors and on the real digits photos."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from training.augment import AugmentConfig, BatchAugment, alternating_flip
from training.callbacks import RunClock, StemFreeze
from training.config import load_recipe, with_values
from training.errors import ConfigError
from training.lookahead import Lookahead
from training.models import build_model
from training.models.init_schemes import dirac_init, fix_bn_weights, stem_conv, whiten_stem
from training.optim import kilostep_scale, make_optimizer, param_kinds
from training.schedule import run_shape, whole_run_schedule

DIGITS_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "digits.toml"


def _net(**kw) -> nn.Module:
    return build_model("airbench_small", 10, mean=(0.5,) * 3, std=(0.25,) * 3, **kw)


# -- optimiser ------------------------------------------------------------------------------------

def test_sgd_uses_nesterov_airbench_units_and_bn_bias_multiplier():
    model = _net()
    groups = model.layer_groups()
    opt = make_optimizer(model, groups, [11.5] * len(groups), name="sgd", weight_decay=0.0153,
                         lr_mults={"bn_bias": 64.0}, momentum=0.85, batch_size=1024)
    assert isinstance(opt, torch.optim.SGD)
    base = 11.5 * 1024 / kilostep_scale(0.85)
    kinds = {g["kind"]: g for g in opt.param_groups}
    assert all(g["nesterov"] and g["momentum"] == 0.85 for g in opt.param_groups)
    assert math.isclose(kinds["other"]["lr"], base)
    assert math.isclose(kinds["bn_bias"]["lr"], 64 * base)
    # decoupled: every group shrinks by the same wd x batch / kilostep_scale per step
    decay = 0.0153 * 1024 / kilostep_scale(0.85)
    for g in opt.param_groups:
        assert math.isclose(g["lr"] * g["weight_decay"], decay)
    bn_biases = {id(p) for p, k in zip(model.parameters(), _kinds(model), strict=True)
                 if k == "bn_bias"}
    in_bn_groups = {id(p) for g in opt.param_groups if g["kind"] == "bn_bias" for p in g["params"]}
    assert in_bn_groups == bn_biases and bn_biases


def _kinds(model: nn.Module) -> list[str]:
    kinds = param_kinds(model)
    return [kinds[id(p)] for p in model.parameters()]


def test_sgd_weight_decay_alone_shrinks_weights_by_the_decoupled_amount():
    layer = nn.Linear(4, 4, bias=False)
    model = nn.Sequential(layer)
    w0 = layer.weight.detach().clone()
    opt = make_optimizer(model, [list(model.parameters())], [1.0], name="sgd", weight_decay=0.5,
                         momentum=0.5, batch_size=8)
    layer.weight.grad = torch.zeros_like(layer.weight)
    opt.step()
    decay = 0.5 * 8 / kilostep_scale(0.5)
    # the decay is a gradient term: Nesterov's first step applies it (1 + momentum) times
    assert torch.allclose(layer.weight, w0 * (1 - (1 + 0.5) * decay))


def test_adamw_default_is_unchanged_and_multipliers_apply_to_it_too():
    model = _net()
    groups = model.layer_groups()
    plain = make_optimizer(model, groups, [1e-3] * len(groups))
    assert isinstance(plain, torch.optim.AdamW) and len(plain.param_groups) == len(groups)
    mult = make_optimizer(model, groups, [1e-3] * len(groups), lr_mults={"head": 10.0})
    head = [g for g in mult.param_groups if g["kind"] == "head"]
    assert head and all(math.isclose(g["lr"], 1e-2) for g in head)


def test_unknown_lr_mult_kind_and_optimizer_are_config_errors():
    recipe = load_recipe(DIGITS_RECIPE)
    with pytest.raises(ConfigError, match="lr_mults.bias"):
        with_values(recipe, {"train.lr_mults": {"bias": 2.0}})
    with pytest.raises(ConfigError, match="train.optimizer"):
        with_values(recipe, {"train.optimizer": "lion"})
    with pytest.raises(ConfigError, match="train.schedule"):
        with_values(recipe, {"train.schedule": "cosine"})


# -- schedules ------------------------------------------------------------------------------------

def test_whole_run_schedule_continues_across_phases_without_restarting():
    p = nn.Parameter(torch.zeros(1))
    total, first = 100, 40
    lrs = []
    for offset, steps in ((0, first), (first, total - first)):  # two stages, one schedule
        opt = torch.optim.SGD([p], lr=2.0)
        sched = whole_run_schedule(opt, "run", offset=offset, total=total, pct_start=0.25)
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    peak = lrs.index(max(lrs))
    assert abs(peak - 25) <= 1 and math.isclose(max(lrs), 2.0, rel_tol=1e-3)
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:], strict=False))  # no restart
    assert lrs[-1] < 2.0 / 1000


def test_triangular_shape_is_airbench_triangle():
    assert math.isclose(run_shape("triangular", 0.0, pct_start=0.23), 0.2)
    assert math.isclose(run_shape("triangular", 0.23, pct_start=0.23), 1.0)
    assert math.isclose(run_shape("triangular", 1.0, pct_start=0.23), 0.07)
    mid = run_shape("triangular", 0.615, pct_start=0.23)
    assert math.isclose(mid, (1 + 0.07) / 2, rel_tol=1e-6)


# -- lookahead ------------------------------------------------------------------------------------

class _FakeLearn:
    def __init__(self, model: nn.Module) -> None:
        self.model = model


def test_lookahead_pulls_fast_weights_back_to_the_slow_average_every_k_steps():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    clock = RunClock(total_steps=100, epochs_done=lambda: 0)
    la = Lookahead(clock, every=2, decay=0.5, power=0.0)  # constant decay 0.5
    learn = _FakeLearn(model)
    la.before_fit(learn)
    for step in range(1, 5):
        clock.step = step
        with torch.no_grad():
            model.weight += 1.0  # the "optimiser step"
        la.after_batch(learn)
    # step 2: slow = 0.5*0 + 0.5*2 = 1, fast = 1; step 4: fast = 3, slow = 0.5*1 + 0.5*3 = 2
    assert math.isclose(model.weight.item(), 2.0)


def test_lookahead_hands_the_slow_weights_over_at_the_last_step():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    clock = RunClock(total_steps=3, epochs_done=lambda: 0)
    la = Lookahead(clock, every=5, decay=0.9, power=0.0)
    learn = _FakeLearn(model)
    la.before_fit(learn)
    for step in range(1, 4):
        clock.step = step
        with torch.no_grad():
            model.weight += 1.0
        la.after_batch(learn)
    assert model.weight.item() == 0.0  # never synced before: the slow weights are the start


# -- initialisations ------------------------------------------------------------------------------

def test_whitened_stem_decorrelates_the_training_patches():
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(64, 16, 16, 1, generator=gen)
    images = (255 * torch.cat([base, 0.8 * base + 0.2 * torch.rand(64, 16, 16, 1, generator=gen),
                               torch.rand(64, 16, 16, 1, generator=gen)], -1)).to(torch.uint8)
    model = _net()
    whiten_stem(model, images)
    conv = stem_conv(model)
    x = model.normalize(images.permute(0, 3, 1, 2).float() / 255)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(x, conv.weight[:12])  # the 12 non-negated filters
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    cov = torch.cov(flat)
    strong = cov.diagonal()[:6]  # the best-determined directions: unit variance, uncorrelated
    assert torch.allclose(strong, torch.ones(6), atol=0.05)
    off = cov[:6, :6] - torch.diag(cov.diagonal()[:6])
    assert off.abs().max() < 0.05
    assert torch.equal(conv.weight[12:], -conv.weight[:12]) and conv.bias.abs().sum() == 0


def test_dirac_init_makes_later_convolutions_pass_their_input_through():
    model = _net()
    assert dirac_init(model) == 6
    conv = model.body[2][0]  # block 2's first conv: 32 -> 128
    x = torch.randn(2, conv.in_channels, 5, 5)
    with torch.no_grad():
        y = nn.functional.conv2d(x, conv.weight, padding=1)
    assert torch.allclose(y[:, : conv.in_channels], x, atol=1e-6)


def test_bn_without_scale_keeps_state_dict_names_and_trains_only_biases():
    model = _net()
    names = set(model.state_dict())
    assert fix_bn_weights(model) == 6
    assert set(model.state_dict()) == names  # checkpoints and export read the same keys
    bn = model.body[1][2]
    assert not isinstance(bn.weight, nn.Parameter) and isinstance(bn.bias, nn.Parameter)
    model.unfreeze()  # unfreeze cannot bring the scale back
    assert all(k != "bn_weight" for k in _kinds(model))
    rebuilt = _net()
    rebuilt.load_state_dict(model.state_dict())  # built without the option: same function
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(rebuilt.eval()(x), model.eval()(x))


def test_logit_scale_scales_the_logits_of_a_zero_bias_head():
    plain, scaled = _net(), _net(logit_scale=1 / 9)
    scaled.load_state_dict(plain.state_dict(), strict=False)  # body identical
    scaled.head[-1].load_state_dict(plain.head[-1].state_dict())
    nn.init.zeros_(plain.head[-1].bias)
    nn.init.zeros_(scaled.head[-1].bias)
    x = torch.rand(3, 3, 16, 16)
    assert torch.allclose(scaled.eval()(x), plain.eval()(x) / 9, atol=1e-6)
    assert isinstance(scaled.head[-1], nn.Linear)


def test_stem_freeze_follows_the_runs_epochs():
    model = _net()
    clock = RunClock(10, epochs_done=lambda: 0)
    freeze = StemFreeze(stem_conv(model), clock, weight_epochs=2, bias_epochs=1)
    seen = []
    for epoch in range(3):
        clock.epoch = epoch
        model.unfreeze()  # what each phase's start does
        freeze.before_epoch(None)
        conv = stem_conv(model)
        seen.append((conv.weight.requires_grad, conv.bias.requires_grad))
    assert seen == [(False, True), (False, False), (True, False)]


# -- alternating flip -----------------------------------------------------------------------------

def test_alternating_flip_mirrors_each_image_on_every_other_epoch():
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (64, 8, 8, 3), dtype=torch.uint8, generator=gen)
    e0, e1, e2 = (alternating_flip(x, e) < 0.5 for e in range(3))
    assert torch.equal(e0, e2) and torch.equal(e0, ~e1)
    assert 16 < int(e0.sum()) < 48  # about half start mirrored


def test_batch_augment_alternate_flip_is_deterministic_per_image():
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (16, 8, 8, 3), dtype=torch.uint8, generator=gen)
    cfg = AugmentConfig(min_scale=1.0, flip=True, alternate_flip=True, max_rotate=0.0,
                        max_zoom=1.0, max_warp=0.0, max_lighting=0.0)
    aug = BatchAugment(cfg, 8)
    outs = []
    for epoch in (0, 1):
        aug.epoch = epoch
        outs.append(aug(x, torch.Generator().manual_seed(epoch + 10)))
    plain = x.permute(0, 3, 1, 2).float() / 255
    for i in range(16):
        a, b = outs[0][i], outs[1][i]
        assert torch.allclose(a, plain[i], atol=1e-5) != torch.allclose(b, plain[i], atol=1e-5)
        assert torch.allclose(a.flip(-1), b, atol=1e-5)


# -- the techniques together, on the real digits photos --------------------------------------------

def test_fit_with_every_technique_learns_the_digits(digits_dir: Path, tmp_path: Path):
    from training.phases import fit

    recipe = load_recipe(DIGITS_RECIPE, [
        f"data.path={digits_dir}", f"train.output={tmp_path / 'run'}", "data.presize=16",
        "model.arch=airbench_small", "model.whiten=true", "model.dirac=true",
        "model.bn_weight=false", "model.logit_scale=0.111", "augment.min_scale=1.0",
        "augment.max_warp=0.0", "augment.max_rotate=0.0", "augment.max_lighting=0.0",
        "train.optimizer=\"sgd\"", "train.weight_decay=0.0153", "train.lr_mults={bn_bias=64.0}",
        "train.schedule=\"triangular\"", "train.pct_start=0.23", "train.lookahead_every=5",
        "train.whiten_bias_epochs=2", "train.label_smoothing=0.2",
        "stages.0.size=12", "stages.0.batch_size=128", "stages.0.epochs=2", "stages.0.lr=11.5",
        "stages.1.size=16", "stages.1.batch_size=128", "stages.1.epochs=1", "stages.1.lr=11.5",
    ])
    result = fit(recipe, progress=False)
    assert result.best_metric > 0.6  # 10 classes: chance is 0.1
    assert result.summary["cpu_seconds"] > 0 and "load_average" in result.summary
    assert result.summary["machine"]["cores"] >= 1
    from training.checkpoint import load_checkpoint

    rebuilt = load_checkpoint(result.best_checkpoint).build_model()
    assert any(type(m).__name__ == "Scale" for m in rebuilt.head)


def test_compile_option_wraps_only_the_training_step(digits_dir: Path, tmp_path: Path):
    from training.phases import build_learner, prepare_run, stage_loaders

    recipe = load_recipe(DIGITS_RECIPE, [f"data.path={digits_dir}", f"train.output={tmp_path}",
                                         'train.compile="on"', "model.arch=airbench_small"])
    run = prepare_run(recipe, None, progress=False)
    learn = build_learner(recipe, run.model, stage_loaders(run, 0), 16, run.device, [])
    assert isinstance(learn.train_model, torch._dynamo.eval_frame.OptimizedModule)
    assert learn.train_model._orig_mod is run.model  # the same weights train
    assert not any(k.startswith("_orig_mod") for k in learn.state_dict()["model"])


def test_model_card_gets_the_runs_training_cost(tmp_path: Path):
    import json

    from training.export.publish import training_cost

    (tmp_path / "metrics.json").write_text(json.dumps({
        "history": [], "wall_seconds": 1400.5, "cpu_seconds": 2700.0, "images_per_s": 455.0,
        "load_average": {"start": 0.1, "end": 2.0}, "machine": {"cores": 2}}))
    cost = training_cost(tmp_path)
    assert cost == {"wall_seconds": 1400.5, "cpu_seconds": 2700.0, "images_per_s": 455.0,
                    "load_average": {"start": 0.1, "end": 2.0}, "machine": {"cores": 2}}
    (tmp_path / "metrics.json").write_text("{not json")
    assert training_cost(tmp_path) == {}
    assert training_cost(tmp_path / "missing") == {}
