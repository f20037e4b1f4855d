"""`training export --models-dir` defaults to the repository tta-serve serves: $TTA_SERVE_MODELS_DIR
(the Dockerfile's train target sets it to /models), else the models/ beside the package, else
./models (service.process.serve_env.default_models_dir, one function for both); --models-dir
wins."""

from __future__ import annotations

from pathlib import Path

import pytest

import service.process.serve_env
import training.export
from training.cli import build_parser, main


def parse(argv: list[str]) -> Path:
    return build_parser().parse_args(["export", "best.pt", "--name", "digits", *argv]).models_dir


def test_models_dir_default_follows_the_environment(monkeypatch, tmp_path: Path):
    beside_package = Path(service.process.serve_env.__file__).resolve().parents[1] / "models"
    served_by_default = beside_package if beside_package.is_dir() else Path("models")
    monkeypatch.delenv("TTA_SERVE_MODELS_DIR", raising=False)
    assert parse([]) == served_by_default == service.process.serve_env.default_models_dir()
    monkeypatch.setenv("TTA_SERVE_MODELS_DIR", "")
    assert parse([]) == served_by_default
    monkeypatch.setenv("TTA_SERVE_MODELS_DIR", str(tmp_path / "served"))
    assert parse([]) == tmp_path / "served"
    assert parse(["--models-dir", "elsewhere"]) == Path("elsewhere")


class Stop(Exception):
    pass


def test_export_command_publishes_into_the_environment_s_repository(monkeypatch,
                                                                    tmp_path: Path):
    """Through the `training` entry point, as `docker run tta-serve-train export ...` runs it."""
    seen: dict = {}

    def fake_export(checkpoint: Path, **kwargs):
        seen.update(kwargs, checkpoint=checkpoint)
        raise Stop

    monkeypatch.setattr(training.export, "export_checkpoint", fake_export)
    monkeypatch.setenv("TTA_SERVE_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(Stop):
        main(["export", str(tmp_path / "best.pt"), "--name", "digits"])
    assert seen["models_dir"] == tmp_path / "models"
    assert seen["checkpoint"] == tmp_path / "best.pt" and seen["name"] == "digits"
