"""The model repository on disk: ``ROOT/NAME/VERSION/{model.onnx, model.json, report/}``.

Both sides use it: ``training export`` publishes through it (atomically), the service
resolves and validates through it. A version is only ever visible complete: publishing
writes a hidden staging folder and renames it into place. Folders starting with '.' are
never listed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.calibration import Calibration
from service.imaging import EvalSpec, TTASpec, check_views_fit

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
CARD_FILE = "model.json"
FORMAT_VERSION = 1


class ModelRepositoryError(Exception):
    """Base class: something about the repository or a version is wrong."""


class ModelNotFoundError(ModelRepositoryError):
    """No such model name or version."""


class InvalidModelError(ModelRepositoryError):
    """A version exists but cannot be served (missing file, sha mismatch, bad metadata)."""


@dataclass(frozen=True)
class VariantRecord:
    """One reduced-precision variant in model.json ``variants`` (``training export --int8``):
    its file, and what export measured against model.onnx on the same check images.

    ``to_dict()`` writes every key, as export does; a hand-written record with only ``file``
    still loads (the rest None), and keys this version does not know are kept in ``extra``. A
    record without a file loads too ("" here): the server then treats the variant as absent.
    """

    file: str = ""
    sha256: str | None = None  # checked at load when present
    bytes: int | None = None
    accuracy: float | None = None  # None: exported with random inputs only
    delta_accuracy: float | None = None  # accuracy - model.onnx's on the same images
    max_abs_diff_vs_fp32: float | None = None
    top1_agreement_vs_fp32: float | None = None
    n_images: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        known = {name: getattr(self, name) for name in _VARIANT_KEYS}
        return {**known, **self.extra}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VariantRecord:
        return cls(**{k: v for k, v in d.items() if k in _VARIANT_KEYS},
                   extra={k: v for k, v in d.items() if k not in _VARIANT_KEYS})


_VARIANT_KEYS = ("file", "sha256", "bytes", "accuracy", "delta_accuracy", "max_abs_diff_vs_fp32",
                 "top1_agreement_vs_fp32", "n_images")


def variants_to_dict(variants: Mapping[str, VariantRecord]) -> dict[str, dict[str, Any]]:
    """model.json's ``variants`` object (and the wires' ``variants``): kind -> record."""
    return {kind: record.to_dict() for kind, record in variants.items()}


@dataclass(frozen=True)
class ModelCard:
    """Everything the service needs about a model, and nothing it must guess (model.json)."""

    name: str
    version: int
    classes: tuple[str, ...]
    eval_spec: EvalSpec
    tta: TTASpec
    sha256: str
    input_name: str = "pixels"
    output_name: str = "probabilities"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    opset: int = 18
    metrics: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    created_at: str = ""
    # model.json "variants": kind ("int8", "fp16") -> its record; {} when export made none
    variants: Mapping[str, VariantRecord] = field(default_factory=dict)
    # model.json "calibration" (temperatures, TTA mode, abstention; service.calibration); a card
    # without one -- every model exported before it existed -- serves uncalibrated (T = 1).
    calibration: Calibration = field(default_factory=Calibration.uncalibrated)

    def __post_init__(self) -> None:
        # records given as JSON objects (a caller holding model.json's dicts) are typed here
        object.__setattr__(self, "variants", {
            kind: v if isinstance(v, VariantRecord) else VariantRecord.from_dict(v)
            for kind, v in (self.variants or {}).items()})
        check_views_fit(self.eval_spec, self.tta)  # a shift view must fit the input size
        if self.calibration.default_tta == "auto" and "center" not in self.tta.views:
            raise ValueError("calibration default_tta 'auto' answers from the 'center' view "
                             "first; the TTA views lack it")

    @property
    def input_size(self) -> int:
        return self.eval_spec.size

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "classes": list(self.classes),
            "onnx": {
                "file": MODEL_FILE,
                "sha256": self.sha256,
                "opset": self.opset,
                "input": self.input_name,
                "output": self.output_name,
            },
            "input": {
                "dtype": "float32",
                "layout": "NCHW",
                "channels": "RGB",
                "value_range": [0.0, 1.0],
                "size": self.eval_spec.size,
                "normalization": {"mean": list(self.mean), "std": list(self.std),
                                  "in_graph": True},
            },
            "output": {"kind": "probabilities", "softmax_in_graph": True,
                       "shape": ["batch", len(self.classes)]},
            "eval_transform": self.eval_spec.to_dict(),
            "tta": self.tta.to_dict(),
            "metrics": self.metrics or {},
            "recipe": self.recipe or {},
            "variants": variants_to_dict(self.variants),
            **({"calibration": self.calibration.to_dict()} if self.calibration.calibrated
               else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        fmt = d.get("format_version")
        if fmt != FORMAT_VERSION:
            raise ValueError(f"format_version is {fmt!r}; this service reads {FORMAT_VERSION}")
        try:
            return cls(
                name=d["name"],
                version=int(d["version"]),
                classes=tuple(d["classes"]),
                eval_spec=EvalSpec.from_dict(d["eval_transform"]),
                tta=TTASpec.from_dict(d["tta"]),
                sha256=d["onnx"]["sha256"],
                input_name=d["onnx"].get("input", "pixels"),
                output_name=d["onnx"].get("output", "probabilities"),
                mean=tuple(d["input"]["normalization"]["mean"]),
                std=tuple(d["input"]["normalization"]["std"]),
                opset=int(d["onnx"].get("opset", 0)),
                metrics=d.get("metrics") or {},
                recipe=d.get("recipe") or {},
                created_at=d.get("created_at", ""),
                # a kind whose value is no object never named a servable file: left out
                variants={kind: VariantRecord.from_dict(v)
                          for kind, v in (d.get("variants") or {}).items()
                          if isinstance(v, Mapping)},
                calibration=Calibration.from_dict(d.get("calibration")),
            )
        except KeyError as e:
            raise ValueError(f"missing key {e.args[0]!r}") from e
        except TypeError as e:
            raise ValueError(str(e)) from e


@dataclass(frozen=True)
class ModelVersion:
    """One validated, servable version."""

    name: str
    version: int
    path: Path
    card: ModelCard

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_FILE


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def onnx_output_classes(onnx_path: Path) -> int | None:
    """The class count the graph declares (last dim of its first output), or None if dynamic."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None


def validate_version_dir(path: Path) -> ModelCard:
    """Check a version folder and return its card; InvalidModelError names folder and problem."""
    path = Path(path)
    onnx_path, card_path = path / MODEL_FILE, path / CARD_FILE
    for required in (onnx_path, card_path):
        if not required.is_file():
            raise InvalidModelError(f"{path}: {required.name} is missing")
    try:
        card = ModelCard.from_dict(json.loads(card_path.read_text()))
    except (json.JSONDecodeError, ValueError) as e:
        raise InvalidModelError(f"{path}: {CARD_FILE} is not valid: {e}") from e
    actual = sha256_file(onnx_path)
    if actual != card.sha256:
        raise InvalidModelError(
            f"{path}: {MODEL_FILE} sha256 is {actual[:12]}..., {CARD_FILE} records "
            f"{card.sha256[:12]}...; the file was changed or truncated after export"
        )
    try:
        n_out = onnx_output_classes(onnx_path)
    except Exception as e:  # onnx raises several types for corrupt protobufs
        raise InvalidModelError(f"{path}: {MODEL_FILE} is not a readable ONNX graph: {e}") from e
    if n_out is not None and n_out != len(card.classes):
        raise InvalidModelError(
            f"{path}: the graph outputs {n_out} classes but {CARD_FILE} lists "
            f"{len(card.classes)}"
        )
    return card


class ModelRepository:
    """Lists, resolves, validates and publishes model versions under one root folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def model_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith("."))

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())

    def list_models(self) -> dict[str, list[int]]:
        return {name: self.versions(name) for name in self.model_names()}

    def latest(self, name: str) -> int:
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.model_names()) or "none"
            raise ModelNotFoundError(f"model {name!r} not found in {self.root} (models: {known})")
        return versions[-1]

    def resolve(self, name: str, version: int | None = None) -> ModelVersion:
        """A validated version; ``None`` means the latest."""
        if version is None or version == 0:
            version = self.latest(name)
        path = self.root / name / str(version)
        if not path.is_dir():
            have = self.versions(name)
            if not have:
                self.latest(name)  # raises the model-level error
            raise ModelNotFoundError(f"model {name!r} has no version {version} (versions: {have})")
        card = validate_version_dir(path)
        return ModelVersion(name=name, version=version, path=path, card=card)

    def next_version(self, name: str) -> int:
        versions = self.versions(name)
        return versions[-1] + 1 if versions else 1

    def staging_dir(self, name: str) -> Path:
        """A fresh hidden folder on the same filesystem, to fill and then publish()."""
        folder = self.root / name / f".staging-{uuid.uuid4().hex[:12]}"
        folder.mkdir(parents=True)
        return folder

    def publish(self, staging: Path, name: str, version: int, *,
                force: bool = False) -> ModelVersion:
        """Validate a filled staging folder and rename it into place as NAME/VERSION."""
        staging = Path(staging)
        validate_version_dir(staging)
        target = self.root / name / str(version)
        if target.exists() and not force:
            raise FileExistsError(f"{target} exists; pass --force to overwrite it")
        if not target.exists():
            os.rename(staging, target)
        elif _exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now holds the replaced version
        else:  # no atomic exchange here: for a moment the version is absent
            retired = target.with_name(f".retired-{version}-{uuid.uuid4().hex[:8]}")
            os.rename(target, retired)
            os.rename(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        log.info("published %s version %d at %s", name, version, target)
        return self.resolve(name, version)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2), so a forced replacement never leaves
    the version absent, not even for a moment; False where the platform cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0
