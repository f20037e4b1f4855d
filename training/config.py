"""Recipes: a TOML file read into typed dataclasses, overridden from the command line, and saved
resolved into every run folder (as timm saves args.yaml) so a run can be reproduced exactly.

Unknown keys and wrong types are errors that name the key (``stages[1].size``), before anything
trains.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from service.imaging import EvalSpec, TTASpec, check_views_fit
from training.augment_config import POLICIES, AugmentConfig  # noqa: F401 (the recipe's)
from training.errors import ConfigError

# The recipe's names for the optimizer parts (training/optim.py, training/schedule.py use them):
# here so that a recipe is read and checked without importing torch.
OPTIMIZERS = ("adamw", "sgd")  # train.optimizer
PARAM_KINDS = ("bn_bias", "bn_weight", "head", "stem", "other")
MULT_KINDS = PARAM_KINDS[:-1]  # the kinds ``train.lr_mults`` may name
SCHEDULES = ("stage", "run", "triangular")  # train.schedule

DEVICES = ("auto", "cpu", "cuda")  # train.device, and every command's --device
# augment.auto_augment: torchvision v2 policies (training/auto_augment.py builds them)


@dataclass
class DataConfig:
    path: str = "data/digits"  # image folder (class sub-folders, optional train/ + valid/)
    csv: str = ""  # optional `path,label[,is_valid]` file; paths relative to it
    # labels from file names: the first group of this regex (re.search on the name), e.g.
    # '(.+)_\d+.jpg$' for pets; every image under path must match
    label_regex: str = ""
    valid_pct: float = 0.2  # fraction held out when the folder has no valid/ split
    seed: int = 42  # seed of the random splitter
    presize: int = 0  # item-stage size in pixels (0: 1.25 x the largest stage size)
    # how a non-square photo becomes the presized square: "crop" (centre) | "squish" | "pad"
    presize_fit: str = "crop"
    num_workers: int = 0  # DataLoader worker processes for decoding (only with cache = "off")
    # decode every training image once per run: "auto" (in memory when it fits, else a memory
    # map under cache_dir that later runs reuse) | "memory" | "disk" | "off" (decode per epoch)
    cache: str = "auto"
    cache_dir: str = ""  # default: $TTA_SERVE_CACHE or ~/.cache/tta-serve, then presized/
    normalize: str = "imagenet"  # "imagenet" | "dataset" (stats from the training data) | "none"


@dataclass
class ModelConfig:
    arch: str = "xresnet_tiny"
    # "imagenet": the arch's published weights (torch.hub / Hugging Face cache, downloaded once);
    # "auto": those, else from scratch with a warning; or a local weights file; "": none
    pretrained: str = ""
    init_from: str = ""  # an earlier run's checkpoint to start from (retraining)
    # airbench94's initialisations (training/models/init_schemes.py), off by default:
    whiten: bool = False  # stem conv = the training patches' whitening transform, frozen
    dirac: bool = False  # identity (dirac) init of every later convolution's first filters
    bn_weight: bool = True  # false: BatchNorm without a trainable scale (bias only)
    logit_scale: float = 1.0  # multiplies the head's input, so the logits (airbench: 1/9)


@dataclass
class StageConfig:
    """One progressive-resizing stage, trained with one one-cycle schedule."""

    size: int  # training and evaluation size, pixels
    batch_size: int  # images per step, per device (x processes under torchrun: the global batch)
    epochs: int
    lr: float  # peak learning rate of the one-cycle schedule (per batch_size above)


@dataclass
class TrainConfig:
    seed: int = 42
    output: str = "runs/run"
    device: str = "auto"  # one of DEVICES
    threads: int = 0  # CPU threads for torch's ops (0: torch's default, one per core)
    weight_decay: float = 0.01  # AdamW, decoupled
    label_smoothing: float = 0.0  # eps; 0 is plain cross-entropy (fastai's default eps is 0.1)
    mixup: float = 0.0  # Beta(alpha, alpha) for MixUp; 0 turns it off (fastai uses 0.4)
    cutmix: float = 0.0  # Beta(alpha, alpha) for CutMix; 0 turns it off (usually 1.0)
    # "auto" (bf16, or fp16 + GradScaler, on the GPU; fp32 on the CPU) | "bf16" | "fp16" | "off"
    mixed_precision: str = "auto"
    channels_last: str = "auto"  # "auto" (on GPU) | "on" | "off"
    ema: float = 0.0  # decay of a weight EMA used for evaluation; 0 turns it off
    freeze_epochs: int = 0  # fine-tune: epochs training only the head (BN too) before unfreezing
    train_bn: bool = True  # BatchNorm stays trainable while the body is frozen
    lr_mult: float = 1.0  # discriminative LRs: groups get lr/lr_mult ... lr, geometrically
    # one-cycle warm-up fraction; with freeze_epochs the two fine-tune phases use fastai's
    # fine_tune shapes instead (frozen: 0.99; unfrozen: 0.3 from lr/5)
    pct_start: float = 0.25
    metric: str = "accuracy"  # "accuracy" (higher is better) or "valid_loss" (lower is better)
    # which epoch best.pt (what export publishes) holds: "best" by the metric on the validation
    # split (its accuracy there is then optimistic), or "last" (not chosen on it: honest)
    select: str = "best"
    # Under torchrun (docs/distributed.md): the stages' lr is per device batch; scale it for the
    # global batch (batch_size x processes) by "linear" | "sqrt" | "none".
    scale_lr: str = "linear"
    sync_bn: bool = False  # SyncBatchNorm across GPUs under torchrun (for small per-GPU batches)
    # training/optim.py: "adamw" (chapter 7) | "sgd" (Nesterov, airbench94's lr/wd units)
    optimizer: str = "adamw"
    momentum: float = 0.85  # SGD's Nesterov momentum
    # LR multipliers by kind of parameter: bn_bias (airbench: 64), bn_weight, head, stem
    lr_mults: dict[str, float] = field(default_factory=dict)
    # "stage": a one-cycle per stage | "run": one one-cycle over all stages | "triangular"
    schedule: str = "stage"
    lookahead_every: int = 0  # Lookahead's sync period in steps (airbench: 5); 0 is off
    lookahead_decay: float = 0.95**5  # its slow-weight decay at the end of the run
    whiten_weight_epochs: int = -1  # whitened stem's filters frozen this many epochs (-1: all)
    whiten_bias_epochs: int = -1  # its bias trains this many epochs (-1: all; airbench: 3)
    compile: str = "off"  # torch.compile the training step's model: "off" | "on"


@dataclass
class EvalConfig:
    resize_ratio: float = 1.0  # shorter side resized to size * ratio before the center crop


_TTA_DEFAULTS = TTASpec()  # the service's defaults are the recipe's


@dataclass
class TTAConfig:
    # named views and translate views "shift:DX,DY" / "hflip_shift:DX,DY" (service.imaging)
    views: list[str] = field(default_factory=lambda: list(_TTA_DEFAULTS.views))
    zoom_ratio: float = _TTA_DEFAULTS.zoom_ratio
    combine: str = _TTA_DEFAULTS.combine  # "mean" (beta-weighted) | "max"
    # weight of the plain view in "mean"; negative averages all views equally (TTASpec's None)
    beta: float = -1.0 if _TTA_DEFAULTS.beta is None else _TTA_DEFAULTS.beta


@dataclass
class CalibrateConfig:  # export's fit on the held-out photos (training calibrate)
    abstain_target_accuracy: float = 0.0  # min_confidence reaches it; 0 = no abstention
    candidate_views: list[str] = field(default_factory=list)  # tried besides [tta]; [] = standard


@dataclass
class LogConfig:
    """Experiment trackers (training/trackers): callbacks, optional, off by default."""

    loggers: list[str] = field(default_factory=list)  # any of "tensorboard", "mlflow", "csv"
    every_n_steps: int = 10  # per-batch scalars every N batches (each syncs the device)
    mlflow_uri: str = ""  # MLflow tracking URI; "" = a local mlruns/ in the working directory
    experiment: str = "tta-serve"  # MLflow experiment name


@dataclass
class Recipe:
    stages: list[StageConfig]
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tta: TTAConfig = field(default_factory=TTAConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def presize(self) -> int:
        return self.data.presize or round(max(s.size for s in self.stages) * 1.25)


def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {type(value).__name__}")
        return {_check_type(k, key_tp, key): _check_type(v, value_tp, f"{key}.{k}")
                for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}")
        return [_check_type(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _check_type(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} has the wrong type: {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {type(value).__name__}")
        return _from_dict(tp, value, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _from_dict(cls: type, d: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        where = f"[{prefix}]" if prefix else "the top level"
        raise ConfigError(f"unknown key(s) {unknown} in {where}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in d.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _check_type(value, hints[name], key)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing key(s) {missing} in [{prefix or 'recipe'}]")
    try:
        return cls(**kwargs)
    except ValueError as e:  # a section's own checks (e.g. AugmentConfig's ranges)
        raise ConfigError(f"[{prefix or 'recipe'}]: {e}") from e


def recipe_from_dict(d: dict[str, Any]) -> Recipe:
    recipe = _from_dict(Recipe, d)
    validate(recipe)
    return recipe


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """The raw TOML of a recipe file; ConfigError (naming the file) if missing or not TOML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"recipe {path} is not valid TOML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"recipe {path} is not a UTF-8 text file: {e}") from e


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a TOML recipe, then apply ``key=value`` overrides (``stages.0.lr=1e-3``)."""
    d = read_recipe_file(path)
    for item in overrides or []:
        apply_override(d, item)
    return recipe_from_dict(d)


def with_values(recipe: Recipe, values: dict[str, Any],
                stage_values: dict[str, Any] | None = None) -> Recipe:
    """A copy with typed values set, validated: ``values`` by dotted key (``data.path``),
    ``stage_values`` on every stage (``epochs``, ``lr``). The command line's named flags come
    here as they are, never through TOML text."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = value
    try:
        changed = dataclasses.replace(recipe, **{
            section: dataclasses.replace(getattr(recipe, section), **fields)
            for section, fields in sections.items()})
        if stage_values:
            changed.stages = [dataclasses.replace(s, **stage_values) for s in changed.stages]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{sorted(values)}: {e}") from e
    validate(changed)
    return changed


def apply_override(d: dict[str, Any], item: str) -> None:
    """Set one dotted key in the raw recipe dict; the value is parsed as a TOML value."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value, e.g. train.mixup=0.4")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string such as a path
    parts = key.strip().split(".")
    node: Any = d
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {key}: {'.'.join(parts[:i + 1])} is not a stage index")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        raise ConfigError(f"override {key}: name a field of the stage, e.g. stages.0.lr")
    node[last] = value


# Every numeric key of the recipe with its range: (low, high, low included, high included);
# None is unbounded. A stage's size/batch_size/epochs/lr are checked in validate() by index.
BOUNDS: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "data.valid_pct": (0, 1, True, False),
    "data.seed": (0, None, True, False),
    "data.presize": (0, None, True, False),  # 0: 1.25 x the largest stage size
    "data.num_workers": (0, None, True, False),
    "train.seed": (0, None, True, False),
    "train.threads": (0, None, True, False),
    "train.weight_decay": (0, None, True, False),
    "train.label_smoothing": (0, 1, True, False),
    "train.mixup": (0, None, True, False),  # a Beta(alpha, alpha) needs alpha > 0; 0 is off
    "train.cutmix": (0, None, True, False),
    "train.ema": (0, 1, True, False),
    "train.freeze_epochs": (0, None, True, False),
    "train.lr_mult": (1, None, True, False),
    "train.pct_start": (0, 1, False, False),
    "train.momentum": (0, 1, True, False),
    "train.lookahead_every": (0, None, True, False),
    "train.lookahead_decay": (0, 1, True, True),
    "train.whiten_weight_epochs": (-1, None, True, False),
    "train.whiten_bias_epochs": (-1, None, True, False),
    "model.logit_scale": (0, None, False, False),
    "augment.min_scale": (0, 1, False, True),
    "augment.max_rotate": (0, 180, True, True),  # degrees
    "augment.max_zoom": (1, None, True, False),
    "augment.min_zoom": (0, 1, False, True),
    "augment.max_aspect": (1, None, True, False),
    "augment.max_translate": (0, 1, True, False),
    "augment.max_warp": (0, 1, True, False),
    "augment.max_lighting": (0, 1, True, False),
    "augment.p_affine": (0, 1, True, True),
    "augment.p_lighting": (0, 1, True, True),
    "eval.resize_ratio": (1, None, True, False),
    "tta.zoom_ratio": (1, None, True, False),
    "tta.beta": (None, 1, False, True),  # negative: every view weighs the same
    "calibrate.abstain_target_accuracy": (0, 1, True, False),
    "augment.auto_augment_magnitude": (0, 30, True, True),
    "augment.random_erasing": (0, 1, True, True),
    "log.every_n_steps": (1, None, True, False),
}


def _format_range(low: float | None, high: float | None, low_in: bool, high_in: bool) -> str:
    if high is None:
        return f"{'>=' if low_in else '>'} {low:g}"
    if low is None:
        return f"{'<=' if high_in else '<'} {high:g}"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def check_bounds(recipe: Recipe) -> None:
    """ConfigError naming the key, its value and its range for any number out of bounds."""
    for key, (low, high, low_in, high_in) in BOUNDS.items():
        section, name = key.split(".")
        value = getattr(getattr(recipe, section), name, None)
        if value is None:  # a key another version of a section does not have
            continue
        too_low = low is not None and (value < low if low_in else value <= low)
        too_high = high is not None and (value > high if high_in else value >= high)
        if too_low or too_high or value != value:  # value != value: NaN
            raise ConfigError(f"{key} must be {_format_range(low, high, low_in, high_in)}, "
                              f"got {value!r} (set it in the recipe or with --set {key}=...)")


def validate(recipe: Recipe) -> None:
    if not recipe.stages:
        raise ConfigError("the recipe needs at least one [[stages]] entry")
    for i, s in enumerate(recipe.stages):
        for name in ("size", "batch_size"):
            if getattr(s, name) < 1:
                raise ConfigError(f"stages[{i}].{name} must be >= 1, got {getattr(s, name)}")
        if s.epochs < 0:
            raise ConfigError(f"stages[{i}].epochs must be >= 0, got {s.epochs}")
        if not s.lr > 0:  # also NaN
            raise ConfigError(f"stages[{i}].lr must be > 0, got {s.lr}")
    if recipe.presize < max(s.size for s in recipe.stages):
        raise ConfigError(f"data.presize ({recipe.data.presize}) must be >= the largest stage size")
    choices = {
        "data.normalize": (recipe.data.normalize, ("imagenet", "dataset", "none")),
        "data.cache": (recipe.data.cache, ("auto", "memory", "disk", "off")),
        "data.presize_fit": (recipe.data.presize_fit, ("crop", "squish", "pad")),
        "train.device": (recipe.train.device, DEVICES),
        "train.mixed_precision": (recipe.train.mixed_precision, ("auto", "bf16", "fp16", "off")),
        "train.channels_last": (recipe.train.channels_last, ("auto", "on", "off")),
        "train.metric": (recipe.train.metric, ("accuracy", "valid_loss")),
        "train.select": (recipe.train.select, ("best", "last")),
        "train.scale_lr": (recipe.train.scale_lr, ("linear", "sqrt", "none")),
        "tta.combine": (recipe.tta.combine, ("mean", "max")),
        "train.optimizer": (recipe.train.optimizer, OPTIMIZERS),
        "train.schedule": (recipe.train.schedule, SCHEDULES),
        "train.compile": (recipe.train.compile, ("off", "on")),
        "augment.auto_augment": (recipe.augment.auto_augment, POLICIES),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} is {value!r}; choose one of {list(allowed)}")
    for kind, mult in recipe.train.lr_mults.items():
        if kind not in MULT_KINDS:
            raise ConfigError(f"train.lr_mults.{kind}: unknown kind; "
                              f"choose from {list(MULT_KINDS)}")
        if not mult > 0:
            raise ConfigError(f"train.lr_mults.{kind} must be > 0, got {mult!r}")
    from training.trackers import check_available

    check_available(recipe.log.loggers)
    if recipe.augment.item_transform:  # import it now: a typo fails before any training
        from training.item_transforms import load_pipeline

        load_pipeline(recipe.augment.item_transform)
    check_bounds(recipe)
    try:
        tta = tta_spec(recipe)
        eval_spec(recipe, recipe.stages[-1].size)
        for stage in recipe.stages:  # TTA runs at every stage's size (the validation views)
            check_views_fit(eval_spec(recipe, stage.size), tta)
    except ValueError as e:
        raise ConfigError(f"[tta]/[eval]: {e}") from e


def eval_spec(recipe: Recipe, size: int) -> EvalSpec:
    return EvalSpec(size=size, resize_ratio=recipe.eval.resize_ratio)


def tta_spec(recipe: Recipe) -> TTASpec:
    t = recipe.tta
    return TTASpec(views=tuple(t.views), zoom_ratio=t.zoom_ratio, combine=t.combine,
                   beta=None if t.beta < 0 else t.beta)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(tomli_w.dumps(recipe.to_dict()))
