"""Walk a recipe: stages (progressive resizing) of one-cycle phases (fine-tune: frozen, then
unfrozen with discriminative LRs), checkpointing every epoch and resuming where it stopped.

Split the way timm's train script should have been: plan_phases, prepare_run (data, model,
presized set), build_learner, train_phases (stage loaders, resume), fit — each short enough to
read at once. The checkpoints' layout and reading are training.checkpoint's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from service.imaging import decode_side
from training import machine
from training.augment import BatchAugment, to_float_nchw
from training.callbacks import (
    BnFreeze,
    CheckpointCallback,
    HistoryCallback,
    ProgressCallback,
    RunClock,
    write_json,
)
from training.checkpoint import Checkpoint, RunFields, load_checkpoint
from training.config import Recipe, eval_spec, save_recipe, tta_spec
from training.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataLoaders,
    DataSplit,
    build_dataloaders,
    compute_stats,
    split_from_recipe,
)
from training.data.cache import PresizedImages, build_presized
from training.device import select_device, select_precision, use_channels_last
from training.distributed import DistContext, convert_sync_bn, is_main
from training.errors import ConfigError
from training.learner import Callback, Learner
from training.mixing import build_mixer
from training.models import Classifier, build_model
from training.models.hub_weights import weights_stats
from training.optim import make_optimizer
from training.schedule import (
    DIV,
    FINE_TUNE_DIV,
    FINE_TUNE_FROZEN_PCT_START,
    FINE_TUNE_PCT_START,
    discriminative_lrs,
    one_cycle,
    whole_run_schedule,
)
from training.techniques import shape_model, technique_callbacks, whiten_from_data

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase:
    """One one-cycle run: a stage's frozen warm-up, or its main (unfrozen) training."""

    name: str
    stage: int
    epochs: int
    lr: float
    lr_mult: float
    frozen: bool
    pct_start: float  # one-cycle warm-up fraction
    div: float  # the schedule starts at lr / div


@dataclass
class FitResult:
    best_checkpoint: Path
    best_metric: float
    metric: str
    history: list[dict[str, Any]]
    output: Path
    split: DataSplit
    best: Checkpoint | None = None  # best.pt as written (None where this process wrote none)
    summary: dict[str, Any] = field(default_factory=dict)  # metrics.json as fit wrote it


def plan_phases(recipe: Recipe) -> list[Phase]:
    """fastai's fine_tune on the first stage (freeze, then halve the LR and unfreeze).

    As fastai's ``fine_tune``: the frozen phase's one-cycle peaks at the end (pct_start 0.99),
    the unfrozen phase after it warms up for 0.3 of it from lr/5. Every other phase (no
    freeze_epochs, later stages) is a plain one-cycle with train.pct_start from lr/25.
    """
    t = recipe.train
    phases = []
    for i, stage in enumerate(recipe.stages):
        lr, pct_start, div = stage.lr, t.pct_start, DIV
        if i == 0 and t.freeze_epochs > 0:
            phases.append(Phase(f"stage{i + 1}-frozen", i, t.freeze_epochs, lr, 1.0,
                                frozen=True, pct_start=FINE_TUNE_FROZEN_PCT_START, div=DIV))
            lr, pct_start, div = lr / 2, FINE_TUNE_PCT_START, FINE_TUNE_DIV
        phases.append(Phase(f"stage{i + 1}", i, stage.epochs, lr, t.lr_mult, frozen=False,
                            pct_start=pct_start, div=div))
    return [p for p in phases if p.epochs > 0]


def build_data(recipe: Recipe) -> tuple[DataSplit, tuple[float, ...], tuple[float, ...]]:
    d = recipe.data
    split = split_from_recipe(d)
    log.info("data: %s, %d classes, %d train / %d valid images", split.source,
             len(split.classes), len(split.train.paths), len(split.valid.paths))
    if d.normalize == "dataset":
        mean, std = compute_stats(split, presize=recipe.presize)
        log.info("normalisation from the training data: mean %s std %s",
                 [round(m, 4) for m in mean], [round(s, 4) for s in std])
    elif d.normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    published = weights_stats(recipe.model.arch, recipe.model.pretrained)
    if published is not None:  # published weights expect the statistics they were trained with
        mean, std = published
        log.info("normalising with the statistics %s's published weights were trained with: "
                 "mean %s std %s", recipe.model.arch, list(mean), list(std))
    return split, tuple(mean), tuple(std)


def build_presized_set(recipe: Recipe, split: DataSplit, device: torch.device,
                      progress: bool) -> PresizedImages | None:
    """The training split decoded once for the whole run (None with data.cache = "off")."""
    d = recipe.data
    if d.cache == "off":
        return None
    t0 = time.perf_counter()
    interpolation = eval_spec(recipe, recipe.stages[-1].size).interpolation
    presized = build_presized(split.train, recipe.presize, interpolation, mode=d.cache,
                              cache_dir=d.cache_dir or None, threads=recipe.train.threads,
                              progress=progress, fit=d.presize_fit)
    presized = presized.to(device)
    seconds = time.perf_counter() - t0
    log.info("presized %d training images to %d px once for the run (%s, %.1f MB) in %.1f s "
             "(%.0f images/s)", len(presized), recipe.presize, presized.where,
             presized.nbytes / 1e6, seconds, len(presized) / max(seconds, 1e-9))
    return presized


def build_classifier(recipe: Recipe, classes: list[str], mean: tuple[float, ...],
                     std: tuple[float, ...], init: Checkpoint | None = None) -> Classifier:
    """The recipe's architecture; ``init_from`` (``init``: that checkpoint, already read) keeps
    an earlier run's evaluated weights: the body, and the head if the classes are the same."""
    m = recipe.model
    if not m.init_from:
        return shape_model(build_model(m.arch, len(classes), mean=mean, std=std,
                                       pretrained=m.pretrained or None,
                                       logit_scale=m.logit_scale), recipe)
    init = init or load_checkpoint(m.init_from)
    if init.arch != m.arch:
        raise ConfigError(
            f"model.init_from {m.init_from} is a {init.arch!r} checkpoint but model.arch is "
            f"{m.arch!r}; set model.arch = {init.arch!r} (--set model.arch={init.arch}) "
            "or start from a checkpoint of the recipe's architecture")
    model = shape_model(init.build_model().train(), recipe, initialise=False)
    if list(init.classes) != list(classes):
        log.warning("init_from %s: its %d classes differ from the data's %d; kept the body, "
                    "rebuilt the head", m.init_from, len(init.classes), len(classes))
        model.reset_head(len(classes))
    else:
        log.info("init_from %s: same %d classes, starting from all its weights", m.init_from,
                 len(classes))
    return model


def build_learner(recipe: Recipe, model: nn.Module, dls: DataLoaders, size: int,
                  device: torch.device, callbacks: list[Callback],
                  dist: DistContext | None = None) -> Learner:
    t = recipe.train
    ema = None
    if t.ema > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(t.ema), use_buffers=True)
    learn = Learner(
        model, dls.train, dls.valid,
        loss_fn=nn.CrossEntropyLoss(label_smoothing=t.label_smoothing),
        augment=BatchAugment(recipe.augment, size),
        prepare_valid=to_float_nchw,
        device=device,
        precision=select_precision(t.mixed_precision, device),
        mixer=build_mixer(t.mixup, t.cutmix),
        ema=ema,
        channels_last=use_channels_last(t.channels_last, device),
        callbacks=callbacks,
        seed=t.seed,
        dist=dist,
    )
    if t.compile == "on":  # the training step only; evaluation and checkpoints use the module
        learn.train_model = torch.compile(learn.train_model)
    return learn


def start_phase(learn: Learner, model: Classifier, phase: Phase, recipe: Recipe,
                clock: RunClock | None = None) -> None:
    """Freeze or unfreeze, then a fresh optimiser (train.optimizer) and the phase's schedule:
    its own one-cycle (train.schedule = "stage"), or its part of the run's one schedule.

    Under torchrun the LR is scaled for the global batch (train.scale_lr) and the DDP wrapper
    is rebuilt, since which parameters it must reduce changed with the freezing.
    """
    if phase.frozen:
        model.freeze_body(train_bn=recipe.train.train_bn)
    else:
        model.unfreeze()
    groups = model.layer_groups()
    lr = phase.lr * (learn.dist.lr_factor(recipe.train.scale_lr) if learn.dist else 1.0)
    lrs = discriminative_lrs(lr, len(groups), phase.lr_mult)
    t = recipe.train
    learn.opt = make_optimizer(model, groups, lrs, name=t.optimizer, weight_decay=t.weight_decay,
                               lr_mults=t.lr_mults, momentum=t.momentum,
                               batch_size=recipe.stages[phase.stage].batch_size)
    if t.schedule == "stage" or clock is None:
        learn.sched = one_cycle(learn.opt, phase.epochs * len(learn.train_dl),
                                pct_start=phase.pct_start, div=phase.div,
                                cycle_momentum=t.optimizer == "adamw")
    else:
        learn.sched = whole_run_schedule(learn.opt, t.schedule, offset=clock.step,
                                         total=clock.total_steps, pct_start=t.pct_start)
    if learn.dist is not None:
        learn.train_model = learn.dist.wrap(model)


def boundary_state(state: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint taken at the end of a phase carries into the next phase.

    Mid-phase a resume restores everything (weights, optimiser, schedule position); at a phase
    boundary the next phase starts a fresh optimiser and schedule (as the uninterrupted run
    does), but keeps the weights, the EMA and the fp16 GradScaler's scale.
    """
    return {"model": state["model"], "ema": state.get("ema"), "scaler": state.get("scaler")}


@dataclass
class Run:
    """What every phase of one fit shares: the data, the model, where it trains and writes."""

    recipe: Recipe
    out: Path
    device: torch.device
    dist: DistContext | None
    split: DataSplit
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model: Classifier
    presized: PresizedImages | None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return self.dist.world_size if self.dist is not None else 1

    def describe(self, position: PhasePosition, epochs_done: int) -> RunFields:
        """The run-level checkpoint fields at the end of an epoch (the callback adds weights)."""
        recipe = self.recipe
        return RunFields(
            arch=recipe.model.arch, classes=self.split.classes, mean=list(self.mean),
            std=list(self.std), eval_spec=eval_spec(recipe, position.size).to_dict(),
            tta=tta_spec(recipe).to_dict(), recipe=recipe.to_dict(),
            progress={"phase": position.index, "epoch": epochs_done}, history=self.history,
            world_size=self.world_size)


@dataclass
class PhasePosition:
    """Where train_phases is: the phase's index in plan_phases and its stage's image size.
    It moves it at each phase's start; the checkpoints read it at each epoch's end."""

    index: int = 0
    size: int = 0


def prepare_run(recipe: Recipe, dist: DistContext | None, progress: bool) -> Run:
    """Seed, choose the device, read and split the data, build the model, presize once."""
    torch.manual_seed(recipe.train.seed)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    device = dist.device if dist is not None else select_device(recipe.train.device)
    split, mean, std = build_data(recipe)
    init = load_checkpoint(recipe.model.init_from) if recipe.model.init_from else None
    if init is not None:  # keep the normalisation its weights were trained with
        mean, std = tuple(init.mean), tuple(init.std)
    model = build_classifier(recipe, split.classes, mean, std, init=init)
    model = convert_sync_bn(model, dist, recipe.train.sync_bn)
    model.to(device)
    presized = build_presized_set(recipe, split, device, progress and is_main(dist))
    whiten_from_data(model, recipe, presized)
    if use_channels_last(recipe.train.channels_last, device):
        model.to(memory_format=torch.channels_last)
    out = Path(recipe.train.output)
    out.mkdir(parents=True, exist_ok=True)
    return Run(recipe, out, device, dist, split, mean, std, model, presized)


def read_resume_state(run: Run) -> Checkpoint:
    """OUTPUT/last.pt, warning when it was trained on another number of processes."""
    path = run.out / "last.pt"
    if not path.is_file():
        raise ConfigError(f"--resume: {path} not found")
    state = load_checkpoint(path)
    state.resume_position(path)  # a clear error now for a last.pt fit cannot continue
    if state.world_size != run.world_size:
        log.warning("resuming a run trained on %d process(es) with %d: it continues, but the "
                    "shards, global batch and scaled LR differ, so it will not reproduce the "
                    "uninterrupted run exactly", state.world_size, run.world_size)
    return state


def stage_loaders(run: Run, stage_index: int) -> DataLoaders:
    """One progressive-resizing stage's loaders (sharded under torchrun)."""
    recipe, stage = run.recipe, run.recipe.stages[stage_index]
    min_side = decode_side(eval_spec(recipe, recipe.stages[-1].size), tta_spec(recipe))
    dls = build_dataloaders(
        run.split, size=stage.size, batch_size=stage.batch_size, presize=recipe.presize,
        eval_spec=eval_spec(recipe, stage.size), num_workers=recipe.data.num_workers,
        seed=recipe.train.seed, presized=run.presized, min_side=min_side,
        presize_fit=recipe.data.presize_fit)
    log.info("stage %d: size %d px, batch %d, %d epochs, lr %.2e", stage_index + 1,
             stage.size, stage.batch_size, stage.epochs, stage.lr)
    if run.dist is None:
        return dls
    log.info("  x %d processes: global batch %d, lr x %g (train.scale_lr=%s)", run.world_size,
             stage.batch_size * run.world_size, run.dist.lr_factor(recipe.train.scale_lr),
             recipe.train.scale_lr)
    return run.dist.shard_loaders(dls, recipe.train.seed)


def enter_stage(run: Run, learn: Learner | None, stage_index: int,
                callbacks: list[Callback]) -> Learner:
    """The learner on a stage's loaders: built for the first stage, re-pointed after that."""
    dls = stage_loaders(run, stage_index)
    size = run.recipe.stages[stage_index].size
    if learn is None:
        return build_learner(run.recipe, run.model, dls, size, run.device, callbacks, run.dist)
    learn.train_dl, learn.valid_dl = dls.train, dls.valid
    learn.augment = BatchAugment(run.recipe.augment, size)
    return learn


def steps_per_epoch(run: Run, stage_index: int) -> int:
    """Optimiser steps in one epoch of a stage (the loader drops the ragged last batch)."""
    n = -(-len(run.split.train) // run.world_size)
    batch = run.recipe.stages[stage_index].batch_size
    return n // batch if n >= batch else 1


def phase_offsets(run: Run, phases: list[Phase]) -> list[int]:
    """The run's step at which each phase starts, and the run's total steps last."""
    offsets = [0]
    for phase in phases:
        offsets.append(offsets[-1] + phase.epochs * steps_per_epoch(run, phase.stage))
    return offsets


def train_phases(run: Run, state: Checkpoint | None, callbacks: list[Callback],
                 current: PhasePosition, clock: RunClock) -> None:
    """Every phase from the resume point on; ``current`` tells the checkpoints where we are."""
    start_index, start_epoch = state.resume_position(run.out / "last.pt") if state else (0, 0)
    learn: Learner | None = None
    loaded_stage = -1
    phases = plan_phases(run.recipe)
    offsets = phase_offsets(run, phases)
    for index, phase in enumerate(phases):
        first_epoch = start_epoch if index == start_index else 0
        if index < start_index or first_epoch >= phase.epochs:
            continue
        if phase.stage != loaded_stage:
            learn = enter_stage(run, learn, phase.stage, callbacks)
            loaded_stage = phase.stage
        current.index, current.size = index, run.recipe.stages[phase.stage].size
        clock.step = offsets[index]
        start_phase(learn, run.model, phase, run.recipe, clock)
        clock.step += first_epoch * steps_per_epoch(run, phase.stage)
        if state is not None:
            learn.load_state_dict(state.to_dict() if index == start_index
                                  else boundary_state(state.to_dict()))
            log.info("resumed %s at epoch %d of %d", phase.name, first_epoch + 1, phase.epochs)
            state = None
        learn.fit(phase.epochs, phase=phase.name, start_epoch=first_epoch)


def fit(recipe: Recipe, *, resume: bool = False, progress: bool = True,
        callbacks: Sequence[Callback] = (), dist: DistContext | None = None) -> FitResult:
    """Train the recipe; with ``resume``, continue from ``output/last.pt`` exactly.

    ``callbacks`` are added to the built-in ones (progress, history, checkpoints). ``dist``
    (training.distributed, under torchrun): every rank trains its shard, rank 0 writes the files.
    """
    t0 = time.perf_counter()
    started = machine.start()
    run = prepare_run(recipe, dist, progress)
    state = read_resume_state(run) if resume else None
    run.history.extend(state.history if state else [])
    main = is_main(dist)
    if main:
        save_recipe(recipe, run.out / "recipe.toml")
    current = PhasePosition()
    checkpoints = CheckpointCallback(
        run.out, recipe.train.metric, lambda learn: run.describe(current, learn.state.epoch + 1),
        best=state.best_metric if state else None, enabled=main, select=recipe.train.select)
    clock = RunClock(phase_offsets(run, plan_phases(recipe))[-1], lambda: len(run.history))
    builtin = [BnFreeze(), ProgressCallback(progress and main), HistoryCallback(run.history),
               checkpoints, clock, *technique_callbacks(recipe, run.model, clock)]
    train_phases(run, state, [*builtin, *callbacks], current, clock)
    summary = {"history": run.history, "best": {recipe.train.metric: checkpoints.best},
               "seconds": time.perf_counter() - t0, **machine.finish(started),
               "images_per_s": machine.training_images_per_s(run.history)}
    best = checkpoints.saved_best
    if main:
        write_json(summary, run.out / "metrics.json")
        if best is None and (run.out / "best.pt").is_file():  # resumed after its best epoch
            best = load_checkpoint(run.out / "best.pt")
    if dist is not None:
        dist.barrier()  # rank 0's checkpoints are on disk before any rank reads them
    return FitResult(run.out / "best.pt", checkpoints.best, recipe.train.metric, run.history,
                     run.out, run.split, best, summary)
