"""What the commands do end to end: fit then report, the LR finder, evaluating a checkpoint."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from service.imaging import decode_side
from training.callbacks import write_json
from training.checkpoint import load_model, save_checkpoint
from training.config import Recipe, eval_spec
from training.data import DataSplit, Items, build_dataloaders, labelled_folder, split_from_recipe
from training.device import select_device
from training.distributed import DistContext, is_main, require_single_process
from training.errors import DataError
from training.evaluate import predict
from training.evaluation_summary import EvaluationSummary
from training.interpret import write_interpretation
from training.lr_find import DEFAULT_SUGGESTION, LRFindResult, lr_find, plot_lr_find
from training.phases import FitResult, build_classifier, build_data, build_learner, fit, plan_phases
from training.trackers import build_trackers
from training.trackers.curves import RunRecorder, write_run_pictures

log = logging.getLogger(__name__)


def fit_and_report(recipe: Recipe, *, resume: bool = False, tta: bool = True,
                   progress: bool = True, dist: DistContext | None = None,
                   ) -> EvaluationSummary:
    """Train, then evaluate the best checkpoint (plain + TTA) and record it in the checkpoint;
    the summary's ``checkpoint`` is that best.pt.

    Under torchrun (``dist``) every rank trains and evaluates its shard; rank 0 writes.
    """
    offsets = epoch_offsets(recipe)
    main = is_main(dist)
    recorder = RunRecorder(recipe.train.output, offsets, resume=resume, enabled=main)
    trackers = build_trackers(recipe, offsets, resume=resume) if main else []
    status = "FAILED"
    try:
        result = fit(recipe, resume=resume, progress=progress, dist=dist,
                     callbacks=[recorder, *trackers])
        report_dir = result.output / "report"
        summary = evaluate_checkpoint(result.best_checkpoint, output=report_dir, tta=tta,
                                      device_name=recipe.train.device, split=result.split,
                                      progress=progress, dist=dist)
        if main:
            write_run_pictures(recorder, result.history, result.split.classes, report_dir)
            record_final_metrics(result, summary)
            for tracker in trackers:
                tracker.log_report(report_dir, summary)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        for tracker in trackers:
            tracker.close(status)
    return summary


def epoch_offsets(recipe: Recipe) -> dict[str, int]:
    """Each phase's name -> the epochs the run trains before it (its global epoch offset)."""
    offsets, total = {}, 0
    for phase in plan_phases(recipe):
        offsets[phase.name] = total
        total += phase.epochs
    return offsets


def record_final_metrics(result: FitResult, summary: EvaluationSummary) -> None:
    """The best checkpoint's evaluation (plain + TTA) into it and into metrics.json."""
    best = result.best
    if best is None:
        raise DataError(f"no epoch was trained: {result.best_checkpoint} was not written")
    history = result.history
    metrics = {**best.metrics, "accuracy": summary.accuracy,
               "tta_accuracy": summary.tta_accuracy, "n_valid": summary.n,
               "valid_set": result.split.source,
               # honest numbers: was this epoch picked on the split it is reported on?
               "epoch_selected_on_valid_set": best.recipe.get("train", {}).get("select",
                                                                              "best") == "best",
               "last_epoch_accuracy": history[-1].get("accuracy") if history else None}
    save_checkpoint(dataclasses.replace(best, metrics=metrics), result.best_checkpoint)
    write_json({**result.summary, "final": metrics}, result.output / "metrics.json")


def run_lr_find(recipe: Recipe, *, num_it: int = 100, start_lr: float = 1e-7,
                end_lr: float = 10.0, use: str = DEFAULT_SUGGESTION,
                progress: bool = True) -> tuple[LRFindResult, Path]:
    """The finder on the recipe's first stage (body frozen when the recipe fine-tunes: the LR of
    its first phase); writes OUTPUT/lr_find.png naming the suggestion ``use``. Seeded by
    train.seed: the same recipe gives the same suggestions."""
    require_single_process("lr-find", "the LR it suggests is per device batch, which is what "
                           "the recipe's lr means; train.scale_lr scales it under torchrun")
    torch.manual_seed(recipe.train.seed)  # the model's initialisation, as fit() seeds it
    device = select_device(recipe.train.device)
    split, mean, std = build_data(recipe)
    model = build_classifier(recipe, split.classes, mean, std).to(device)
    if recipe.train.freeze_epochs > 0:  # the first phase trains the head alone: find its LR
        model.freeze_body(train_bn=recipe.train.train_bn)  # (fastai's lr_find on vision_learner)
    stage = recipe.stages[0]
    dls = build_dataloaders(split, size=stage.size, batch_size=stage.batch_size,
                            presize=recipe.presize, eval_spec=eval_spec(recipe, stage.size),
                            num_workers=recipe.data.num_workers, seed=recipe.train.seed)
    learn = build_learner(recipe, model, dls, stage.size, device, callbacks=[])
    result = lr_find(learn, num_it=num_it, start_lr=start_lr, end_lr=end_lr,
                     weight_decay=recipe.train.weight_decay, progress=progress)
    png = plot_lr_find(result, Path(recipe.train.output) / "lr_find.png", use=use,
                       recipe_lr=stage.lr)
    return result, png


def evaluation_items(data: str | Path | None, classes: list[str], split: DataSplit | None,
                     recipe: dict[str, Any]) -> Items:
    """A labelled folder of the model's classes, else the run's validation split."""
    if data is None:
        return (split or split_from_recipe(recipe.get("data") or {})).valid
    items = labelled_folder(data, classes)
    if not items:
        raise DataError(f"{data} has no readable images in folders named after the model's "
                        f"classes ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})")
    return items


def evaluate_checkpoint(checkpoint: str | Path, *, output: Path, data: str | Path | None = None,
                        tta: bool = False, batch_size: int = 64, min_confused: int = 1,
                        device_name: str = "auto", split: DataSplit | None = None,
                        progress: bool = True, dist: DistContext | None = None,
                        ) -> EvaluationSummary:
    """Evaluate on the run's validation set (or a labeled folder) and write the reports.

    With ``dist`` the ranks share the predicting; rank 0 writes the reports, and every rank
    returns the summary (the others without most_confused).
    """
    device = dist.device if dist is not None else select_device(device_name)
    model, ckpt = load_model(checkpoint, device)
    classes = list(ckpt.classes)
    items = evaluation_items(data, classes, split, ckpt.recipe)
    spec = ckpt.eval_transform
    preds = predict(model, items, eval_spec=spec, tta=ckpt.tta_spec if tta else None,
                    device=device, batch_size=batch_size, progress=progress and is_main(dist),
                    dist=dist, min_side=decode_side(spec, ckpt.tta_spec))
    if not is_main(dist):
        return EvaluationSummary(n=len(preds.targets), accuracy=preds.accuracy,
                                 tta_accuracy=preds.tta_accuracy, checkpoint=Path(checkpoint))
    summary = write_interpretation(preds, items, classes, Path(output), eval_spec=spec,
                                   min_confused=min_confused)
    log.info("evaluated %d images: accuracy %.4f%s", summary.n, summary.accuracy,
             "" if summary.tta_accuracy is None else f", TTA {summary.tta_accuracy:.4f}")
    return dataclasses.replace(summary, checkpoint=Path(checkpoint))
