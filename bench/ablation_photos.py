"""Do airbench94's techniques help the chapter-7 photo recipe too? An ablation on photo folders.

issue 23, part 3: recipes/imagenette.toml (fastbook chapter 7: xresnet, AdamW, a one-cycle per
progressive-resizing stage, label smoothing, MixUp, crop TTA) is the documented start for
folders of larger photos. There is no Imagenette here and nothing can be downloaded, so the
photo folders are BUILT: CIFAR-10 training photos upscaled (bicubic) to ``--side`` px JPEGs
(quality 90) in Imagenette's layout, ``train/<class>/`` and ``val/<class>/`` (different photos).
They are upscaled 32 px photos, not real larger photos: the network works at 64-96 px as it would
on a photo folder, but the photos hold no detail beyond 32 px.

Rows are cumulative, as bench/ablation.py's (which runs the same on CIFAR-10 at 24-32 px):
the chapter-7 recipe pinned by BASE (so a later change of the recipe's defaults does not move
the baseline), then the whole-run schedule, Nesterov SGD (airbench's units and triangle),
lookahead; the last row evaluates the row above's models with translate TTA views (shifts of
``--shift`` px and their mirrors) instead of chapter 7's crop views. Every trained row also
records both TTAs, so each row's translate-TTA figure is in the JSON. ``--default-recipe`` adds
the default photo recipe for a folder (training/photo_recipe.py), from scratch (no weights here).

    flock /work/quiet.lock env PYTHONPATH=$PWD .venv/bin/python -m bench.ablation_photos \
        --default-recipe

took 24 min on the 2-core VM for its 10 trainings (xresnet18 at 64 then 96 px: 16 s and 33 s an
epoch of 2,000 photos on 2 threads); docs/ablation.md, "Photo folders", has the figures.

Writes bench/results/ablation_photos-latest.json (and a history copy), a markdown table
(``--table``) and a PNG beside the JSON.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from bench import ablation
from bench.cifar_subsets import CIFAR_TRAIN, cifar_subset
from bench.common import RESULTS, ROOT, describe_machine, machine, write_results
from training.config import Recipe, apply_override, load_recipe, recipe_from_dict, tta_spec
from training.machine import process_cpu_seconds
from training.photo_recipe import photo_recipe_dict

RECIPE = ROOT / "recipes" / "imagenette.toml"
WORK = ROOT / ".cache" / "ablation_photos"

# chapter 7 as recipes/imagenette.toml states it (AdamW wd 0.01, one one-cycle per stage from
# lr/25 with 25% warm-up, label smoothing 0.1, MixUp 0.4, six crop views at zoom 1.15, beta 0.25)
BASE = [
    'train.optimizer="adamw"', "train.weight_decay=0.01", 'train.schedule="stage"',
    "train.pct_start=0.25", "train.lookahead_every=0", "train.label_smoothing=0.1",
    "train.mixup=0.4", "stages.0.lr=3e-3", "stages.1.lr=1e-3",
    'tta.views=["center","hflip","top_left","top_right","bottom_left","bottom_right"]',
    "tta.zoom_ratio=1.15", 'tta.combine="mean"', "tta.beta=0.25",
]
# Nesterov SGD in airbench's units (training/optim.py): lr per 1024-image kilostep, its weight
# decay, its triangle 0.2 -> 1 at 23% -> 0.07 over the whole run; the same lr in both stages
SGD = ['train.optimizer="sgd"', "train.momentum=0.85", "train.weight_decay=0.0153",
       'train.schedule="triangular"', "train.pct_start=0.23"]
ROWS: list[tuple[str, list[str]]] = [
    ("chapter-7 recipe (AdamW, one-cycle per stage)", []),
    ("+ one schedule over both stages", ['train.schedule="run"']),
    ("+ Nesterov SGD, triangular (airbench units)", SGD),  # + the stages' lr (--sgd-lr)
    ("+ lookahead", ["train.lookahead_every=5"]),
]
TTA_ROW = "+ translate TTA views (the models above)"
# the default photo recipe for a folder (training/photo_recipe.py), from scratch here
DEFAULT_ROW = "default photo recipe (fine_tune; from scratch)"
DEFAULT_TTA_ROW = "+ translate TTA views instead of its crops"


def translate_views(shift: int) -> list[str]:
    """airbench94's multi-crop TTA scaled to the photo: the photo, its mirror, and both shifted
    by (+s, +s) and (-s, -s) with reflect padding, mirrored too; weighed equally."""
    out = ["center", "hflip"]
    for s in (f"+{shift},+{shift}", f"-{shift},-{shift}"):
        out += [f"shift:{s}", f"hflip_shift:{s}"]
    return out


def translate_overrides(shift: int) -> list[str]:
    views = ",".join(f'"{v}"' for v in translate_views(shift))
    return [f"tta.views=[{views}]", "tta.beta=-1.0"]


def row_overrides(upto: int, sgd_lr: float) -> list[str]:
    """BASE plus the rows up to ``upto`` (cumulative), SGD's lr in both stages."""
    out = list(BASE)
    for _, overrides in ROWS[: upto + 1]:
        out += overrides
        if overrides is SGD:
            out += [f"stages.0.lr={sgd_lr}", f"stages.1.lr={sgd_lr}"]
    return out


def bench_scale(args: argparse.Namespace, data: Path, out: Path, seed: int) -> list[str]:
    """The recipe on this machine's budget: the built folder, a small net, CPU sizes, epochs."""
    (s0, s1), (e0, e1) = args.sizes, args.epochs
    return [f"data.path={data}", f"data.presize={args.presize}", "data.num_workers=0",
            f"data.cache_dir={args.work / 'presized'}", f"model.arch={args.arch}",
            f"train.output={out}", f"train.seed={seed}", f"train.threads={args.threads}",
            'train.device="cpu"', f"stages.0.size={s0}", f"stages.1.size={s1}",
            f"stages.0.epochs={e0}", f"stages.1.epochs={e1}",
            f"stages.0.batch_size={args.batch_size}", f"stages.1.batch_size={args.batch_size}"]


def row_recipe(index: int, seed: int, data: Path, out: Path, args: argparse.Namespace,
               extra: tuple[str, ...] = ()) -> Recipe:
    """Row ``index``'s recipe at bench scale (``extra``: more overrides, e.g. other TTA views)."""
    return load_recipe(RECIPE, [*row_overrides(index, args.sgd_lr),
                                *bench_scale(args, data, out, seed), *extra])


# ----------------------------------------------------------------------------- photos


def upscale(src: Path, dest: Path, side: int) -> None:
    """``src`` (a folder of class folders) as ``side`` px JPEGs under ``dest``; kept if there."""
    for cls_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        (dest / cls_dir.name).mkdir(parents=True, exist_ok=True)
        for photo in sorted(cls_dir.iterdir()):
            target = dest / cls_dir.name / photo.name
            if not target.exists():
                with Image.open(photo) as img:
                    big = img.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
                big.save(target, quality=90)


def build_photos(work: Path, n_train: int, n_val: int, side: int,
                 source: Path = CIFAR_TRAIN) -> Path:
    """Imagenette's layout from CIFAR-10 photos: per class the first ``n_train`` (sorted names)
    in train/, the next ``n_val`` in val/, upscaled to ``side`` px; cached under ``work``."""
    dest = work / f"photos-{n_train}-{n_val}-{side}px"
    with tempfile.TemporaryDirectory() as tmp:
        for part, count, offset in (("train", n_train, 0), ("val", n_val, n_train)):
            links = cifar_subset(count, Path(tmp) / part, source=source, offset=offset)
            upscale(links, dest / part, side)
    return dest


# ----------------------------------------------------------------------------- runs


def evaluate_views(checkpoint: Path, recipe: Recipe) -> tuple[float, float]:
    """(TTA accuracy, CPU s) of a trained checkpoint with ``recipe``'s TTA views, on the run's
    validation photos, through training's evaluation (the service's view code)."""
    import torch

    from service.imaging import decode_side
    from training.checkpoint import load_model
    from training.evaluate import predict
    from training.run import evaluation_items

    c0 = process_cpu_seconds()
    model, ckpt = load_model(checkpoint, torch.device("cpu"))
    items = evaluation_items(None, list(ckpt.classes), None, ckpt.recipe)
    spec, tta = ckpt.eval_transform, tta_spec(recipe)
    preds = predict(model, items, eval_spec=spec, tta=tta, device=torch.device("cpu"),
                    progress=False, min_side=decode_side(spec, tta))
    return float(preds.tta_accuracy or 0.0), process_cpu_seconds() - c0


def train_and_evaluate(name: str, seed: int, recipe: Recipe, shifted: Recipe) -> dict:
    """Train ``recipe``; its plain and TTA accuracy, and the translate TTA of ``shifted``."""
    from training.run import fit_and_report

    c0 = process_cpu_seconds()
    summary = fit_and_report(recipe, tta=True, progress=False)
    cpu = process_cpu_seconds() - c0
    translate, eval_cpu = evaluate_views(summary.checkpoint, shifted)
    return {"row": name, "seed": seed, "accuracy": summary.accuracy,
            "tta_accuracy": summary.tta_accuracy, "translate_tta_accuracy": translate,
            "cpu_seconds": cpu, "translate_eval_cpu_seconds": eval_cpu}


def run_row(index: int, seed: int, data: Path, out: Path, args: argparse.Namespace) -> dict:
    """Train row ``index`` with ``seed``; its plain, chapter-7 TTA and translate TTA accuracy."""
    shifts = tuple(translate_overrides(args.shift))
    return train_and_evaluate(ROWS[index][0], seed, row_recipe(index, seed, data, out, args),
                              row_recipe(index, seed, data, out, args, shifts))


def default_recipe(seed: int, data: Path, out: Path, args: argparse.Namespace,
                   extra: tuple[str, ...] = ()) -> Recipe:
    """The default photo recipe (``training fit --data``; its CPU plan's 1 frozen + 2 epochs)
    at the second stage's size, from scratch: there are no ImageNet weights here."""
    raw = photo_recipe_dict(data, arch=args.default_arch, device="cpu")
    for item in ['model.pretrained=""', f"data.presize={args.presize}", "data.num_workers=0",
                 f"data.cache_dir={args.work / 'presized'}", f"train.output={out}",
                 f"train.seed={seed}", f"train.threads={args.threads}",
                 f"stages.0.size={args.sizes[1]}", *extra]:
        apply_override(raw, item)
    return recipe_from_dict(raw)


def run_default(seed: int, data: Path, out: Path, args: argparse.Namespace) -> dict:
    shifts = tuple(translate_overrides(args.shift))
    return train_and_evaluate(DEFAULT_ROW, seed, default_recipe(seed, data, out, args),
                              default_recipe(seed, data, out, args, shifts))


def tta_row(result: dict[str, Any], name: str = TTA_ROW) -> dict[str, Any]:
    """A translate-TTA row from a trained row's run: the same model, other views."""
    return {**result, "row": name, "tta_accuracy": result["translate_tta_accuracy"],
            "cpu_seconds": result["cpu_seconds"] + result["translate_eval_cpu_seconds"]}


# ----------------------------------------------------------------------------- report


def row_names() -> list[str]:
    return [name for name, _ in ROWS] + [TTA_ROW, DEFAULT_ROW, DEFAULT_TTA_ROW]


def table(results: list[dict[str, Any]], seeds: list[int]) -> str:
    """Markdown: per seed TTA, mean TTA, spread (max - min), mean plain, mean CPU s."""
    return ablation.table(results, seeds, row_names())


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    """Each row's TTA accuracy per seed (dots) and mean (bar), plain mean as a tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in row_names() if any(r["row"] == n for r in results)]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(names) + 1.6))
    for y, name in enumerate(names):
        mine = [r for r in results if r["row"] == name]
        tta = [100 * r["tta_accuracy"] for r in mine]
        ax.barh(y, statistics.mean(tta), color="#8fb3d9")
        ax.plot(tta, [y] * len(tta), "o", color="#1f4e79")
        ax.plot([100 * statistics.mean(r["accuracy"] for r in mine)], [y], "|", color="black",
                markersize=18)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    lo = min(100 * min(r["accuracy"], r["tta_accuracy"]) for r in results)
    ax.set_xlim(max(0.0, lo - 5), None)
    ax.set_xlabel("validation accuracy % (bar: mean TTA, dots: seeds, tick: mean plain)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_title(args: argparse.Namespace, info: dict[str, Any]) -> str:
    load = ", ".join(f"{x:g}" for x in info["load_avg_1_5_15"])
    return (f"{args.arch}, {args.epochs[0]} epochs at {args.sizes[0]} px + {args.epochs[1]} at "
            f"{args.sizes[1]} px, {args.train_per_class}/{args.val_per_class} photos a class "
            f"(upscaled CIFAR-10)\n{info['cores']} cores, {info['date'][:16]}, load {load}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-per-class", type=int, default=200)
    ap.add_argument("--val-per-class", type=int, default=50)
    ap.add_argument("--side", type=int, default=128, help="the built photos' side, px")
    ap.add_argument("--presize", type=int, default=112)
    ap.add_argument("--sizes", type=int, nargs=2, default=[64, 96], help="the two stages, px")
    ap.add_argument("--epochs", type=int, nargs=2, default=[3, 2])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--arch", default="xresnet18")
    ap.add_argument("--sgd-lr", type=float, default=11.5, help="airbench units (its own: 11.5)")
    ap.add_argument("--shift", type=int, default=3, help="translate TTA shift, px")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, nargs="*", help="row indices (default: all)")
    ap.add_argument("--default-recipe", action="store_true",
                    help="also the default photo recipe for a folder, and with translate TTA")
    ap.add_argument("--default-arch", default="resnet18")
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--name", default="ablation_photos", help="results file name")
    ap.add_argument("--table", type=Path, default=WORK / "table.md", help="the table so far")
    return ap.parse_args(argv)


def say(r: dict[str, Any]) -> None:
    print(f"{r['row']:<48} seed {r['seed']}: {r['accuracy']:.4f} plain, {r['tta_accuracy']:.4f}"
          f" TTA, {r['translate_tta_accuracy']:.4f} translate TTA, {r['cpu_seconds']:.0f} CPU s",
          flush=True)


def run_seed(seed: int, data: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One seed's rows (and the default recipe's with --default-recipe), printed as they end."""
    out: list[dict[str, Any]] = []
    for i in args.rows if args.rows else range(len(ROWS)):
        r = run_row(i, seed, data, args.work / "runs" / f"{args.name}-{seed}-{i}", args)
        out += [r, tta_row(r)] if i == len(ROWS) - 1 else [r]
        say(r)
    if args.default_recipe:
        r = run_default(seed, data, args.work / "runs" / f"{args.name}-{seed}-default", args)
        out += [r, tta_row(r, DEFAULT_TTA_ROW)]
        say(r)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info = machine()
    data = build_photos(args.work, args.train_per_class, args.val_per_class, args.side)
    results: list[dict[str, Any]] = []
    for seed in args.seeds:
        results += run_seed(seed, data, args)
        args.table.write_text(table(results, args.seeds))  # progress survives a cut
    print(f"\n{describe_machine(info)}\n\n{table(results, args.seeds)}")
    path = write_results(args.name, {"machine": info, "args": vars(args), "data": str(data),
                                     "results": results,
                                     "load_avg_end": machine()["load_avg_1_5_15"]})
    png = RESULTS / f"{args.name}-latest.png"
    plot(results, png, plot_title(args, info))
    print(f"wrote {path}, {args.table} and {png}")


if __name__ == "__main__":
    main()
