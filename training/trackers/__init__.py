"""Experiment trackers chosen in the recipe (``[log] loggers = [...]``) or with ``fit --log``.

Each is a callback on the loop's hook points (``training.trackers.base.Tracker``); the loop knows
nothing about them. TensorBoard and MLflow come in the ``track`` extra
(``pip install -c constraints.txt -e '.[train,track]'``); CSV needs nothing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

from training.errors import ConfigError
from training.trackers.base import Tracker

# logger name -> (module, class, the import it needs)
TRACKERS = {
    "tensorboard": ("training.trackers.tensorboard", "TensorBoardTracker", "tensorboard"),
    "mlflow": ("training.trackers.mlflow", "MLflowTracker", "mlflow"),
    "csv": ("training.trackers.csv_logger", "CSVTracker", None),
}
INSTALL_HINT = "pip install -c constraints.txt -e '.[train,track]'"

__all__ = ["TRACKERS", "Tracker", "build_trackers", "check_available"]


def check_available(names: list[str]) -> None:
    """ConfigError before any training for an unknown logger or a missing package."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"log.loggers: unknown logger {name!r}; choose from "
                              f"{sorted(TRACKERS)}")
        needs = TRACKERS[name][2]
        if needs is not None and importlib.util.find_spec(needs) is None:
            raise ConfigError(f"log.loggers names {name!r} but the {needs} package is not "
                              f"installed; install the tracking extra: {INSTALL_HINT}")


def build_trackers(recipe, epoch_offsets: Mapping[str, int], *,
                   resume: bool = False) -> list[Tracker]:
    """One tracker per name in ``recipe.log.loggers`` (a ``training.config.Recipe``)."""
    names = list(dict.fromkeys(recipe.log.loggers))
    check_available(names)
    run_dir = Path(recipe.train.output)
    common = dict(every_n_steps=recipe.log.every_n_steps, resume=resume)
    trackers = []
    for name in names:
        module, cls_name, _ = TRACKERS[name]
        cls = getattr(importlib.import_module(module), cls_name)
        extra = ({"tracking_uri": recipe.log.mlflow_uri, "experiment": recipe.log.experiment}
                 if name == "mlflow" else {})
        trackers.append(cls(run_dir, recipe.to_dict(), epoch_offsets, **common, **extra))
    return trackers
