"""Experiment trackers on a real digits fit, read back with each library's own reader: the
numbers in TensorBoard's event file, the MLflow run and the CSV are those of metrics.json."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from training.cli import main
from training.config import load_recipe
from training.errors import ConfigError

RECIPE = Path(__file__).parents[2] / "recipes" / "digits.toml"
EPOCH_KEYS = ("train_loss", "valid_loss", "accuracy")


@pytest.fixture(scope="module")
def tracked_run(digits_dir, tmp_path_factory):
    """Three epochs over two stages (16 px then 32 px) with all three loggers, MLflow in its
    default local store (mlruns/ in the working directory), then an export of the best epoch."""
    work = tmp_path_factory.mktemp("tracked")
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    try:
        out = work / "run"
        assert main(["fit", "--config", str(RECIPE), "--data", str(digits_dir), "--output",
                     str(out), "--set", "stages.0.epochs=2", "--set", "stages.1.epochs=1",
                     "--set", "log.every_n_steps=5", "--log", "tensorboard", "--log", "mlflow",
                     "--log", "csv"]) == 0
        assert main(["export", str(out / "best.pt"), "--name", "digits", "--models-dir",
                     str(work / "models")]) == 0
    finally:
        mp.undo()
    history = json.loads((out / "metrics.json").read_text())["history"]
    return work, out, history


def test_tensorboard_event_file_holds_the_metrics_json_numbers(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out, history = tracked_run
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert len(history) == 3
    for key in EPOCH_KEYS:
        events = acc.Scalars(f"epoch/{key}")
        assert [e.step for e in events] == [1, 2, 3]  # the run's global epoch, across stages
        assert [e.value for e in events] == pytest.approx([h[key] for h in history], rel=1e-6)
    steps = acc.Scalars("step/lr")
    assert steps and all(e.step % 5 == 0 for e in steps)
    assert max(e.value for e in steps) <= 1e-2 + 1e-9  # never above the recipe's peak LR
    images = set(acc.Tags()["images"])
    assert {"report/confusion_matrix", "report/tta_confusion_matrix", "report/curves",
            "report/train_batch", "report/top_losses"} <= images


def test_mlflow_run_holds_params_metrics_report_and_the_exported_model(tracked_run):
    from mlflow.tracking import MlflowClient

    work, out, history = tracked_run
    info = json.loads((out / "mlflow_run.json").read_text())
    assert info["tracking_uri"] == f"sqlite:///{(work / 'mlruns' / 'mlflow.db').resolve()}"
    client = MlflowClient(info["tracking_uri"])
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["stages.0.lr"] == "0.01"
    assert run.data.params["model.arch"] == "xresnet_tiny"
    for key in EPOCH_KEYS:
        metric = sorted(client.get_metric_history(info["run_id"], f"epoch/{key}"),
                        key=lambda m: m.step)
        assert [m.step for m in metric] == [1, 2, 3]
        assert [m.value for m in metric] == pytest.approx([h[key] for h in history], rel=1e-12)
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert run.data.metrics["final_accuracy"] == pytest.approx(final["accuracy"])
    report = {Path(f.path).name for f in client.list_artifacts(info["run_id"], "report")}
    assert {"confusion_matrix.png", "curves.png", "train_batch.png", "summary.json"} <= report
    model = {Path(f.path).name for f in client.list_artifacts(info["run_id"], "model")}
    assert {"model.onnx", "model.json"} <= model
    assert run.data.tags["exported_model"] == "digits/1"


def test_csv_logger_rows_are_the_history_rows(tracked_run):
    _, out, history = tracked_run
    with (out / "log" / "epochs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for key in EPOCH_KEYS:
        assert [float(r[key]) for r in rows] == [h[key] for h in history]  # repr(): exact
    with (out / "log" / "steps.csv").open() as f:
        steps = list(csv.DictReader(f))
    assert steps and {"step", "loss", "lr", "mom"} <= set(steps[0])


def test_report_has_curves_and_the_first_augmented_batch(tracked_run):
    _, out, history = tracked_run
    schedule = json.loads((out / "lr_schedule.json").read_text())
    xs = [row[0] for row in schedule]
    assert xs == sorted(xs) and xs[-1] == pytest.approx(len(history))
    for name in ("curves.png", "train_batch.png"):
        with Image.open(out / "report" / name) as im:
            assert im.format == "PNG" and im.width >= 400


def test_a_logger_whose_package_is_missing_is_a_config_error_naming_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"mlflow package is not installed.*\.\[train,track\]"):
        load_recipe(RECIPE, ['log.loggers=["mlflow"]'])
    with pytest.raises(ConfigError, match="unknown logger 'wandb'"):
        load_recipe(RECIPE, ['log.loggers=["wandb"]'])


def test_an_interrupted_run_resumes_into_the_same_mlflow_run_and_csv(digits_dir, tmp_path,
                                                                      monkeypatch,
                                                                      ctrl_c_in_second_epoch):
    """Ctrl-C (KeyboardInterrupt) in epoch 2 marks the MLflow run KILLED; --resume continues
    that run (no second one) and appends to the CSV: each epoch recorded once."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    argv = ["fit", "--config", str(RECIPE), "--data", str(digits_dir), "--output", str(out),
            "--set", "stages.0.epochs=2", "--set", "stages.1.epochs=0", "--no-tta",
            "--log", "mlflow", "--log", "csv"]
    assert main(argv) == 130
    info = json.loads((out / "mlflow_run.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    assert client.get_run(info["run_id"]).info.status == "KILLED"
    ctrl_c_in_second_epoch()  # validate as it is, for the resumed run
    assert main([*argv, "--resume"]) == 0
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == info["run_id"]
    runs = client.search_runs([info["experiment_id"]])
    assert [r.info.run_id for r in runs] == [info["run_id"]]
    assert runs[0].info.status == "FINISHED"
    history = json.loads((out / "metrics.json").read_text())["history"]
    metric = sorted(client.get_metric_history(info["run_id"], "epoch/accuracy"),
                    key=lambda m: m.step)
    assert [(m.step, m.value) for m in metric] == [(1, history[0]["accuracy"]),
                                                   (2, history[1]["accuracy"])]
    with (out / "log" / "epochs.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
