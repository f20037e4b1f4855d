"""The committed generated code (service/_proto) is exactly what protos/ generates."""

from __future__ import annotations

import importlib.util
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED = REPO_ROOT / "service" / "_proto"


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_protos", REPO_ROOT / "scripts" /
                                                  "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_protos", module)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def test_generated_code_is_up_to_date(tmp_path: Path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) generates the code")
    _load_generator().generate(tmp_path)
    fresh, committed = _tree(tmp_path / "service" / "_proto"), _tree(COMMITTED)
    fix = ("run `.venv/bin/python scripts/gen_protos.py` and commit service/_proto (generated "
           f"with grpcio-tools {version('grpcio-tools')})")
    assert sorted(fresh) == sorted(committed), f"generated files differ in name; {fix}"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"service/_proto is stale ({', '.join(stale)}); {fix}"


def test_generated_imports_are_package_absolute():
    from service._proto.tta_serve.v1 import classifier_pb2, classifier_pb2_grpc

    assert classifier_pb2.DESCRIPTOR.package == "tta_serve.v1"
    assert hasattr(classifier_pb2_grpc, "ClassifierStub")
    service = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"]
    assert {"Predict", "PredictStream", "Evaluate", "ListModels", "GetModel"} <= set(
        service.methods_by_name)
