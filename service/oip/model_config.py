"""Triton model configurations for our model versions: what we serve, and what Triton can load.

One builder, two uses:

- ``served_config``: the configuration this server answers for a model version (Triton's
  model_configuration extension, gRPC ``ModelConfig`` and ``GET /v2/models/{m}/config``). It
  lists both inputs we accept, each optional (send exactly one): the encoded image
  (``TYPE_STRING``, i.e. BYTES) and the preprocessed FP32 pixels, with the real batching
  settings, version policy and device. perf_analyzer reads it to build its requests.
- ``triton_repository_config`` / ``write_triton_files``: ``models/NAME/config.pbtxt`` (and
  ``labels.txt``) for NVIDIA Triton itself, written by ``training export``. Triton's
  ONNX Runtime backend serves the graph as it is, so only the FP32 input: decoding and the
  evaluation transform stay client-side (or in our server).

Both are ``inference.ModelConfig`` messages whose fields are Triton's (model_config.proto), so
the text is a valid ``config.pbtxt`` and the JSON is what Triton's HTTP endpoint answers.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from google.protobuf import descriptor, json_format, text_format

from service._proto.inference import model_config_pb2 as mc
from service.model_repository import MODEL_FILE, ModelCard

PLATFORM = "onnxruntime_onnx"  # Triton's platform name for ONNX models
BACKEND = "onnxruntime"
CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
DEFAULT_MAX_BATCH_SIZE = 32  # CoreConfig's default
DEFAULT_QUEUE_DELAY_US = 2000  # CoreConfig's max_wait_ms default, in microseconds


def _pixels_input(card: ModelCard, *, optional: bool) -> mc.ModelInput:
    size = card.input_size
    return mc.ModelInput(name=card.input_name, data_type=mc.TYPE_FP32,
                         format=mc.ModelInput.FORMAT_NCHW, dims=[3, size, size],
                         optional=optional)


def _output(card: ModelCard, *, labels: bool) -> mc.ModelOutput:
    return mc.ModelOutput(name=card.output_name, data_type=mc.TYPE_FP32,
                          dims=[len(card.classes)], label_filename=LABELS_FILE if labels else "")


def _batching(config: mc.ModelConfig, max_batch_size: int, queue_delay_us: int) -> None:
    config.max_batch_size = max_batch_size
    if max_batch_size > 1:
        config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us


def served_config(name: str, card: ModelCard, *, image_input: str, max_batch_size: int,
                  max_wait_ms: float, pinned_version: int | None,
                  on_gpu: bool) -> mc.ModelConfig:
    """The configuration our server answers for a served version (see the module docstring)."""
    config = mc.ModelConfig(name=name, platform=PLATFORM, backend=BACKEND,
                            default_model_filename=MODEL_FILE)
    if pinned_version is None:
        config.version_policy.latest.num_versions = 1
    else:
        config.version_policy.specific.versions.append(pinned_version)
    _batching(config, max_batch_size, round(max_wait_ms * 1000))
    # One encoded image per batch element: [N, 1] on the wire ([N] is accepted too).
    config.input.append(mc.ModelInput(name=image_input, data_type=mc.TYPE_STRING, dims=[1],
                                      optional=True))
    config.input.append(_pixels_input(card, optional=True))
    config.output.append(_output(card, labels=False))
    config.instance_group.append(mc.ModelInstanceGroup(
        count=1, kind=mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU))
    config.model_transaction_policy.decoupled = False
    return config


def triton_repository_config(name: str, card: ModelCard, *,
                             max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                             queue_delay_us: int = DEFAULT_QUEUE_DELAY_US) -> mc.ModelConfig:
    """``config.pbtxt`` for NVIDIA Triton: ONNX Runtime backend, the FP32 input, dynamic batching,
    the newest version served, class labels for Triton's classification extension."""
    config = mc.ModelConfig(name=name, platform=PLATFORM, backend=BACKEND,
                            default_model_filename=MODEL_FILE)
    config.version_policy.latest.num_versions = 1
    _batching(config, max_batch_size, queue_delay_us)
    config.input.append(_pixels_input(card, optional=False))
    config.output.append(_output(card, labels=True))
    return config


def to_pbtxt(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def write_triton_files(model_dir: Path, card: ModelCard, **options: Any) -> Path:
    """Write ``model_dir/config.pbtxt`` and ``labels.txt`` (each replaced atomically) for the
    version ``card`` describes; returns the config's path."""
    model_dir = Path(model_dir)
    config = triton_repository_config(model_dir.name, card, **options)
    header = (f"# NVIDIA Triton configuration of {model_dir.name}, written by `training export` "
              f"for version {card.version}.\n# Input: preprocessed float32 NCHW RGB in [0, 1] "
              "(mean/std inside the graph). See docs/deploy.md.\n")
    _replace(model_dir / LABELS_FILE, "".join(f"{c}\n" for c in card.classes))
    return _replace(model_dir / CONFIG_FILE, header + to_pbtxt(config))


def _replace(path: Path, text: str) -> Path:
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    staging.write_text(text)
    os.replace(staging, path)
    return path


# ---- JSON, as Triton's HTTP endpoints write protobuf messages

_INT64_TYPES = {descriptor.FieldDescriptor.TYPE_INT64, descriptor.FieldDescriptor.TYPE_UINT64,
                descriptor.FieldDescriptor.TYPE_SINT64, descriptor.FieldDescriptor.TYPE_FIXED64,
                descriptor.FieldDescriptor.TYPE_SFIXED64}


def message_json(message: Any) -> dict[str, Any]:
    """The message as Triton's HTTP API writes it: field names as in the proto, every field
    (defaults too), 64-bit integers as JSON numbers (protobuf's JSON would quote them)."""
    document = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
    return _numbers(document, message.DESCRIPTOR)


def _numbers(document: dict[str, Any], desc: Any) -> dict[str, Any]:
    for f in desc.fields:
        if f.name not in document:
            continue
        value = document[f.name]
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            value_field = f.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                for key in value:
                    value[key] = _numbers(value[key], value_field.message_type)
        elif f.message_type is not None:
            if isinstance(value, list):
                document[f.name] = [_numbers(v, f.message_type) for v in value]
            else:
                document[f.name] = _numbers(value, f.message_type)
        elif f.type in _INT64_TYPES:
            document[f.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
    return document
