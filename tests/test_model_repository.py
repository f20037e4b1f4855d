"""service.model_repository: what the service refuses to load, and publishing that is atomic.

Torch-free: the graphs are built with onnx.helper, the way the serving image would see them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from onnx_testkit import tiny_graph

from service.imaging import EvalSpec, TTASpec
from service.model_repository import (
    CARD_FILE,
    MODEL_FILE,
    InvalidModelError,
    ModelCard,
    ModelNotFoundError,
    ModelRepository,
    VariantRecord,
    sha256_file,
    validate_version_dir,
)

CLASSES = ("cat", "dog", "fox")


def make_card(name: str, version: int, sha: str, classes=CLASSES) -> ModelCard:
    return ModelCard(
        name=name, version=version, classes=tuple(classes), eval_spec=EvalSpec(size=4),
        tta=TTASpec(), sha256=sha, metrics={"accuracy": 0.9, "tta_accuracy": 0.92},
        recipe={"model": {"arch": "tiny"}}, created_at="2026-01-01T00:00:00+00:00",
    )


def fill(folder: Path, name: str = "pets", version: int = 1, *, n_out: int = len(CLASSES),
         classes=CLASSES, seed: int = 0) -> Path:
    """A complete version folder: model.onnx + model.json with the right sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny_graph(folder / MODEL_FILE, n_out, seed=seed)
    card = make_card(name, version, sha256_file(folder / MODEL_FILE), classes)
    (folder / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=2))
    return folder


def publish(repo: ModelRepository, name: str, version: int, *, seed: int = 0, force=False):
    staging = fill(repo.staging_dir(name), name, version, seed=seed)
    return repo.publish(staging, name, version, force=force)


def visible_entries(repo: ModelRepository, name: str) -> list[str]:
    return sorted(p.name for p in (repo.root / name).iterdir())


# ----------------------------------------------------------------------------- card


def test_card_round_trip() -> None:
    card = make_card("pets", 3, "ab" * 32)
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again.to_dict() == card.to_dict()
    # optional dicts come back as {} (not None): equal once given explicitly
    explicit = ModelCard(**{**card.__dict__, "variants": {"int8": {"file": "model.int8.onnx"}}})
    assert ModelCard.from_dict(explicit.to_dict()) == explicit
    assert again.input_size == 4 and again.tta == TTASpec()


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("models/*/*/model.json")),
                         ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_the_committed_model_json_files_round_trip_exactly(path: Path) -> None:
    # the typed card (variants as VariantRecord) writes back the very JSON it read
    written = json.loads(path.read_text())
    card = ModelCard.from_dict(written)
    assert card.to_dict() == written
    assert all(isinstance(v, VariantRecord) and v.file for v in card.variants.values())


def test_an_old_partial_variant_record_still_loads() -> None:
    d = make_card("pets", 1, "00").to_dict()
    d["variants"] = {"int8": {"file": "model.int8.onnx", "note": "hand-written"},
                     "fp16": None}  # not an object: names no file, left out
    card = ModelCard.from_dict(d)
    assert set(card.variants) == {"int8"}
    record = card.variants["int8"]
    assert (record.file, record.sha256, record.accuracy) == ("model.int8.onnx", None, None)
    assert card.to_dict()["variants"]["int8"]["note"] == "hand-written"  # unknown keys kept


def test_card_rejects_other_format_and_missing_keys() -> None:
    d = make_card("pets", 1, "00").to_dict()
    with pytest.raises(ValueError, match="format_version"):
        ModelCard.from_dict({**d, "format_version": 99})
    del d["classes"]
    with pytest.raises(ValueError, match="'classes'"):
        ModelCard.from_dict(d)


# ----------------------------------------------------------------------------- validation


def test_valid_folder_loads(tmp_path) -> None:
    card = validate_version_dir(fill(tmp_path / "pets" / "1"))
    assert card.classes == CLASSES and card.metrics["tta_accuracy"] == 0.92


def test_tampered_model_fails_with_folder_and_sha(tmp_path) -> None:
    folder = fill(tmp_path / "pets" / "1")
    with open(folder / MODEL_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(InvalidModelError) as e:
        validate_version_dir(folder)
    assert str(folder) in str(e.value) and "sha256" in str(e.value)
    assert "changed or truncated" in str(e.value)


def test_missing_card_fails_with_folder(tmp_path) -> None:
    folder = fill(tmp_path / "pets" / "1")
    (folder / CARD_FILE).unlink()
    with pytest.raises(InvalidModelError, match="model.json is missing") as e:
        validate_version_dir(folder)
    assert str(folder) in str(e.value)


def test_missing_model_fails_with_folder(tmp_path) -> None:
    folder = fill(tmp_path / "pets" / "1")
    (folder / MODEL_FILE).unlink()
    with pytest.raises(InvalidModelError, match="model.onnx is missing") as e:
        validate_version_dir(folder)
    assert str(folder) in str(e.value)


def test_class_count_mismatch_fails_with_folder(tmp_path) -> None:
    folder = fill(tmp_path / "pets" / "1", n_out=4)  # graph outputs 4, card lists 3
    with pytest.raises(InvalidModelError) as e:
        validate_version_dir(folder)
    msg = str(e.value)
    assert str(folder) in msg and "outputs 4 classes" in msg and "lists 3" in msg


def test_corrupt_card_and_graph_fail_clearly(tmp_path) -> None:
    folder = fill(tmp_path / "pets" / "1")
    (folder / CARD_FILE).write_text("{not json")
    with pytest.raises(InvalidModelError, match="model.json is not valid") as e:
        validate_version_dir(folder)
    assert str(folder) in str(e.value)

    folder2 = tmp_path / "pets" / "2"
    folder2.mkdir()
    (folder2 / MODEL_FILE).write_bytes(b"not a protobuf at all" * 10)
    card = make_card("pets", 2, sha256_file(folder2 / MODEL_FILE))
    (folder2 / CARD_FILE).write_text(json.dumps(card.to_dict()))
    with pytest.raises(InvalidModelError, match="not a readable ONNX graph") as e:
        validate_version_dir(folder2)
    assert str(folder2) in str(e.value)


# ----------------------------------------------------------------------------- repository


def test_resolve_latest_and_numeric_order(tmp_path) -> None:
    repo = ModelRepository(tmp_path)
    for v in (1, 2, 10):
        publish(repo, "pets", v)
    (tmp_path / "pets" / ".staging-abandoned").mkdir()  # hidden: never listed
    (tmp_path / "pets" / "notes").mkdir()  # not a version number
    assert repo.versions("pets") == [1, 2, 10]
    assert repo.latest("pets") == 10 and repo.next_version("pets") == 11
    assert repo.resolve("pets").version == 10
    assert repo.resolve("pets", 2).card.version == 2
    assert repo.list_models() == {"pets": [1, 2, 10]}


def test_unknown_model_and_version(tmp_path) -> None:
    repo = ModelRepository(tmp_path)
    assert repo.versions("nope") == [] and repo.next_version("nope") == 1
    with pytest.raises(ModelNotFoundError, match="'nope' not found"):
        repo.resolve("nope")
    publish(repo, "pets", 1)
    with pytest.raises(ModelNotFoundError, match="no version 7"):
        repo.resolve("pets", 7)


def test_resolve_refuses_a_tampered_version(tmp_path) -> None:
    repo = ModelRepository(tmp_path)
    mv = publish(repo, "pets", 1)
    mv.onnx_path.write_bytes(mv.onnx_path.read_bytes()[:-1])
    with pytest.raises(InvalidModelError, match=str(mv.path)):
        repo.resolve("pets", 1)


def test_publish_is_a_rename_and_never_overwrites_without_force(tmp_path) -> None:
    repo = ModelRepository(tmp_path)
    first = publish(repo, "pets", 1, seed=0)
    staging = fill(repo.staging_dir("pets"), "pets", 1, seed=1)
    with pytest.raises(FileExistsError, match="--force"):
        repo.publish(staging, "pets", 1)
    assert repo.resolve("pets", 1).card.sha256 == first.card.sha256
    replaced = repo.publish(staging, "pets", 1, force=True)
    assert replaced.card.sha256 != first.card.sha256
    assert not staging.exists()
    assert visible_entries(repo, "pets") == ["1"]  # no staging or retired folder left


@pytest.mark.skipif(sys.platform != "linux", reason="renameat2 is Linux's")
def test_forced_replacement_is_one_exchange_on_linux(tmp_path, monkeypatch) -> None:
    """No moment without the version: the old folder is never renamed away first."""
    import service.model_repository as mr

    repo = ModelRepository(tmp_path)
    publish(repo, "pets", 1, seed=0)
    staging = fill(repo.staging_dir("pets"), "pets", 1, seed=1)
    new_sha = json.loads((staging / "model.json").read_text())["onnx"]["sha256"]

    def no_rename(*args):
        raise AssertionError(f"os.rename{args}: the two-step path")

    monkeypatch.setattr(mr.os, "rename", no_rename)
    replaced = repo.publish(staging, "pets", 1, force=True)
    assert replaced.card.sha256 == new_sha
    assert not staging.exists()
    assert visible_entries(repo, "pets") == ["1"]


def test_forced_replacement_without_exchange_falls_back_to_two_renames(tmp_path,
                                                                       monkeypatch) -> None:
    import service.model_repository as mr

    repo = ModelRepository(tmp_path)
    first = publish(repo, "pets", 1, seed=0)
    staging = fill(repo.staging_dir("pets"), "pets", 1, seed=1)
    monkeypatch.setattr(mr, "_exchange", lambda a, b: False)
    replaced = repo.publish(staging, "pets", 1, force=True)
    assert replaced.card.sha256 != first.card.sha256
    assert sorted(p.name for p in (tmp_path / "pets").iterdir()) == ["1"]


def test_publish_refuses_an_invalid_staging_folder(tmp_path) -> None:
    repo = ModelRepository(tmp_path)
    staging = fill(repo.staging_dir("pets"), "pets", 1, n_out=5)
    with pytest.raises(InvalidModelError, match="outputs 5 classes"):
        repo.publish(staging, "pets", 1)
    assert repo.versions("pets") == []
