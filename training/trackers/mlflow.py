"""MLflow: the resolved recipe as params, metrics per step and epoch, the report folder and
(at ``training export``) the ONNX model as artifacts.

Without ``log.mlflow_uri`` the store is a local ``mlruns/`` in the working directory: an SQLite
database (``mlruns/mlflow.db``; MLflow 3 refuses new plain-file stores) with the artifacts
beside it (``mlruns/artifacts``). Browse it with
``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``.

The run id is written to OUTPUT/mlflow_run.json: ``--resume`` continues the same MLflow run and
``training export`` of a checkpoint in that folder adds the published model to it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.evaluation_summary import EvaluationSummary
from training.trackers.base import Tracker, flatten

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
_MAX_PARAMS, _MAX_METRICS = 100, 1000  # MLflow's log_batch limits per call
_MAX_PARAM_CHARS = 6000


def default_tracking_uri(root: Path | None = None) -> str:
    """sqlite:////ABS/mlruns/mlflow.db under ``root`` (default: the working directory)."""
    folder = (root or Path.cwd()) / "mlruns"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder.resolve() / 'mlflow.db'}"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if uri.startswith("sqlite:///"):  # a local store keeps its artifacts beside the database
        artifacts = (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
    return client.create_experiment(name, artifact_location=artifacts)


class MLflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, *args: Any, tracking_uri: str = "", experiment: str = "tta-serve",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.pending: list[Any] = []

    def start(self) -> None:
        from mlflow.entities import Param

        run_file = self.run_dir / RUN_FILE
        if self.resume and run_file.is_file():
            info = json.loads(run_file.read_text())
            self.uri, self.run_id = info["tracking_uri"], info["run_id"]
            self.client = _client(self.uri)
            self.client.update_run(self.run_id, status="RUNNING")
            log.info("MLflow: continuing run %s in %s", self.run_id, self.uri)
            return
        self.uri = self.tracking_uri or default_tracking_uri()
        self.client = _client(self.uri)
        exp_id = _experiment_id(self.client, self.experiment, self.uri)
        run = self.client.create_run(exp_id, run_name=self.run_dir.name,
                                     tags={"run_dir": str(self.run_dir.resolve())})
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in flatten(self.recipe).items()]
        for i in range(0, len(params), _MAX_PARAMS):
            self.client.log_batch(self.run_id, params=params[i:i + _MAX_PARAMS])
        run_file.parent.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps({"tracking_uri": self.uri, "run_id": self.run_id,
                                        "experiment_id": exp_id}, indent=2) + "\n")
        log.info("MLflow: run %s in experiment %r at %s", self.run_id, self.experiment, self.uri)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in values.items()]

    def flush(self) -> None:
        """Metrics go out in batches (one database transaction per epoch, not per step)."""
        while self.pending:
            chunk, self.pending = self.pending[:_MAX_METRICS], self.pending[_MAX_METRICS:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def after_epoch(self, learn: Any) -> None:
        super().after_epoch(learn)
        self.flush()

    def log_report(self, report_dir: Path, summary: EvaluationSummary) -> None:
        if not self.started:
            return
        self.log_scalars({f"final_{k}": v for k, v in summary.final_metrics().items()},
                         self.last_epoch)
        self.flush()
        self.client.log_artifacts(self.run_id, str(report_dir), "report")
        for name in ("recipe.toml", "metrics.json"):
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))

    def close(self, status: str = "FINISHED") -> None:
        if self.started:
            self.flush()
            self.client.set_terminated(self.run_id, status=status)


def log_exported_model(checkpoint: Path, version_dir: Path, name: str, version: int) -> bool:
    """Add a published model version (model.onnx, model.json) to the MLflow run that trained
    ``checkpoint``, when its run folder has one; True if it did.

    Export must not fail because tracking does: a missing package or an unreachable store is a
    warning.
    """
    run_file = Path(checkpoint).parent / RUN_FILE
    if not run_file.is_file():
        return False
    try:
        info = json.loads(run_file.read_text())
        client = _client(info["tracking_uri"])
        for path in sorted(Path(version_dir).iterdir()):
            if path.is_file():
                client.log_artifact(info["run_id"], str(path), "model")
        client.set_tag(info["run_id"], "exported_model", f"{name}/{version}")
    except Exception as e:  # ImportError, MlflowException, OSError, ...
        log.warning("could not add the exported model to MLflow run in %s: %s", run_file, e)
        return False
    log.info("MLflow: added %s version %s to run %s", name, version, info["run_id"])
    return True
