"""The recipe end to end on real data (scikit-learn's handwritten digits), on the CPU.

One short fit of recipes/digits.toml is shared by the assertions that need a trained model;
the resume and fine-tune tests run their own tiny recipes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from training.callbacks import BnFreeze
from training.checkpoint import load_checkpoint, load_model
from training.cli import main
from training.config import load_recipe
from training.data import load_items
from training.errors import ConfigError, DataError
from training.evaluate import predict
from training.learner import Callback, Learner, Precision
from training.lr_find import lr_find
from training.models import build_model
from training.phases import boundary_state, build_classifier, fit, plan_phases, start_phase
from training.run import evaluate_checkpoint, fit_and_report, run_lr_find
from training.schedule import build_optimizer, discriminative_lrs, one_cycle

RECIPE = Path(__file__).parents[2] / "recipes" / "digits.toml"


def recipe_for(digits_dir: Path, out: Path, *overrides: str):
    return load_recipe(RECIPE, [f'data.path="{digits_dir}"', f'train.output="{out}"', *overrides])


@pytest.fixture(scope="session")
def trained(digits_dir, tmp_path_factory):
    """The digits recipe as committed, trained once for the session."""
    out = tmp_path_factory.mktemp("run")
    recipe = recipe_for(digits_dir, out)
    summary = fit_and_report(recipe, progress=False)
    return recipe, summary, out


def test_digits_recipe_reaches_95_percent_on_cpu(trained):
    _, summary, out = trained
    assert summary.accuracy >= 0.95, summary
    assert summary.tta_accuracy is not None
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt.metrics["accuracy"] == pytest.approx(summary.accuracy)
    assert ckpt.metrics["tta_accuracy"] == pytest.approx(summary.tta_accuracy)
    assert (out / "recipe.toml").is_file() and (out / "last.pt").is_file()
    history = json.loads((out / "metrics.json").read_text())["history"]
    recipe = trained[0]
    expected = [f"stage{i + 1}" for i, s in enumerate(recipe.stages) for _ in range(s.epochs)]
    assert [h["phase"] for h in history] == expected
    assert all(math.isfinite(h["train_loss"]) for h in history)


def test_report_files_are_real_and_totals_match(trained):
    _, summary, out = trained
    report = out / "report"
    matrix = json.loads((report / "confusion_matrix.json").read_text())
    n_valid = load_checkpoint(out / "best.pt").metrics["n_valid"]
    assert sum(map(sum, matrix["confusion"])) == n_valid == summary.n
    # summary.json keeps its keys: the TTA one only when TTA ran, the checkpoint not at all
    written = json.loads((report / "summary.json").read_text())
    assert written == summary.to_dict()
    assert set(written) == {"n", "accuracy", "most_confused", "tta_accuracy"}
    per_class = json.loads((report / "classification_report.json").read_text())["per_class"]
    supports = {c["name"]: c["support"] for c in per_class}
    for i, name in enumerate(matrix["classes"]):
        assert sum(matrix["confusion"][i]) == supports[name]
    for png in ("confusion_matrix.png", "tta_confusion_matrix.png", "top_losses.png"):
        with Image.open(report / png) as im:
            im.verify()


def test_tta_runs_all_views_in_batched_passes_and_reproduces_from_saved_spec(trained, digits_dir):
    recipe, summary, out = trained
    model, ckpt = load_model(out / "best.pt", torch.device("cpu"))
    tta = ckpt.tta_spec

    spec = ckpt.eval_transform
    split = load_items(digits_dir, valid_pct=recipe.data.valid_pct, seed=recipe.data.seed)
    batch_sizes: list[int] = []
    handle = model.register_forward_hook(lambda m, i, o: batch_sizes.append(i[0].shape[0]))
    preds = predict(model, split.valid, eval_spec=spec, tta=tta, device=torch.device("cpu"),
                    batch_size=64, progress=False)
    handle.remove()
    n, v = len(split.valid.paths), len(tta.views)
    assert batch_sizes == [min(64, n - i) * v for i in range(0, n, 64)]  # one pass per batch
    assert preds.tta_accuracy == pytest.approx(summary.tta_accuracy)
    assert preds.accuracy == pytest.approx(summary.accuracy)


def test_evaluate_on_any_labeled_folder(trained, digits_dir, tmp_path):
    _, _, out = trained
    folder = tmp_path / "labeled"
    for cls in ("3", "7"):
        (folder / cls).mkdir(parents=True)
        for p in sorted((digits_dir / cls).iterdir())[:12]:
            (folder / cls / p.name).write_bytes(p.read_bytes())
    summary = evaluate_checkpoint(out / "best.pt", data=folder, output=tmp_path / "ev", tta=True,
                                  progress=False)
    assert summary.n == 24
    matrix = json.loads((tmp_path / "ev" / "confusion_matrix.json").read_text())
    assert len(matrix["classes"]) == 10  # reported in the model's class space
    assert sum(map(sum, matrix["confusion"])) == 24


class _StopAfter(Callback):
    """Simulates a crash (Ctrl-C) after an epoch has been checkpointed."""

    order = 100

    def __init__(self, phase: str, epoch: int) -> None:
        self.phase, self.epoch = phase, epoch

    def after_epoch(self, learn: Learner) -> None:
        if learn.state.phase == self.phase and learn.state.epoch + 1 == self.epoch:
            raise KeyboardInterrupt


SMALL = ("stages.0.epochs=2", "stages.1.epochs=1", "stages.0.size=12", "stages.1.size=16",
         "data.presize=20", "train.mixup=0.4")


def test_interrupted_then_resumed_run_equals_uninterrupted(digits_dir, tmp_path):
    straight = fit(recipe_for(digits_dir, tmp_path / "a", *SMALL), progress=False)
    with pytest.raises(KeyboardInterrupt):
        fit(recipe_for(digits_dir, tmp_path / "b", *SMALL), progress=False,
            callbacks=[_StopAfter("stage1", 1)])
    assert load_checkpoint(tmp_path / "b" / "last.pt").progress == {"phase": 0, "epoch": 1}
    resumed = fit(recipe_for(digits_dir, tmp_path / "b", *SMALL), resume=True, progress=False)
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    for key, tensor in a.model.items():
        assert torch.equal(tensor, b.model[key]), key
    assert [h["accuracy"] for h in straight.history] == [h["accuracy"] for h in resumed.history]
    assert resumed.best_metric == straight.best_metric


class _Record(Callback):
    def __init__(self) -> None:
        self.sizes: dict[str, set] = {}
        self.weights_at: dict[str, dict] = {}

    def before_fit(self, learn: Learner) -> None:
        self.weights_at[f"start {learn.state.phase}"] = {
            k: v.clone() for k, v in learn.model.state_dict().items()}

    def before_batch(self, learn: Learner) -> None:
        self.sizes.setdefault(learn.state.phase, set()).add(tuple(learn.state.xb.shape[-2:]))

    def after_fit(self, learn: Learner) -> None:
        self.weights_at[f"end {learn.state.phase}"] = {
            k: v.clone() for k, v in learn.model.state_dict().items()}


def test_progressive_resizing_grows_size_and_continues_weights(digits_dir, tmp_path):
    rec = _Record()
    fit(recipe_for(digits_dir, tmp_path, "stages.0.epochs=1", "stages.1.epochs=1",
                   "stages.0.size=12", "stages.1.size=20", "data.presize=24"),
        progress=False, callbacks=[rec])
    assert rec.sizes == {"stage1": {(12, 12)}, "stage2": {(20, 20)}}
    end1, start2 = rec.weights_at["end stage1"], rec.weights_at["start stage2"]
    assert all(torch.equal(end1[k], start2[k]) for k in end1)


@pytest.mark.parametrize("train_bn", [True, False])
def test_frozen_phase_trains_only_head_and_bn(digits_dir, tmp_path, train_bn):
    rec = _Record()
    fit(recipe_for(digits_dir, tmp_path, "train.freeze_epochs=1", "stages.0.epochs=0",
                   "stages.1.epochs=0", "stages.0.size=12",
                   f"train.train_bn={str(train_bn).lower()}"),
        progress=False, callbacks=[rec])
    before, after = rec.weights_at["start stage1-frozen"], rec.weights_at["end stage1-frozen"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    conv = {k for k in before if k.startswith("body") and before[k].ndim == 4}
    assert conv and not (conv & changed), "frozen convolution weights changed"
    assert any(k.startswith("head") for k in changed), "the head did not train"
    bn_params = {k for k in before if k.startswith("body") and before[k].ndim == 1
                 and k.endswith(("weight", "bias"))}
    bn_stats = {k for k in before if k.startswith("body")
                and k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert bn_params and bn_stats
    if train_bn:
        assert bn_params & changed
        assert bn_stats <= changed, "trainable BatchNorm must update its statistics"
    else:
        assert not (bn_params & changed)
        assert not (bn_stats & changed), "frozen BatchNorm running statistics changed"


class _BnModes(Callback):
    """Records, per phase, whether the body's BatchNorm layers and the head train."""

    def __init__(self) -> None:
        self.modes: dict[str, set[tuple[bool, bool]]] = {}

    def before_batch(self, learn: Learner) -> None:
        bn = {m.training for m in learn.model.body.modules() if isinstance(m, nn.BatchNorm2d)}
        self.modes.setdefault(learn.state.phase, set()).update(
            (b, learn.model.head.training) for b in bn)


def _tiny_learner(model: nn.Module, n_batches: int = 3, callbacks=()) -> Learner:
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.rand(8, 3, 16, 16, generator=gen), torch.randint(0, 3, (8,), generator=gen))
               for _ in range(n_batches)]
    return Learner(model, batches, [], loss_fn=nn.CrossEntropyLoss(), augment=lambda x, g: x,
                   prepare_valid=lambda x: x, device=torch.device("cpu"),
                   precision=Precision("cpu"), callbacks=callbacks)


def _one_phase(learn: Learner, name: str) -> None:
    groups = [p for p in learn.model.parameters() if p.requires_grad]
    learn.opt = build_optimizer([groups], [1e-3], 0.0)
    learn.sched = one_cycle(learn.opt, len(learn.train_dl))
    learn.fit(1, phase=name)


class _Schedule(Callback):
    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.moms: list[float] = []

    def before_batch(self, learn: Learner) -> None:
        self.lrs.append([g["lr"] for g in learn.opt.param_groups])
        self.moms.append(learn.opt.param_groups[-1]["betas"][0])


def test_fit_one_cycle_follows_fastais_schedule():
    torch.manual_seed(0)
    model = build_model("xresnet_tiny", 3)
    schedule = _Schedule()
    learn = _tiny_learner(model, n_batches=10, callbacks=[schedule])
    learn.fit_one_cycle(2, 1e-2)
    head = [lrs[-1] for lrs in schedule.lrs]
    assert len(head) == 20 and head[0] == pytest.approx(1e-2 / 25)
    assert max(head) == pytest.approx(1e-2, rel=0.05) and head.index(max(head)) in (4, 5)
    assert head[-1] < 1e-2 / 100  # annealed towards lr_max / 1e5
    assert schedule.moms[0] == pytest.approx(0.95) and min(schedule.moms) == pytest.approx(
        0.85, abs=0.01) and schedule.moms[-1] > 0.94
    assert math.isfinite(learn.state.train_loss)

    discriminative = _Schedule()
    learn = _tiny_learner(model, callbacks=[discriminative])
    lrs = discriminative_lrs(1e-2, len(model.layer_groups()), 100)
    learn.fit_one_cycle(1, lrs)
    peaks = [max(step[i] for step in discriminative.lrs) for i in range(len(lrs))]
    assert peaks == pytest.approx(lrs, rel=0.05)  # each group peaks at its own LR
    with pytest.raises(ValueError, match="learning rates for"):
        learn.fit_one_cycle(1, [1e-3, 1e-2])


def test_bn_freeze_keeps_only_frozen_batchnorm_in_eval_mode():
    model = build_model("xresnet_tiny", 3)
    modes = _BnModes()
    learn = _tiny_learner(model, callbacks=[BnFreeze(), modes])
    model.freeze_body(train_bn=False)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    _one_phase(learn, "frozen")
    assert modes.modes["frozen"] == {(False, True)}  # BN layers eval, the head trains
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    model.freeze_body(train_bn=True)
    _one_phase(learn, "frozen-train-bn")
    assert modes.modes["frozen-train-bn"] == {(True, True)}
    model.unfreeze()
    _one_phase(learn, "unfrozen")
    assert modes.modes["unfrozen"] == {(True, True)}
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())


def test_unfrozen_phase_uses_discriminative_lrs(digits_dir, tmp_path):
    recipe = recipe_for(digits_dir, tmp_path, "train.freeze_epochs=1", "train.lr_mult=100")
    phases = plan_phases(recipe)
    assert [p.name for p in phases] == ["stage1-frozen", "stage1", "stage2"]
    assert phases[1].lr == pytest.approx(recipe.stages[0].lr / 2)  # halved after the frozen phase
    split = load_items(digits_dir, valid_pct=0.2, seed=42)
    model = build_classifier(recipe, split.classes, (0.5,) * 3, (0.25,) * 3)
    ten_batches = [None] * 10  # start_phase only needs len(train_dl)
    learn = Learner(model, ten_batches, [], loss_fn=torch.nn.CrossEntropyLoss(),
                    augment=lambda x, g: x, prepare_valid=lambda x: x,
                    device=torch.device("cpu"), precision=Precision("cpu"))
    start_phase(learn, model, phases[1], recipe)
    groups = model.layer_groups()
    expected = discriminative_lrs(phases[1].lr, len(groups), 100)
    assert [g["max_lr"] for g in learn.opt.param_groups] == pytest.approx(expected)
    assert all(p.requires_grad for p in model.parameters())
    start_phase(learn, model, phases[0], recipe)
    assert [g["max_lr"] for g in learn.opt.param_groups] == pytest.approx(
        [recipe.stages[0].lr] * len(groups))


def _lr_curves(recipe, phases, n_batches: int = 10) -> dict[str, list[float]]:
    """The head group's LR at every step of each phase, through the real start_phase."""
    split_classes = [str(i) for i in range(10)]
    model = build_classifier(recipe, split_classes, (0.5,) * 3, (0.25,) * 3)
    learn = Learner(model, [None] * n_batches, [], loss_fn=nn.CrossEntropyLoss(),
                    augment=lambda x, g: x, prepare_valid=lambda x: x,
                    device=torch.device("cpu"), precision=Precision("cpu"))
    curves = {}
    for phase in phases:
        start_phase(learn, model, phase, recipe)
        lrs = []
        for _ in range(phase.epochs * n_batches):
            lrs.append(learn.opt.param_groups[-1]["lr"])
            learn.opt.step()
            learn.sched.step()
        curves[phase.name] = lrs
    return curves


def test_fine_tune_phases_use_fastai_fine_tune_schedules(digits_dir, tmp_path):
    recipe = recipe_for(digits_dir, tmp_path, "train.freeze_epochs=2", "stages.0.epochs=2",
                        "stages.1.epochs=2")
    phases = plan_phases(recipe)
    assert [(p.name, p.pct_start, p.div) for p in phases] == [
        ("stage1-frozen", 0.99, 25.0), ("stage1", 0.3, 5.0), ("stage2", 0.25, 25.0)]
    curves = _lr_curves(recipe, phases)
    lr1, lr2 = recipe.stages[0].lr, recipe.stages[1].lr
    frozen, unfrozen, later = curves["stage1-frozen"], curves["stage1"], curves["stage2"]
    # frozen: from lr/25 up to lr at the very end of the phase (pct_start 0.99)
    assert frozen[0] == pytest.approx(lr1 / 25)
    peak = frozen.index(max(frozen))
    assert peak >= len(frozen) - 2  # warm-up ends at step 0.99 * 20 - 1 = 18.8
    assert max(frozen) == pytest.approx(lr1, rel=1e-2)
    assert all(b > a for a, b in zip(frozen[:peak], frozen[1:peak + 1], strict=True))
    # unfrozen: halved lr, from lr/5, peak at 0.3 of the phase
    assert unfrozen[0] == pytest.approx(lr1 / 2 / 5)
    assert unfrozen.index(max(unfrozen)) == round(0.3 * len(unfrozen)) - 1
    assert max(unfrozen) == pytest.approx(lr1 / 2)
    # a later stage (plain training): unchanged, from lr/25, peak at 0.25
    assert later[0] == pytest.approx(lr2 / 25)
    assert later.index(max(later)) == round(0.25 * len(later)) - 1


def test_plain_training_keeps_its_one_cycle_schedule(digits_dir, tmp_path):
    recipe = recipe_for(digits_dir, tmp_path, "stages.0.epochs=2", "train.pct_start=0.4")
    phases = plan_phases(recipe)
    assert [(p.name, p.pct_start, p.div) for p in phases] == [
        ("stage1", 0.4, 25.0), ("stage2", 0.4, 25.0)]
    stage1 = _lr_curves(recipe, phases[:1])["stage1"]
    assert stage1[0] == pytest.approx(recipe.stages[0].lr / 25)
    assert stage1.index(max(stage1)) == round(0.4 * len(stage1)) - 1


def test_init_from_with_other_classes_keeps_body_and_rebuilds_head(trained, digits_dir, caplog):
    _, _, out = trained
    recipe = recipe_for(digits_dir, out / "retrain", f'model.init_from="{out / "best.pt"}"')
    ckpt = load_checkpoint(out / "best.pt")
    model = build_classifier(recipe, ["0", "1", "2"], (0.5,) * 3, (0.25,) * 3).eval()
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 3)  # eval: BN statistics stay as loaded
    body = {k: v for k, v in ckpt.model.items() if k.startswith("body")}
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in body.items())
    assert "rebuilt the head" in caplog.text


def test_init_from_a_checkpoint_of_another_arch_fails_before_training(trained, digits_dir,
                                                                     tmp_path):
    _, _, out = trained
    recipe = recipe_for(digits_dir, tmp_path / "retrain", 'model.arch="xresnet18"',
                        f'model.init_from="{out / "best.pt"}"')
    with pytest.raises(ConfigError, match=r"'xresnet_tiny' checkpoint but model.arch is "
                                          r"'xresnet18'.*model.arch=xresnet_tiny"):
        fit(recipe, progress=False)
    assert not (tmp_path / "retrain" / "last.pt").exists()


def test_resume_at_a_phase_boundary_keeps_the_grad_scaler_only_with_the_weights():
    """fp16 cannot train on the CPU; the GradScaler's state can still go through the path."""
    torch.manual_seed(0)
    model = build_model("xresnet_tiny", 3)
    done = _tiny_learner(model)
    done.precision = Precision("cpu", None, torch.amp.GradScaler("cpu", init_scale=512.0))
    _one_phase(done, "stage1")
    state = done.state_dict()
    state["scaler"]["_growth_tracker"] = 3
    resumed = _tiny_learner(build_model("xresnet_tiny", 3))
    resumed.precision = Precision("cpu", None, torch.amp.GradScaler("cpu"))
    _one_phase(resumed, "stage2")  # the next phase's fresh optimiser and schedule
    opt_before, sched_before = resumed.opt.state_dict(), resumed.sched.state_dict()
    resumed.load_state_dict(boundary_state(state))
    assert resumed.precision.scaler.get_scale() == 512.0
    assert resumed.precision.scaler.state_dict()["_growth_tracker"] == 3
    for k, v in model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    assert resumed.sched.state_dict() == sched_before  # the schedule is the new phase's
    assert resumed.opt.state_dict()["param_groups"] == opt_before["param_groups"]


def test_evaluate_cli_on_a_folder_with_one_of_the_models_classes(trained, digits_dir, tmp_path,
                                                                 capsys):
    _, _, out = trained
    folder = tmp_path / "only7"
    (folder / "7").mkdir(parents=True)
    for p in sorted((digits_dir / "7").iterdir())[:10]:
        (folder / "7" / p.name).write_bytes(p.read_bytes())
    report = tmp_path / "ev"
    assert main(["evaluate", str(out / "best.pt"), "--data", str(folder), "--output",
                 str(report), "--device", "cpu"]) == 0
    assert "images: 10" in capsys.readouterr().out
    matrix = json.loads((report / "confusion_matrix.json").read_text())
    assert len(matrix["classes"]) == 10
    assert sum(matrix["confusion"][matrix["classes"].index("7")]) == 10
    (folder / "cat").mkdir()
    (folder / "cat" / "a.png").write_bytes((folder / "7" / p.name).read_bytes())
    assert main(["evaluate", str(out / "best.pt"), "--data", str(folder), "--output",
                 str(report), "--device", "cpu"]) == 2
    assert "classes the model does not know: ['cat']" in capsys.readouterr().err


def test_lr_find_with_too_few_iterations_is_a_cli_error(digits_dir, tmp_path, capsys):
    argv = ["lr-find", "--config", str(RECIPE), "--data", str(digits_dir), "--output",
            str(tmp_path), "--device", "cpu", "--num-it", "5"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "at least 12 mini-batches" in err and "raise --num-it (got 5)" in err


def test_lr_find_that_diverges_or_gets_no_batches_says_what_to_change():
    torch.manual_seed(0)
    learn = _tiny_learner(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3)), n_batches=20)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"diverged after \d+ mini-batches.*lower --start-lr"):
        lr_find(learn, start_lr=10.0, end_lr=1e6, num_it=100)
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in before.items())
    learn.train_dl = []
    with pytest.raises(DataError, match="ran only 0 mini-batches"):
        lr_find(learn, num_it=20)


def test_lr_find_gives_finite_suggestions_in_range_and_a_png(digits_dir, tmp_path):
    recipe = recipe_for(digits_dir, tmp_path, "stages.0.size=12")
    result, png = run_lr_find(recipe, num_it=40, start_lr=1e-6, end_lr=1.0)
    assert set(result.suggestions) == {"minimum", "steep", "valley", "slide"}
    for name, lr in result.suggestions.items():
        assert math.isfinite(lr)
        low = 1e-7 if name == "minimum" else 1e-6  # minimum/10 may sit one decade lower
        assert low <= lr <= 1.0, (name, lr)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100
