"""MixUp/CutMix, label smoothing, the one-cycle schedule and discriminative LRs, against their
closed forms on hand-made tensors."""

import math

import pytest
import torch
from torch import nn

from training.mixing import CutMix, MixUp, build_mixer, mixed_loss
from training.schedule import (
    build_optimizer,
    discriminative_lrs,
    one_cycle,
    one_cycle_lr_at,
)


def _gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_mixup_inputs_and_targets_are_lambda_combinations_per_image():
    x = torch.rand(6, 3, 4, 4)
    y = torch.arange(6)
    mixed, (y_a, y_b, lam) = MixUp(0.4)(x, y, _gen(1))
    assert lam.shape == (6,)
    assert bool(((lam >= 0.5) & (lam <= 1.0)).all())  # fastai: max(lam, 1 - lam)
    assert len(set(lam.tolist())) > 1  # one lambda per image, not per batch
    assert torch.equal(y_a, y)
    perm = y_b  # labels are their own indices, so y_b is the permutation
    expected = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm]
    assert torch.allclose(mixed, expected, atol=1e-6)


def test_mixup_is_reproducible_with_the_same_generator():
    x, y = torch.rand(8, 3, 4, 4), torch.arange(8)
    a, (_, ya, la) = MixUp(0.4)(x, y, _gen(7))
    b, (_, yb, lb) = MixUp(0.4)(x, y, _gen(7))
    assert torch.equal(la, lb) and torch.equal(ya, yb) and torch.equal(a, b)


def test_mixup_lambda_follows_folded_beta_distribution():
    x, y = torch.zeros(4000, 1, 1, 1), torch.arange(4000)
    lams = MixUp(0.4)(x, y, _gen(3))[1][2].double()
    # max(B, 1 - B) for B ~ Beta(a, a): E|B - 1/2| + 1/2; Var(B) = E(B - 1/2)^2 = 1/(4(2a+1))
    second_moment = ((lams - 0.5) ** 2).mean().item()
    assert abs(second_moment - 1 / (4 * (2 * 0.4 + 1))) < 0.01
    assert lams.min().item() >= 0.5


def test_per_image_mixed_loss_weights_each_image_by_its_own_lambda():
    out = torch.randn(3, 4)
    y_a, y_b = torch.tensor([0, 1, 2]), torch.tensor([3, 3, 3])
    lam = torch.tensor([1.0, 0.5, 0.75])
    ce = nn.CrossEntropyLoss(label_smoothing=0.1)
    per = [lam[i] * ce(out[i:i + 1], y_a[i:i + 1]) + (1 - lam[i]) * ce(out[i:i + 1], y_b[i:i + 1])
           for i in range(3)]
    assert mixed_loss(ce, out, y_a, y_b, lam).item() == pytest.approx(
        torch.stack(per).mean().item(), rel=1e-6)


def test_cutmix_pastes_a_box_and_lambda_is_the_kept_area():
    x = torch.zeros(4, 1, 10, 10)
    for i in range(4):
        x[i] = i + 1.0  # each image is a constant, so the pasted box is visible
    y = torch.arange(4)
    mixed, (y_a, y_b, lam) = CutMix(1.0)(x, y, _gen(5))
    for i in range(4):
        kept = (mixed[i] == i + 1.0).float().mean().item()
        if y_b[i] != i:
            assert kept == pytest.approx(lam, abs=1e-6)
            assert torch.all((mixed[i] == i + 1.0) | (mixed[i] == y_b[i] + 1.0))


def test_mixed_loss_equals_the_formula_on_a_hand_made_batch():
    out = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    y_a, y_b, lam = torch.tensor([0, 1]), torch.tensor([2, 0]), 0.3
    ce = nn.CrossEntropyLoss()
    expected = lam * ce(out, y_a) + (1 - lam) * ce(out, y_b)
    manual = 0.0
    logp = torch.log_softmax(out, 1)
    for i in range(2):
        manual += -(lam * logp[i, y_a[i]] + (1 - lam) * logp[i, y_b[i]]) / 2
    assert mixed_loss(ce, out, y_a, y_b, lam).item() == pytest.approx(expected.item())
    assert expected.item() == pytest.approx(manual.item(), rel=1e-6)


def test_build_mixer_is_none_when_off():
    assert build_mixer(0.0, 0.0) is None
    assert isinstance(build_mixer(0.4, 0.0), MixUp)
    assert isinstance(build_mixer(0.0, 1.0), CutMix)


def test_label_smoothing_loss_equals_closed_form():
    logits = torch.tensor([[3.0, 1.0, 0.2, -1.0], [0.0, 2.0, 0.0, 1.0]])
    y = torch.tensor([0, 3])
    eps, k = 0.1, logits.shape[1]
    logp = torch.log_softmax(logits, 1)
    # (1 - eps) * NLL + eps * mean over classes of -log p  (fastai's LabelSmoothingCrossEntropy)
    closed = ((1 - eps) * -logp[torch.arange(2), y] + eps * -logp.sum(1) / k).mean()
    loss = nn.CrossEntropyLoss(label_smoothing=eps)(logits, y)
    assert loss.item() == pytest.approx(closed.item(), rel=1e-6)


def test_discriminative_lrs_are_geometric_from_lr_over_mult_to_lr():
    lrs = discriminative_lrs(1e-3, 5, 100)
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-3)
    ratios = [b / a for a, b in zip(lrs, lrs[1:], strict=False)]
    assert all(r == pytest.approx(ratios[0]) for r in ratios)
    assert discriminative_lrs(1e-3, 4, 1.0) == [1e-3] * 4


def test_one_cycle_matches_fastai_defaults():
    params = [nn.Parameter(torch.zeros(1))]
    opt = build_optimizer([params], [1e-2], weight_decay=0.0)
    total = 100
    sched = one_cycle(opt, total)
    lrs, moms = [], []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-2 / 25)  # div 25
    assert max(lrs) == pytest.approx(1e-2, rel=1e-3)
    assert lrs.index(max(lrs)) == pytest.approx(0.25 * total, abs=1)  # pct_start 0.25
    assert lrs[-1] == pytest.approx(1e-2 / 1e5, rel=1e-2)  # div_final 1e5
    assert moms[0] == pytest.approx(0.95) and min(moms) == pytest.approx(0.85, abs=1e-3)
    assert moms[-1] == pytest.approx(0.95, abs=1e-3)
    for step in (0, 10, 30, 60, 99):
        assert lrs[step] == pytest.approx(one_cycle_lr_at(step, total, 1e-2), rel=1e-4)
    assert math.isclose(one_cycle_lr_at(99, 100, 1.0), 1e-5, rel_tol=1e-6)


def test_one_cycle_pct_start_and_div_shape_the_schedule():
    """fine_tune's unfrozen phase: from lr/5, peak at 0.3 of the steps, same final LR."""
    params = [nn.Parameter(torch.zeros(1))]
    opt = build_optimizer([params], [1e-2], weight_decay=0.0)
    total = 100
    sched = one_cycle(opt, total, pct_start=0.3, div=5.0)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-2 / 5)
    assert lrs.index(max(lrs)) == 29  # 0.3 * 100 - 1
    assert lrs[-1] == pytest.approx(1e-2 / 1e5, rel=1e-2)  # div_final is relative to the peak
    for step in (0, 10, 29, 60, 99):
        assert lrs[step] == pytest.approx(
            one_cycle_lr_at(step, total, 1e-2, pct_start=0.3, div=5.0), rel=1e-4)


def test_discriminative_groups_each_get_their_lr_through_the_schedule():
    groups = [[nn.Parameter(torch.zeros(1))] for _ in range(3)]
    lrs = discriminative_lrs(1e-3, 3, 100)
    opt = build_optimizer(groups, lrs, weight_decay=0.01)
    sched = one_cycle(opt, 40)
    peak = None
    for step in range(40):
        if step == 9:  # the warm-up ends at 0.25 * 40 - 1
            peak = [g["lr"] for g in opt.param_groups]
        opt.step()
        sched.step()
    assert peak == pytest.approx(lrs, rel=1e-6)
