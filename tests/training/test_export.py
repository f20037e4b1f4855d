"""training.export: checkpoint -> verified ONNX -> atomically published model version.

Real ONNX Runtime sessions on a small Classifier trained for a few seconds on scikit-learn's
digits (written as an image folder), read through service.imaging exactly as the service
reads images. Most tests share one real export; the ones about versions, --force and crashes
reuse its graph (``fast_export``) so they stay fast while running everything else for real.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import training.checkpoint as checkpoint_module
import training.export as export
import training.export.pipeline as pipeline
from service.evaluation_report import build_report, save_report
from service.imaging import EvalSpec, TTASpec, decode_image, eval_view, to_model_input
from service.model_repository import CARD_FILE, MODEL_FILE, ModelCard, ModelRepository, sha256_file
from training.commands import export as export_command
from training.errors import ExportError
from training.models.classifier import Classifier, Normalize, make_head

TINY = "tiny_cnn_for_tests"
SIZE = 16  # pixels; the 8x8 digits are upscaled by the eval transform
MEAN, STD = [0.1, 0.1, 0.1], [0.3, 0.3, 0.3]


def tiny_classifier(n_classes: int, mean, std) -> Classifier:
    """The project's Classifier (normalize -> body groups -> head), small enough to train in s."""

    def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                             nn.BatchNorm2d(c_out), nn.ReLU())

    body = nn.Sequential(block(3, 8, 1), block(8, 16, 2))
    # a 4x4 pool keeps where the strokes are: global pooling learns digits far more slowly
    head = make_head(16 * 4 * 4, n_classes, pre=[nn.AdaptiveAvgPool2d(4), nn.Flatten()])
    return Classifier(Normalize(mean, std), body, head, arch=TINY)


@pytest.fixture(scope="module", autouse=True)
def tiny_arch():
    """Teach the checkpoint's model builder the test arch; every other arch goes to
    build_model."""
    real = checkpoint_module.build_model

    def build(arch: str, n_classes: int, *, mean, std) -> nn.Module:
        return tiny_classifier(n_classes, mean, std) if arch == TINY else real(
            arch, n_classes, mean=mean, std=std)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint_module, "build_model", build)
        yield


@dataclass
class Trained:
    checkpoint: Path
    ckpt: dict[str, Any]
    model: nn.Module
    valid_paths: list[Path]
    valid_labels: np.ndarray
    accuracy: float


def _pixels(paths: list[Path], spec: EvalSpec) -> np.ndarray:
    return to_model_input(np.stack([eval_view(decode_image(p), spec) for p in paths]))


@pytest.fixture(scope="module")
def digits(digits_dir) -> Path:
    """The shared digits image folder (tests/training/conftest.py)."""
    return digits_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits) -> Trained:
    """A few seconds of Adam on the digits' training split; a run folder as fit leaves it."""
    from training.data import load_items

    split = load_items(digits, valid_pct=0.2, seed=42, check_images=False)
    spec = EvalSpec(size=SIZE)
    x = torch.from_numpy(_pixels(split.train.paths, spec))
    y = torch.tensor(split.train.labels)
    torch.manual_seed(0)
    model = tiny_classifier(len(split.classes), MEAN, STD)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    valid_labels = np.asarray(split.valid.labels)
    with torch.no_grad():
        pred = model(torch.from_numpy(_pixels(split.valid.paths, spec))).argmax(1).numpy()
    accuracy = float((pred == valid_labels).mean())
    assert accuracy > 0.8, "the test model did not learn; the checks below would be vacuous"

    run = tmp_path_factory.mktemp("runs") / "digits"
    save_report(build_report(valid_labels, pred, split.classes), run / "report")
    (run / "metrics.json").write_text(json.dumps({"best": {"accuracy": accuracy}}))
    (run / "recipe.toml").write_text('[model]\narch = "tiny"\n')
    ckpt = {
        "format": checkpoint_module.CHECKPOINT_FORMAT, "arch": TINY, "classes": split.classes,
        "mean": MEAN, "std": STD, "eval_spec": spec.to_dict(),
        "tta": TTASpec(views=("center", "hflip")).to_dict(),
        "model": model.state_dict(),
        "recipe": {"data": {"path": str(digits), "csv": "", "valid_pct": 0.2, "seed": 42},
                   "model": {"arch": TINY}, "stages": [{"size": SIZE, "epochs": 1}]},
        "metrics": {"accuracy": accuracy, "tta_accuracy": accuracy + 0.01,
                    "n_valid": len(valid_labels), "loss": torch.tensor(0.5)},
    }
    torch.save(ckpt, run / "best.pt")
    return Trained(run / "best.pt", ckpt, model, list(split.valid.paths), valid_labels, accuracy)


@pytest.fixture(scope="module")
def published(tmp_path_factory, trained):
    """One real export (no --data: the recipe's validation split is found and used)."""
    models = tmp_path_factory.mktemp("models")
    return export.export_checkpoint(trained.checkpoint, name="digits", models_dir=models)


@pytest.fixture
def fast_export(monkeypatch, published):
    """export_onnx copies the already-exported graph (same weights): the rest runs for real."""

    def copy(module, path, *, size, opset=export.OPSET, metadata=None) -> int:
        shutil.copyfile(published.onnx_path, path)
        return published.card.opset

    monkeypatch.setattr(pipeline, "export_onnx", copy)


def save_variant(trained: Trained, folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "best.pt"
    torch.save({**trained.ckpt, **changes}, path)
    return path


def entries(models: Path, name: str) -> list[str]:
    """The version folders and anything left over (not the Triton files export writes)."""
    folder = models / name
    triton = {"config.pbtxt", "labels.txt"}
    return sorted(p.name for p in folder.iterdir() if p.name not in triton) \
        if folder.exists() else []


# ----------------------------------------------------------------------------- the graph


def test_export_is_one_self_contained_verified_graph(published, trained) -> None:
    assert sorted(p.name for p in published.path.iterdir()) == [CARD_FILE, MODEL_FILE, "report"]
    model = onnx.load(str(published.onnx_path), load_external_data=False)
    onnx.checker.check_model(model, full_check=True)
    assert not model.functions
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert [i.name for i in model.graph.input] == ["pixels"]
    assert [o.name for o in model.graph.output] == ["probabilities"]
    in_dims = model.graph.input[0].type.tensor_type.shape.dim
    assert in_dims[0].dim_param and not in_dims[0].HasField("dim_value")  # dynamic batch
    assert [d.dim_value for d in in_dims[1:]] == [3, SIZE, SIZE]
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    assert out_dims[-1].dim_value == 10
    assert {o.domain: o.version for o in model.opset_import}.get("") == 18
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["tta_serve.classes"]) == trained.ckpt["classes"]

    check = published.card.metrics["export_check"]
    assert check["max_abs_diff"] <= check["tolerance"] == export.FP32_ATOL
    assert check["top1_mismatches"] == 0
    assert check["n_images"] == len(trained.valid_labels)  # the whole validation split
    assert "validation split" in check["images_source"]
    assert check["accuracy_onnx"] == pytest.approx(trained.accuracy)
    assert check["accuracy_torch"] == pytest.approx(trained.accuracy)


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_runtime_matches_pytorch(published, trained, batch: int) -> None:
    session = ort.InferenceSession(str(published.onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(batch)
    real = _pixels(trained.valid_paths[:batch], published.card.eval_spec)  # the service's path
    for x in (rng.random((batch, 3, SIZE, SIZE), dtype=np.float32), real):
        got = session.run(["probabilities"], {"pixels": x})[0]
        with torch.no_grad():
            want = torch.softmax(trained.model(torch.from_numpy(x)), dim=1).numpy()
        assert got.shape == (batch, 10) and got.dtype == np.float32
        assert np.abs(got - want).max() <= 1e-4
        np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def test_export_writes_a_triton_config_that_agrees_with_the_version(published) -> None:
    """models/NAME/config.pbtxt: Triton's ModelConfig (our field-compatible copy of it; the
    check against Triton's own message is tests/oip/test_oip_triton_protos.py)."""
    import onnx
    from google.protobuf import text_format

    from service._proto.inference import model_config_pb2 as mc

    folder = published.path.parent
    config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    graph = onnx.load(str(published.onnx_path), load_external_data=False).graph
    graph_input = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    (pixels,), (output,) = config.input, config.output
    assert config.name == folder.name and config.platform == "onnxruntime_onnx"
    assert pixels.name == graph.input[0].name == published.card.input_name
    assert list(pixels.dims) == graph_input[1:] == [3, SIZE, SIZE]
    assert output.name == graph.output[0].name and list(output.dims) == [
        len(published.card.classes)]
    labels = (folder / output.label_filename).read_text().splitlines()
    assert labels == list(published.card.classes)


def test_model_json_round_trip(published, trained) -> None:
    on_disk = json.loads((published.path / CARD_FILE).read_text())
    card = ModelCard.from_dict(on_disk)
    assert card.to_dict() == on_disk
    assert ModelRepository(published.path.parent.parent).resolve("digits").card == card
    assert card == published.card
    assert card.sha256 == sha256_file(published.onnx_path)
    assert list(card.classes) == trained.ckpt["classes"]
    assert card.eval_spec == EvalSpec(size=SIZE) and card.input_size == SIZE
    assert card.tta == TTASpec(views=("center", "hflip"))
    assert (list(card.mean), list(card.std)) == (MEAN, STD)
    assert card.opset == 18
    assert card.metrics["accuracy"] == pytest.approx(trained.accuracy)
    assert card.metrics["tta_accuracy"] == pytest.approx(trained.accuracy + 0.01)
    assert card.metrics["loss"] == pytest.approx(0.5)  # a 0-d tensor became a float
    assert card.recipe == trained.ckpt["recipe"]
    created = datetime.fromisoformat(card.created_at)
    assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0
    assert card.variants == {}
    report = published.path / "report"
    for name in ("confusion_matrix.png", "classification_report.json", "metrics.json",
                 "recipe.toml"):
        assert (report / name).is_file(), name
    assert not list(report.glob("*.pt"))


# ----------------------------------------------------------------------------- versions


def test_versions_auto_increment(tmp_path, trained, fast_export) -> None:
    first = export.export_checkpoint(trained.checkpoint, name="digits", models_dir=tmp_path)
    second = export.export_checkpoint(trained.checkpoint, name="digits", models_dir=tmp_path)
    assert (first.version, second.version) == (1, 2)
    assert second.card.version == 2
    assert ModelRepository(tmp_path).versions("digits") == [1, 2]
    assert entries(tmp_path, "digits") == ["1", "2"]


def test_existing_version_is_replaced_only_with_force(tmp_path, trained, fast_export) -> None:
    export.export_checkpoint(trained.checkpoint, name="digits", models_dir=tmp_path, version=3)
    before = (tmp_path / "digits" / "3" / CARD_FILE).read_text()
    other = save_variant(trained, tmp_path / "run2",
                         metrics={"accuracy": 0.123, "tta_accuracy": None})
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export.export_checkpoint(other, name="digits", models_dir=tmp_path, version=3)
    assert (tmp_path / "digits" / "3" / CARD_FILE).read_text() == before
    mv = export.export_checkpoint(other, name="digits", models_dir=tmp_path, version=3,
                                  force=True)
    assert mv.card.metrics["accuracy"] == 0.123
    assert ModelRepository(tmp_path).resolve("digits", 3).card.metrics["accuracy"] == 0.123
    assert entries(tmp_path, "digits") == ["3"]  # no staging or retired folder left
    assert export.export_checkpoint(other, name="digits", models_dir=tmp_path).version == 4


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_crash_after_staging_leaves_no_partial_version(tmp_path, trained, fast_export,
                                                       monkeypatch, error) -> None:
    export.export_checkpoint(trained.checkpoint, name="digits", models_dir=tmp_path)
    staged: list[Path] = []

    def crash(run_dir: Path, dest: Path) -> list[str]:
        staged.extend(dest.parent.iterdir())  # model.onnx is already written by now
        raise error

    monkeypatch.setattr(pipeline, "copy_run_report", crash)
    with pytest.raises(type(error)):
        export.export_checkpoint(trained.checkpoint, name="digits", models_dir=tmp_path)
    assert any(p.name == MODEL_FILE for p in staged)
    assert ModelRepository(tmp_path).versions("digits") == [1]
    assert entries(tmp_path, "digits") == ["1"]  # the staging folder is gone too


def test_parity_failure_raises_and_publishes_nothing(tmp_path, trained, monkeypatch,
                                                     published) -> None:
    def corrupted(module, path, *, size, opset=export.OPSET, metadata=None) -> int:
        model = onnx.load(str(published.onnx_path))
        bias = next(t for t in model.graph.initializer if t.name == "model.head.2.bias")
        values = onnx.numpy_helper.to_array(bias).copy()
        values[0] += 0.01  # a small, silent change: exactly what the check is for
        bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
        onnx.save(model, str(path))
        return 18

    monkeypatch.setattr(pipeline, "export_onnx", corrupted)
    with pytest.raises(ExportError, match="does not reproduce PyTorch.*nothing was published"):
        export.export_checkpoint(trained.checkpoint, name="digits", models_dir=tmp_path)
    assert ModelRepository(tmp_path).versions("digits") == []
    assert entries(tmp_path, "digits") == []


# ----------------------------------------------------------------------------- inputs


def test_bad_checkpoints_fail_clearly(tmp_path, trained) -> None:
    models = tmp_path / "models"
    with pytest.raises(ExportError, match="not found"):
        export.export_checkpoint(tmp_path / "nope.pt", name="d", models_dir=models)
    partial = {k: v for k, v in trained.ckpt.items() if k not in ("mean", "eval_spec")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(ExportError, match=r"lacks key\(s\) \['mean', 'eval_spec'\]"):
        export.export_checkpoint(tmp_path / "partial.pt", name="d", models_dir=models)
    wrong_classes = save_variant(trained, tmp_path / "c", classes=[*trained.ckpt["classes"], "x"])
    with pytest.raises(ExportError, match="could not rebuild arch .* with 11 classes"):
        export.export_checkpoint(wrong_classes, name="d", models_dir=models)
    other_format = save_variant(trained, tmp_path / "f", format="something-else/9")
    with pytest.raises(ExportError, match="format"):
        export.export_checkpoint(other_format, name="d", models_dir=models)
    with pytest.raises(ExportError, match="model name"):
        export.export_checkpoint(trained.checkpoint, name="../escape", models_dir=models)
    assert not models.exists() or entries(models, "d") == []


def test_data_option(tmp_path, trained, digits, fast_export) -> None:
    with pytest.raises(ExportError, match="is not a folder"):
        export.export_checkpoint(trained.checkpoint, name="d", models_dir=tmp_path,
                                 data=tmp_path / "missing")
    (tmp_path / "unrelated" / "zebra").mkdir(parents=True)
    with pytest.raises(ExportError, match="no images in folders named after"):
        export.export_checkpoint(trained.checkpoint, name="d", models_dir=tmp_path,
                                 data=tmp_path / "unrelated")
    other = tmp_path / "other"  # a train/ + valid/ folder: only valid/ is read
    for i, path in enumerate(trained.valid_paths[:30]):
        label = trained.ckpt["classes"][trained.valid_labels[i]]
        for split in ("train", "valid"):
            (other / split / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, other / split / label / path.name)
    (other / "valid" / "not_a_class").mkdir()
    mv = export.export_checkpoint(trained.checkpoint, name="d", models_dir=tmp_path, data=other)
    check = mv.card.metrics["export_check"]
    assert check["n_images"] == 30 and check["images_source"] == str(other)
    assert check["accuracy_onnx"] == pytest.approx(
        float((trained.model(torch.from_numpy(_pixels(trained.valid_paths[:30], EvalSpec(SIZE))))
               .argmax(1).numpy() == trained.valid_labels[:30]).mean()))
    # the training folder itself: its validation split, not every (training) image in it
    mv = export.export_checkpoint(trained.checkpoint, name="d", models_dir=tmp_path,
                                  data=digits, max_images=50)
    check = mv.card.metrics["export_check"]
    assert check["n_images"] == 50 and "validation split" in check["images_source"]


def test_without_images_refuses_unless_random_inputs_only(tmp_path, trained, fast_export,
                                                          capsys) -> None:
    from training import cli

    recipe = {**trained.ckpt["recipe"], "data": {"path": str(tmp_path / "gone")}}
    ckpt = save_variant(trained, tmp_path / "run", recipe=recipe)
    with pytest.raises(ExportError, match="no real images.*gone.*--random-inputs-only"):
        export.export_checkpoint(ckpt, name="d", models_dir=tmp_path / "models")
    argv = ["export", str(ckpt), "--name", "d", "--models-dir", str(tmp_path / "models")]
    assert cli.main(argv) == 2 and "--random-inputs-only" in capsys.readouterr().err
    assert ModelRepository(tmp_path / "models").versions("d") == []
    assert cli.main([*argv, "--random-inputs-only"]) == 0
    mv = ModelRepository(tmp_path / "models").resolve("d", 1)
    check = mv.card.metrics["export_check"]
    assert check["n_images"] == 0 and check["n_random"] == 8
    assert check["accuracy_onnx"] is None and check["max_abs_diff"] <= 1e-4
    assert not (mv.path / "report").exists()  # not a run folder: nothing swept in


def test_ema_weights_are_the_ones_exported(tmp_path, trained, fast_export) -> None:
    """last.pt keeps the raw model and the EMA separately; training evaluated the EMA."""
    raw = tiny_classifier(10, MEAN, STD).state_dict()  # untrained: would fail the parity check
    ema = {f"module.{k}": v for k, v in trained.ckpt["model"].items()}
    ckpt = save_variant(trained, tmp_path / "run", model=raw,
                        ema={**ema, "n_averaged": torch.tensor(40)})
    mv = export.export_checkpoint(ckpt, name="d", models_dir=tmp_path / "models")
    assert mv.card.metrics["export_check"]["max_abs_diff"] <= 1e-4


def test_auto_version_taken_meanwhile_moves_on(tmp_path, trained, fast_export,
                                              monkeypatch) -> None:
    repo = ModelRepository(tmp_path)
    export.export_checkpoint(trained.checkpoint, name="digits", models_dir=tmp_path)
    real_next = ModelRepository.next_version
    stale = iter([1])  # a concurrent export's view: version 1 looked free

    def next_version(self, name):
        return next(stale, None) or real_next(self, name)

    monkeypatch.setattr(ModelRepository, "next_version", next_version)
    mv = export.export_checkpoint(trained.checkpoint, name="digits", models_dir=tmp_path)
    assert mv.version == 2 and mv.card.version == 2
    assert repo.versions("digits") == [1, 2] and entries(tmp_path, "digits") == ["1", "2"]


# ----------------------------------------------------------------------------- variants, CLI


def test_fp16_and_int8_variants_are_measured(tmp_path, trained, fast_export) -> None:
    mv = export.export_checkpoint(trained.checkpoint, name="digits", models_dir=tmp_path,
                                  fp16=True, int8=True)
    fp32_acc = mv.card.metrics["export_check"]["accuracy_onnx"]
    assert set(mv.card.variants) == {"fp16", "int8"}
    x = _pixels(trained.valid_paths[:7], mv.card.eval_spec)
    for kind, v in mv.card.variants.items():
        path = mv.path / v.file
        assert v.sha256 == sha256_file(path)
        assert v.n_images == len(trained.valid_labels)
        assert v.delta_accuracy == pytest.approx(v.accuracy - fp32_acc)
        assert abs(v.delta_accuracy) <= 0.05, (kind, v)
        assert v.top1_agreement_vs_fp32 >= 0.95
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].type == "tensor(float)"  # clients do not change
        out = session.run(["probabilities"], {"pixels": x})[0]
        assert out.dtype == np.float32 and out.shape == (7, 10)
    assert mv.card.variants["fp16"].max_abs_diff_vs_fp32 < 1e-2
    assert ModelRepository(tmp_path).resolve("digits").card.variants == mv.card.variants


def _cli_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    export_command.register(parser)
    return parser.parse_args(argv)


def test_command_prints_the_measured_difference(tmp_path, trained, fast_export, capsys) -> None:
    args = _cli_args([str(trained.checkpoint), "--name", "digits", "--models-dir",
                      str(tmp_path), "--version", "2", "--check-images", "40"])
    assert export_command.run(args) == 0
    out = capsys.readouterr().out
    assert "published digits version 2" in out
    assert "max |p_onnx - p_torch| = " in out and "40 real images" in out
    with pytest.raises(ExportError, match="already exists"):
        export_command.run(args)


def test_training_cli_maps_export_errors_to_exit_2(tmp_path, trained, fast_export,
                                                   capsys) -> None:
    from training import cli

    argv = ["export", str(trained.checkpoint), "--name", "digits", "--models-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    assert cli.main([*argv, "--version", "1"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_real_xresnet_tiny_exports(tmp_path) -> None:
    """The real build_model path end to end (untrained weights, random-input parity only)."""
    from training.models import build_model

    model = build_model("xresnet_tiny", 3, mean=MEAN, std=STD)
    ckpt = {"format": checkpoint_module.CHECKPOINT_FORMAT, "arch": "xresnet_tiny",
            "classes": ["a", "b", "c"],
            "mean": MEAN, "std": STD, "eval_spec": EvalSpec(size=32).to_dict(),
            "tta": TTASpec().to_dict(), "model": model.state_dict(), "recipe": {},
            "metrics": {"accuracy": 0.5, "tta_accuracy": None}}
    torch.save(ckpt, tmp_path / "best.pt")
    mv = export.export_checkpoint(tmp_path / "best.pt", name="x", models_dir=tmp_path / "m",
                                  random_inputs_only=True)
    assert mv.card.metrics["export_check"]["max_abs_diff"] <= 1e-4
    session = ort.InferenceSession(str(mv.onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((7, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        want = torch.softmax(model.eval()(torch.from_numpy(x)), 1).numpy()
    assert np.abs(session.run(None, {"pixels": x})[0] - want).max() <= 1e-4


def test_export_calibrates_on_the_held_out_split(tmp_path, trained):
    """`training export`'s default: views, temperatures and thresholds fitted on the run's
    validation split, recorded in model.json with the report's pictures; same graph."""
    mv = export.export_checkpoint(trained.checkpoint, name="digits", models_dir=tmp_path,
                                  calibrate=True, abstain_at=0.99)
    c = mv.card.calibration
    assert c.calibrated and c.temperature > 0 and c.tta_temperature > 0
    assert c.evidence["n_images"] == len(trained.valid_labels)
    assert c.evidence["ece"]["plain"]["after"] <= c.evidence["ece"]["plain"]["before"]
    assert c.evidence["nll"]["plain"]["after"] <= c.evidence["nll"]["plain"]["before"] + 1e-9
    assert mv.card.tta.weights is not None and mv.card.tta.views[0] == "center"
    assert c.evidence["abstain"]["target_accuracy"] == 0.99
    for name in ("reliability.png", "risk_coverage.png", "views.md", "calibration.json"):
        assert (mv.path / "report" / "calibration" / name).stat().st_size > 100
    assert (mv.path / "report" / "calibration" / "reliability.png").read_bytes()[:4] == \
        b"\x89PNG"
