"""``tta-serve predict`` / ``evaluate``: in this process and against real gRPC and HTTP servers.

The goal of issue 17: a folder of 1,000 real digit images gives a CSV whose labels equal the gRPC
server's answers, locally (the model in-process) and remotely (gRPC and HTTP).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from http_testkit import HttpServer
from service_testkit import Digits, FixtureModel, RunningServer, core_config

from service._proto.tta_serve.v1 import classifier_pb2 as pb
from service.cli import main


@pytest.fixture(scope="module")
def folder_1000(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 digits in nested folders, one undecodable .png and a README that is skipped."""
    root = tmp_path_factory.mktemp("predict") / "images"
    for i in range(1000):
        path = root / f"batch{i % 4}" / ("deep" if i % 7 == 0 else "") / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(digits.pngs[i])
    (root / "batch0" / "broken.png").write_bytes(b"this is not a png")
    (root / "README.txt").write_text("notes, not an image")
    return root


def _local_flags(model: FixtureModel) -> list[str]:
    c = core_config(model.repo_root)
    return ["--models-dir", str(c.models_dir), "--device", "cpu", "--intra-op-threads", "1",
            "--max-image-bytes", str(c.max_image_bytes)]


def _read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def test_predict_1000_images_locally_and_remotely_equals_grpc(
        folder_1000: Path, digits_model: FixtureModel, grpc_server: RunningServer,
        http_server: HttpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    targets = {"local": _local_flags(digits_model),
               "grpc": ["--url", f"grpc://127.0.0.1:{grpc_server.port}"],
               "http": ["--url", http_server.base_url]}
    tables = {}
    for name, flags in targets.items():
        out = tmp_path / f"{name}.csv"
        code = main(["predict", str(folder_1000), *flags, "--top-k", "3", "-o", str(out)])
        err = capsys.readouterr().err
        assert code == 1, err  # one file failed; every other row is there
        assert "predicted 1000 of 1001 images" in err and "1 invalid_argument" in err, err
        tables[name] = _read_csv(out)
    rows = tables["local"]
    assert len(rows) == 1001
    assert not any(p.endswith("README.txt") for p in rows)
    broken = rows[str(folder_1000 / "batch0" / "broken.png")]
    assert broken["label"] == "" and "not a recognised image format" in broken["error"]

    for path, row in rows.items():
        if path.endswith("broken.png"):
            continue
        answer = grpc_server.stub.Predict(
            pb.PredictRequest(image=Path(path).read_bytes(), top_k=3), timeout=30)
        assert row["label"] == answer.classes[0].label, path
        assert float(row["probability"]) == pytest.approx(answer.classes[0].probability,
                                                          abs=1e-6)
        assert [c.split(":")[0] for c in row["top_k"].split(";")] == [
            c.label for c in answer.classes]
        assert (row["model"], row["version"], row["error"]) == ("digits", "1", "")
    assert tables["grpc"] == rows
    assert tables["http"] == rows


def test_predict_tta_json_and_bad_paths(digits_model: FixtureModel, grpc_server: RunningServer,
                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    image, label = digits_model.samples[4]
    good = tmp_path / "four.png"
    good.write_bytes(image)
    out = tmp_path / "out.json"
    code = main(["predict", str(good), str(tmp_path / "missing.png"), "--tta", "--top-k", "2",
                 "--url", f"127.0.0.1:{grpc_server.port}", "-o", str(out)])
    assert code == 1
    items = json.loads(out.read_text())
    assert items[0]["label"] == label and items[0]["tta_views"] == 6
    assert len(items[0]["classes"]) == 2
    assert items[1]["kind"] == "unreadable" and "missing.png" in items[1]["error"]
    capsys.readouterr()
    # the table on stdout
    assert main(["predict", str(good), *_local_flags(digits_model)]) == 0
    assert f"{label} " in capsys.readouterr().out


def test_predict_refuses_an_unknown_model_or_server(digits_model: FixtureModel,
                                                    grpc_server: RunningServer,
                                                    http_server: HttpServer, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]):
    image = tmp_path / "a.png"
    image.write_bytes(digits_model.samples[0][0])
    for flags in (["--url", f"127.0.0.1:{grpc_server.port}"], ["--url", http_server.base_url],
                  _local_flags(digits_model)):
        assert main(["predict", str(image), "--model", "cats", *flags]) == 2
        assert "'cats'" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "empty-folder-that-is-missing")]) == 1
    assert "unreadable" in capsys.readouterr().err


def test_evaluate_prints_the_report_and_writes_the_png(
        digits_model: FixtureModel, grpc_server: RunningServer, http_server: HttpServer,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    folder = tmp_path / "valid"
    for i, (image, label) in enumerate(digits_model.valid):
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / f"{i}.png").write_bytes(image)
    labels = np.array([int(y) for _, y in digits_model.valid])
    accuracy = float((digits_model.valid_pred_tta == labels).mean())
    for name, flags in {"local": _local_flags(digits_model),
                        "grpc": ["--url", f"127.0.0.1:{grpc_server.port}"],
                        "http": ["--url", http_server.base_url]}.items():
        png, report = tmp_path / f"{name}.png", tmp_path / f"{name}.json"
        assert main(["evaluate", str(folder), "--tta", "--png", str(png), "--json", str(report),
                     *flags]) == 0
        out = capsys.readouterr().out
        assert f"accuracy {accuracy:.4f} on {len(labels)} images" in out, out
        assert "precision  recall" in out
        assert png.read_bytes().startswith(b"\x89PNG")
        assert json.loads(report.read_text())["accuracy"] == pytest.approx(accuracy)
    assert main(["evaluate", str(tmp_path / "nowhere"), *_local_flags(digits_model)]) == 2
    assert "not a folder of class folders" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["local", "grpc", "http"])
def test_predict_columns_say_the_path_and_unsure(digits_model: FixtureModel,
                                                 grpc_server: RunningServer,
                                                 http_server: HttpServer, tmp_path: Path,
                                                 where: str):
    """tta_path, unsure and calibrated columns (CSV) and fields (JSON), from every backend."""
    image, label = digits_model.samples[2]
    good = tmp_path / "two.png"
    good.write_bytes(image)
    flags = {"local": _local_flags(digits_model),
             "grpc": ["--url", f"127.0.0.1:{grpc_server.port}"],
             "http": ["--url", http_server.base_url]}[where]
    csv_out, json_out = tmp_path / "p.csv", tmp_path / "p.json"
    assert main(["predict", str(good), "--tta", "auto", "--min-confidence", "1", *flags,
                 "-o", str(csv_out)]) == 0
    row = _read_csv(csv_out)[str(good)]
    # the fixture model has no auto threshold (exported before calibration): every view runs
    assert (row["label"], row["tta_path"], row["unsure"], row["calibrated"]) == (
        label, "tta", "true", "false")
    assert main(["predict", str(good), *flags, "-o", str(json_out)]) == 0
    item = json.loads(json_out.read_text())[0]
    assert (item["tta_path"], item["tta_mode"], item["unsure"]) == ("plain", "off", False)
    assert item["views_used"] == ["center"]
