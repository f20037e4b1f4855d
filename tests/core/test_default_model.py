"""Which model answers a request that names none: the only one, else the bundled cifar10, else
the user says (--model) -- a repository without a model named "digits" must start."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.cli import build_parser
from service.core.config import CoreConfig
from service.core.errors import ModelNotFound
from service.core.inference import InferenceCore
from service.process.core_options import core_config_from_args

DIGITS = Path(__file__).resolve().parents[2] / "models" / "digits" / "1"


def repository(root: Path, *names: str) -> Path:
    """A repository holding the bundled digits version under each of ``names``."""
    for name in names:
        shutil.copytree(DIGITS, root / name / "1")
    return root


def start(root: Path, **settings) -> InferenceCore:
    return InferenceCore.create(CoreConfig(models_dir=root, poll_interval_s=0, device="cpu",
                                           **settings)).start()


def test_the_only_model_is_the_default_whatever_its_name(tmp_path: Path):
    core = start(repository(tmp_path, "pets"))
    try:
        assert core.config.default_model == "pets"
        assert core.ready
        assert [m.name for m in core.list_models()] == ["pets"]
    finally:
        core.stop()


def test_the_cli_without_model_flag_serves_a_users_own_model(tmp_path: Path):
    args = build_parser().parse_args(["grpc", "--models-dir", str(repository(tmp_path, "pets"))])
    config = core_config_from_args(args)
    assert config.default_model == ""  # chosen when the core starts
    core = InferenceCore.create(config).start()
    try:
        assert core.config.default_model == "pets"
    finally:
        core.stop()


def test_among_several_the_bundled_cifar10_is_the_default(tmp_path: Path):
    core = start(repository(tmp_path, "pets", "cifar10"))
    try:
        assert core.config.default_model == "cifar10"
        assert {m.name for m in core.list_models()} == {"pets", "cifar10"}
    finally:
        core.stop()


def test_several_models_and_no_choice_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ModelNotFound, match=r"several models \(cats, pets\).*--model NAME"):
        start(repository(tmp_path, "pets", "cats"))


def test_model_flag_chooses_among_several(tmp_path: Path):
    core = start(repository(tmp_path, "pets", "cats"), default_model="cats")
    try:
        assert core.config.default_model == "cats"
    finally:
        core.stop()


def test_an_empty_repository_says_how_to_fill_it(tmp_path: Path):
    with pytest.raises(ModelNotFound, match="holds no model; export one"):
        start(tmp_path)
