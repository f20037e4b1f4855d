"""One training run in its own process: ours (the ``training`` package) or fastai's, the same
recipe; its accuracy, TTA accuracy, epoch times and peak RSS."""

from __future__ import annotations

import csv
import json
import resource
import time
from pathlib import Path
from typing import Any

from bench.vs_fastai.ours_recipe import ours_recipe_dict


def _rss_mb() -> dict[str, float]:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mb": me, "peak_rss_children_mb": kids}


def worker_ours(spec: dict[str, Any]) -> dict[str, Any]:
    import logging

    import torch

    torch.set_num_threads(spec["threads"])
    from service.imaging import decode_side
    from training.checkpoint import load_model
    from training.config import recipe_from_dict
    from training.evaluate import predict
    from training.learner import Callback
    from training.phases import fit

    logging.basicConfig(level=logging.WARNING, format="    ours: %(message)s")
    logging.getLogger("training.phases").setLevel(logging.INFO)
    work = Path(spec["workdir"])
    csv_path = work / "items.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "is_valid"])
        for r in spec["rows"]:
            w.writerow([r["path"], r["label"], "1" if r["is_valid"] else "0"])
    recipe = recipe_from_dict(ours_recipe_dict(spec, work, csv_path))
    epochs: list[dict[str, Any]] = []

    class Log(Callback):
        order = 50

        def before_epoch(self, learn) -> None:
            self.t0 = time.perf_counter()

        def after_epoch(self, learn) -> None:
            s = learn.state
            seconds = time.perf_counter() - self.t0
            n = spec["n_train"]
            train_s = n / s.images_per_s if s.images_per_s == s.images_per_s else seconds
            epochs.append({"phase": s.phase, "seconds": seconds, "train_seconds": train_s,
                           "accuracy": s.metrics.get("accuracy")})
            print(f"    ours   seed {spec['seed']} {s.phase} epoch {s.epoch + 1}/{s.n_epochs}: "
                  f"loss {s.train_loss:.3f} acc {s.metrics.get('accuracy', 0):.4f} "
                  f"{seconds:.1f} s ({s.images_per_s:.0f} train images/s)", flush=True)

    t0 = time.perf_counter()
    result = fit(recipe, progress=False, callbacks=[Log()])
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    device = torch.device("cpu")
    model, ckpt = load_model(result.best_checkpoint, device)
    espec, tspec = ckpt.eval_transform, ckpt.tta_spec
    preds = predict(model, result.split.valid, eval_spec=espec, tta=tspec, device=device,
                    progress=False, min_side=decode_side(espec, tspec))
    eval_s = time.perf_counter() - t1
    return {"accuracy": preds.accuracy, "tta_accuracy": preds.tta_accuracy,
            "last_epoch_accuracy": epochs[-1]["accuracy"] if epochs else None,
            "fit_seconds": fit_s, "eval_tta_seconds": eval_s, "epochs": epochs}


def worker_fastai(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec["threads"])
    import pandas as pd
    from fastai.callback.mixup import MixUp
    from fastai.callback.progress import ProgressCallback
    from fastai.vision.all import Callback as FastaiCallback
    from fastai.vision.all import (
        CategoryBlock,
        ColReader,
        ColSplitter,
        CrossEntropyLossFlat,
        DataBlock,
        ImageBlock,
        LabelSmoothingCrossEntropy,
        Learner,
        Normalize,
        Resize,
        accuracy,
        aug_transforms,
        set_seed,
        xresnet18,
        xresnet34,
        xresnet50,
    )

    set_seed(spec["seed"])
    df = pd.DataFrame(spec["rows"])
    aug = spec["augment"]
    cpu = torch.device("cpu")

    def dls_for(stage: dict[str, Any]):
        block = DataBlock(
            blocks=(ImageBlock, CategoryBlock(vocab=spec["classes"])),
            get_x=ColReader("path"), get_y=ColReader("label"),
            splitter=ColSplitter("is_valid"),
            item_tfms=Resize(spec["presize"]),
            batch_tfms=[*aug_transforms(size=stage["size"], min_scale=aug["min_scale"],
                                        max_rotate=aug["max_rotate"],
                                        max_zoom=aug["max_zoom"], max_warp=aug["max_warp"],
                                        max_lighting=aug["max_lighting"],
                                        p_affine=aug["p_affine"],
                                        p_lighting=aug["p_lighting"]),
                        Normalize.from_stats(spec["mean"], spec["std"])])
        kw = {} if spec["fastai_workers"] < 0 else {"num_workers": spec["fastai_workers"]}
        return block.dataloaders(df, bs=stage["batch_size"], device=cpu, **kw)

    epochs: list[dict[str, Any]] = []

    class EpochLog(FastaiCallback):
        order = 90  # after the Recorder (50)

        def before_epoch(self) -> None:
            self.t0 = time.perf_counter()

        def before_train(self) -> None:
            self.tt = time.perf_counter()

        def after_train(self) -> None:
            self.train_s = time.perf_counter() - self.tt

        def after_epoch(self) -> None:
            seconds = time.perf_counter() - self.t0
            train_loss, _, acc = (float(v) for v in self.learn.recorder.values[-1][:3])
            n = spec["n_train"]
            epochs.append({"phase": f"stage{stage_i + 1}", "seconds": seconds,
                           "train_seconds": self.train_s, "accuracy": acc})
            print(f"    fastai seed {spec['seed']} stage{stage_i + 1} epoch "
                  f"{self.epoch + 1}/{self.n_epoch}: loss {train_loss:.3f} acc {acc:.4f} "
                  f"{seconds:.1f} s ({n / self.train_s:.0f} train images/s)", flush=True)

    t0 = time.perf_counter()
    stage_i = 0
    dls = dls_for(spec["stages"][0])
    arch = {"xresnet18": xresnet18, "xresnet34": xresnet34, "xresnet50": xresnet50}[spec["arch"]]
    model = arch(n_out=len(spec["classes"]))
    eps = spec["label_smoothing"]
    loss = LabelSmoothingCrossEntropy(eps=eps) if eps > 0 else CrossEntropyLossFlat()
    cbs = [EpochLog()] + ([MixUp(spec["mixup"])] if spec["mixup"] > 0 else [])
    learn = Learner(dls, model, loss_func=loss, metrics=accuracy, cbs=cbs,
                    wd=spec["weight_decay"])
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *a, **k: None
    for stage_i, stage in enumerate(spec["stages"]):
        if stage_i > 0:
            learn.dls = dls_for(stage)
        if stage["epochs"] > 0:
            learn.fit_one_cycle(stage["epochs"], stage["lr"], pct_start=spec["pct_start"])
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    preds, targs = learn.tta(n=spec["tta_n"], beta=spec["tta_beta"])
    tta_acc = float((preds.argmax(1) == targs).float().mean())
    eval_s = time.perf_counter() - t1
    last = epochs[-1]["accuracy"] if epochs else None
    return {"accuracy": last, "tta_accuracy": tta_acc, "last_epoch_accuracy": last,
            "fit_seconds": fit_s, "eval_tta_seconds": eval_s, "epochs": epochs}


def worker_main(library: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    t0 = time.perf_counter()
    out = (worker_ours if library == "ours" else worker_fastai)(spec)
    out.update(_rss_mb(), library=library, seed=spec["seed"],
               worker_seconds=time.perf_counter() - t0)
    Path(spec["result"]).write_text(json.dumps(out, indent=2))
