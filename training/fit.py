"""Walk a recipe: stages (progressive resizing) of one-cycle phases (fine-tune: frozen, then
unfrozen with discriminative LRs), checkpointing every epoch and resuming where it stopped.

Split the way timm's train script should have been: build_data, build_model, build_learner,
plan_phases, fit — each short enough to read at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from service.imaging import decode_side
from training.augment import BatchAugment, to_float_nchw
from training.callbacks import (
    BnFreeze,
    CheckpointCallback,
    HistoryCallback,
    ProgressCallback,
    load_checkpoint,
    write_json,
)
from training.config import Recipe, eval_spec, save_recipe, tta_spec
from training.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataLoaders,
    DataSplit,
    build_dataloaders,
    compute_stats,
    load_items,
)
from training.data.cache import PresizedImages, build_presized
from training.device import select_device, select_precision, use_channels_last
from training.distributed import DistContext, convert_sync_bn, is_main
from training.errors import ConfigError
from training.learner import Callback, Learner
from training.mixing import build_mixer
from training.models import Classifier, build_model
from training.schedule import (
    DIV,
    FINE_TUNE_DIV,
    FINE_TUNE_FROZEN_PCT_START,
    FINE_TUNE_PCT_START,
    build_optimizer,
    discriminative_lrs,
    one_cycle,
)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "tta-serve-checkpoint/1"


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
    split = load_items(d.path, csv=d.csv or None, valid_pct=d.valid_pct, seed=d.seed)
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
                     std: tuple[float, ...]) -> Classifier:
    """The recipe's architecture; ``init_from`` keeps an earlier run's body (head if it fits)."""
    m = recipe.model
    if not m.init_from:
        return build_model(m.arch, len(classes), mean=mean, std=std,
                           pretrained=m.pretrained or None)
    ckpt = load_checkpoint(m.init_from)
    if ckpt["arch"] != m.arch:
        raise ConfigError(
            f"model.init_from {m.init_from} is a {ckpt['arch']!r} checkpoint but model.arch is "
            f"{m.arch!r}; set model.arch = {ckpt['arch']!r} (--set model.arch={ckpt['arch']}) "
            "or start from a checkpoint of the recipe's architecture")
    model = build_model(ckpt["arch"], len(ckpt["classes"]), mean=ckpt["mean"], std=ckpt["std"])
    model.load_state_dict(ckpt["model"])
    if list(ckpt["classes"]) != list(classes):
        log.warning("init_from %s: its %d classes differ from the data's %d; kept the body, "
                    "rebuilt the head", m.init_from, len(ckpt["classes"]), len(classes))
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
    return Learner(
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


def start_phase(learn: Learner, model: Classifier, phase: Phase, recipe: Recipe) -> None:
    """Freeze or unfreeze, then a fresh AdamW + one-cycle over the phase's steps.

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
    learn.opt = build_optimizer(groups, lrs, recipe.train.weight_decay)
    learn.sched = one_cycle(learn.opt, phase.epochs * len(learn.train_dl),
                            pct_start=phase.pct_start, div=phase.div)
    if learn.dist is not None:
        learn.train_model = learn.dist.wrap(model)


def boundary_state(state: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint taken at the end of a phase carries into the next phase.

    Mid-phase a resume restores everything (weights, optimiser, schedule position); at a phase
    boundary the next phase starts a fresh optimiser and schedule (as the uninterrupted run
    does), but keeps the weights, the EMA and the fp16 GradScaler's scale.
    """
    return {"model": state["model"], "ema": state.get("ema"), "scaler": state.get("scaler")}


def fit(recipe: Recipe, *, resume: bool = False, progress: bool = True,
        callbacks: Sequence[Callback] = (), dist: DistContext | None = None) -> FitResult:
    """Train the recipe; with ``resume``, continue from ``output/last.pt`` exactly.

    ``callbacks`` are added to the built-in ones (progress, history, checkpoints). ``dist``
    (training.distributed, under torchrun): every rank trains its shard, rank 0 writes the files.
    """
    out = Path(recipe.train.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(recipe.train.seed)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    device = dist.device if dist is not None else select_device(recipe.train.device)
    world_size = dist.world_size if dist is not None else 1
    split, mean, std = build_data(recipe)
    model = build_classifier(recipe, split.classes, mean, std)
    model = convert_sync_bn(model, dist, recipe.train.sync_bn)
    if recipe.model.init_from:  # keep the normalisation its weights were trained with
        ckpt_meta = load_checkpoint(recipe.model.init_from)
        mean, std = tuple(ckpt_meta["mean"]), tuple(ckpt_meta["std"])
    model.to(device)
    if use_channels_last(recipe.train.channels_last, device):
        model.to(memory_format=torch.channels_last)
    presized = build_presized_set(recipe, split, device, progress and is_main(dist))
    min_side = decode_side(eval_spec(recipe, recipe.stages[-1].size), tta_spec(recipe))

    phases = plan_phases(recipe)
    state = load_checkpoint(out / "last.pt") if resume else None
    if resume and state is None:
        raise ConfigError(f"--resume: {out / 'last.pt'} not found")
    start_index, start_epoch = (state["progress"]["phase"], state["progress"]["epoch"]) \
        if state else (0, 0)
    history: list[dict[str, Any]] = list(state["history"]) if state else []
    if state and state.get("world_size", 1) != world_size:
        log.warning("resuming a run trained on %d process(es) with %d: it continues, but the "
                    "shards, global batch and scaled LR differ, so it will not reproduce the "
                    "uninterrupted run exactly", state.get("world_size", 1), world_size)
    if is_main(dist):
        save_recipe(recipe, out / "recipe.toml")

    current: dict[str, Any] = {}

    def describe(learn: Learner) -> dict[str, Any]:
        phase_index = current["index"]
        epoch_done = learn.state.epoch + 1
        return {
            "format": CHECKPOINT_FORMAT, "arch": recipe.model.arch, "classes": split.classes,
            "mean": list(mean), "std": list(std),
            "eval_spec": eval_spec(recipe, current["size"]).to_dict(),
            "tta": tta_spec(recipe).to_dict(), "recipe": recipe.to_dict(),
            "progress": {"phase": phase_index, "epoch": epoch_done},
            "history": history, "world_size": world_size,
        }

    checkpoints = CheckpointCallback(out, recipe.train.metric, describe,
                                     best=state["best_metric"] if state else None,
                                     enabled=is_main(dist), select=recipe.train.select)
    all_callbacks = [BnFreeze(), ProgressCallback(progress and is_main(dist)),
                     HistoryCallback(history), checkpoints, *callbacks]
    learn: Learner | None = None
    loaded_stage = -1
    for index, phase in enumerate(phases):
        if index < start_index:
            continue
        first_epoch = start_epoch if index == start_index else 0
        if first_epoch >= phase.epochs:
            continue
        stage = recipe.stages[phase.stage]
        if phase.stage != loaded_stage:
            dls = build_dataloaders(
                split, size=stage.size, batch_size=stage.batch_size, presize=recipe.presize,
                eval_spec=eval_spec(recipe, stage.size), num_workers=recipe.data.num_workers,
                seed=recipe.train.seed, presized=presized, min_side=min_side,
                presize_fit=recipe.data.presize_fit)
            if dist is not None:
                dls = dist.shard_loaders(dls, recipe.train.seed)
            if learn is None:
                learn = build_learner(recipe, model, dls, stage.size, device, all_callbacks,
                                      dist)
            else:
                learn.train_dl, learn.valid_dl = dls.train, dls.valid
                learn.augment = BatchAugment(recipe.augment, stage.size)
            loaded_stage = phase.stage
            log.info("stage %d: size %d px, batch %d, %d epochs, lr %.2e", phase.stage + 1,
                     stage.size, stage.batch_size, stage.epochs, stage.lr)
            if dist is not None:
                log.info("  x %d processes: global batch %d, lr x %g (train.scale_lr=%s)",
                         world_size, stage.batch_size * world_size,
                         dist.lr_factor(recipe.train.scale_lr), recipe.train.scale_lr)
        current.update(index=index, size=stage.size)
        start_phase(learn, model, phase, recipe)
        if state is not None:
            learn.load_state_dict(state if index == start_index else boundary_state(state))
            log.info("resumed %s at epoch %d of %d", phase.name, first_epoch + 1, phase.epochs)
            state = None
        learn.fit(phase.epochs, phase=phase.name, start_epoch=first_epoch)

    if is_main(dist):
        write_json({"history": history, "best": {recipe.train.metric: checkpoints.best},
                    "seconds": time.perf_counter() - t0}, out / "metrics.json")
    if dist is not None:
        dist.barrier()  # rank 0's checkpoints are on disk before any rank reads them
    return FitResult(out / "best.pt", checkpoints.best, recipe.train.metric, history, out, split)
