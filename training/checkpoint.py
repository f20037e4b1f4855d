"""The training checkpoint: one format, one typed record, one reader and writer, and the model
rebuilt with the weights training evaluated.

``fit`` writes two files per run (docs/architecture.md, "Checkpoint format"): ``best.pt``, the
epoch ``train.select`` chose, whose ``model`` holds the evaluated weights (the EMA when there is
one), and ``last.pt``, every epoch, to resume: the raw ``model`` plus ``ema``, ``optimizer``,
``scheduler`` and ``scaler``. Export, evaluation, ``model.init_from`` and ``--resume`` all read
them here, so every reader means the same weights by "the checkpoint's model".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from service.imaging import EvalSpec, TTASpec
from training.errors import ConfigError, TrainingError
from training.models import Classifier, build_model, evaluated_state

CHECKPOINT_FORMAT = "tta-serve-checkpoint/1"
REQUIRED_KEYS = ("arch", "classes", "mean", "std", "eval_spec", "model")
_HINT = "give a checkpoint that `training fit` wrote, e.g. runs/digits/best.pt"


@dataclass
class Checkpoint:
    """What ``torch.save`` writes, one field per key (the file is ``to_dict()``).

    Run-level fields come from the recipe; ``progress``/``history``/``world_size``/``best_metric``
    let ``--resume`` continue exactly; the last four are None in best.pt.
    """

    arch: str
    classes: list[str]
    mean: list[float]
    std: list[float]
    eval_spec: dict[str, Any]  # service.imaging.EvalSpec.to_dict()
    model: dict[str, torch.Tensor]  # Classifier state dict (best.pt: the evaluated weights)
    tta: dict[str, Any] = field(default_factory=lambda: TTASpec().to_dict())
    recipe: dict[str, Any] = field(default_factory=dict)  # the resolved recipe
    metrics: dict[str, Any] = field(default_factory=dict)  # accuracy, tta_accuracy, ...
    progress: dict[str, int] | None = None  # {"phase": index, "epoch": epochs done in it}
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    world_size: int = 1  # processes that trained it (torchrun)
    best_metric: float | None = None  # train.metric of best.pt so far
    ema: dict[str, Any] | None = None  # AveragedModel state dict (last.pt, train.ema > 0)
    optimizer: dict[str, Any] | None = None  # last.pt: AdamW state
    scheduler: dict[str, Any] | None = None  # last.pt: one-cycle position
    scaler: dict[str, Any] | None = None  # last.pt: fp16 GradScaler state
    format: str = CHECKPOINT_FORMAT

    def to_dict(self) -> dict[str, Any]:
        """Shallow: ``dataclasses.asdict`` would deep-copy every tensor."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def eval_transform(self) -> EvalSpec:
        return EvalSpec.from_dict(self.eval_spec)

    @property
    def tta_spec(self) -> TTASpec:
        return TTASpec.from_dict(self.tta)

    def evaluated_weights(self) -> dict[str, torch.Tensor]:
        """The weights training evaluated: the EMA copy when last.pt carries one (best.pt's
        ``model`` already is the evaluated model, and carries no ``ema``)."""
        return dict(evaluated_state({"model": self.model, "ema": self.ema}))

    @property
    def logit_scale(self) -> float:
        """The recipe's model.logit_scale (part of the network's function, so of its rebuild)."""
        return float((self.recipe or {}).get("model", {}).get("logit_scale", 1.0))

    def build_model(self, error: type[TrainingError] = ConfigError) -> Classifier:
        """The Classifier with the evaluated weights, fp32, in eval mode, on the CPU."""
        try:
            # logit_scale only when set: a model builder without the option still rebuilds
            scale = {"logit_scale": self.logit_scale} if self.logit_scale != 1.0 else {}
            model = build_model(self.arch, len(self.classes), mean=self.mean, std=self.std,
                                **scale)
            model.load_state_dict(self.evaluated_weights())
        except (KeyError, ValueError, RuntimeError, TypeError, TrainingError) as e:
            raise error(f"could not rebuild arch {self.arch!r} with {len(self.classes)} classes "
                        f"from the checkpoint: {e}") from e
        return model.float().eval()

    def resume_position(self, path: Path) -> tuple[int, int]:
        """(phase index, epochs done in it) of a last.pt; ConfigError for one fit cannot resume."""
        progress = self.progress or {}
        if "phase" not in progress or "epoch" not in progress:
            raise ConfigError(f"--resume: {path} records no phase progress ({progress}); it was "
                              f"not written as a {CHECKPOINT_FORMAT} last.pt by this version of "
                              "`training fit`: start the run over")
        return int(progress["phase"]), int(progress["epoch"])


@dataclass(frozen=True)
class RunFields:
    """The run-level part of a checkpoint at the end of an epoch: what the runner knows (model,
    classes, specs, recipe, where the run is). The checkpoint callback adds the weights and the
    metrics (``checkpoint()``), so it never needs to know which keys the runner owns."""

    arch: str
    classes: list[str]
    mean: list[float]
    std: list[float]
    eval_spec: dict[str, Any]  # service.imaging.EvalSpec.to_dict()
    tta: dict[str, Any]  # service.imaging.TTASpec.to_dict()
    recipe: dict[str, Any]
    progress: dict[str, int]  # {"phase": index, "epoch": epochs done in it}
    history: list[dict[str, Any]]
    world_size: int

    def checkpoint(self, **rest: Any) -> Checkpoint:
        """A Checkpoint of these fields and ``rest`` (model, metrics, best_metric, ...)."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # shallow
        return Checkpoint(**own, **rest)


def from_dict(raw: Any, path: Path, error: type[TrainingError] = ConfigError) -> Checkpoint:
    """Check a loaded object and type it; ``error`` names what is wrong (format, keys)."""
    if not isinstance(raw, dict) or "arch" not in raw or "model" not in raw:
        what = f" (a {type(raw).__name__})" if not isinstance(raw, dict) else ""
        raise error(f"{path} is not a tta-serve training checkpoint{what}; {_HINT}")
    fmt = raw.get("format", CHECKPOINT_FORMAT)  # files from before the key: the same layout
    if fmt != CHECKPOINT_FORMAT:
        raise error(f"{path} has format {fmt!r}; this version reads {CHECKPOINT_FORMAT!r}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise error(f"{path} lacks key(s) {missing}; is it a tta-serve training checkpoint?")
    if not raw["classes"]:
        raise error(f"{path} records no classes")
    known = {f.name for f in dataclasses.fields(Checkpoint)}
    values = {k: v for k, v in raw.items() if k in known and v is not None or k in REQUIRED_KEYS}
    values["classes"] = [str(c) for c in raw["classes"]]
    if not raw.get("tta"):
        values.pop("tta", None)
    return Checkpoint(**values)


def load_checkpoint(path: str | Path, error: type[TrainingError] = ConfigError) -> Checkpoint:
    """A tta-serve training checkpoint; ``error`` (not an unpickling traceback) for a missing
    file, a recipe or other file given in its place, a plain state dict or another format."""
    path = Path(path)
    if not path.is_file():
        raise error(f"checkpoint {path} not found")
    try:
        # weights_only=False: the checkpoint holds the recipe and specs (and last.pt optimiser
        # state) as plain Python objects; checkpoints are this project's own training output.
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, ...)
        toml = " (a .toml recipe goes to `training fit --config`)" \
            if path.suffix.lower() == ".toml" else ""
        raise error(f"{path} is not a PyTorch checkpoint ({type(e).__name__}); "
                    f"{_HINT}{toml}") from e
    return from_dict(raw, path, error)


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    """Write then rename: an interrupted save never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(checkpoint.to_dict(), tmp)
    tmp.replace(path)


def load_model(path: str | Path, device: torch.device) -> tuple[Classifier, Checkpoint]:
    """The checkpoint's evaluated model on ``device``, and the checkpoint."""
    checkpoint = load_checkpoint(path)
    return checkpoint.build_model().to(device), checkpoint
