"""Our protocol definitions against NVIDIA Triton's own, as tritonclient ships them, and the
config.pbtxt we write parsed as Triton's ModelConfig.

Triton's generated messages (tritonclient.grpc) and ours share the ``inference`` package, so they
cannot be imported into one process: Triton's side runs in a child process, which gets our
descriptors as serialized FileDescriptorProtos.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest
from oip_testkit import CLASSES, MODEL, SIZE, publish_versions

from service._proto.inference import grpc_predict_v2_pb2, model_config_pb2
from service.model_repository import ModelRepository
from service.oip.model_config import write_triton_files

REPO_ROOT = Path(__file__).resolve().parents[2]

TRITON_SIDE = r"""
import base64, json, sys
from google.protobuf import descriptor_pb2, json_format, text_format
from tritonclient.grpc import model_config_pb2, service_pb2

request = json.load(sys.stdin)


def collect(file_proto):
    messages, enums, methods = {}, {}, {}
    prefix = "." + file_proto.package

    def walk(message, name):
        messages[name] = message
        for enum in message.enum_type:
            enums[name + "." + enum.name] = enum
        for nested in message.nested_type:
            walk(nested, name + "." + nested.name)

    for message in file_proto.message_type:
        walk(message, prefix + "." + message.name)
    for enum in file_proto.enum_type:
        enums[prefix + "." + enum.name] = enum
    for service in file_proto.service:
        for method in service.method:
            methods[prefix + "." + service.name + "/" + method.name] = method
    return messages, enums, methods


theirs = [{}, {}, {}]
for module in (service_pb2, model_config_pb2):
    file_proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(file_proto)
    for table, found in zip(theirs, collect(file_proto)):
        table.update(found)
ours = [{}, {}, {}]
for blob in request["files"]:
    file_proto = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(blob))
    for table, found in zip(ours, collect(file_proto)):
        table.update(found)

problems, compared = [], 0
for name, message in ours[0].items():
    other = theirs[0].get(name)
    if other is None:
        problems.append(f"message {name}: not in Triton's protos")
        continue
    their_fields = {f.name: f for f in other.field}
    for field in message.field:
        compared += 1
        theirs_f = their_fields.get(field.name)
        if theirs_f is None:
            problems.append(f"{name}.{field.name}: Triton has no such field")
            continue
        for attribute in ("number", "type", "label", "type_name"):
            if getattr(field, attribute) != getattr(theirs_f, attribute):
                problems.append(f"{name}.{field.name}: {attribute} {getattr(field, attribute)!r}"
                                f" != Triton's {getattr(theirs_f, attribute)!r}")
        in_oneof = field.HasField("oneof_index")
        if in_oneof != theirs_f.HasField("oneof_index") or (in_oneof and (
                message.oneof_decl[field.oneof_index].name
                != other.oneof_decl[theirs_f.oneof_index].name)):
            problems.append(f"{name}.{field.name}: oneof differs from Triton's")
for name, enum in ours[1].items():
    other = theirs[1].get(name)
    if other is None:
        problems.append(f"enum {name}: not in Triton's protos")
        continue
    their_values = {v.name: v.number for v in other.value}
    for value in enum.value:
        compared += 1
        if their_values.get(value.name) != value.number:
            problems.append(f"{name}.{value.name} = {value.number}: Triton has "
                            f"{their_values.get(value.name)}")
for name, method in ours[2].items():
    other = theirs[2].get(name)
    compared += 1
    if other is None:
        problems.append(f"rpc {name}: not in Triton's service")
    elif (method.input_type, method.output_type, method.client_streaming,
          method.server_streaming) != (other.input_type, other.output_type,
                                       other.client_streaming, other.server_streaming):
        problems.append(f"rpc {name}: signature differs from Triton's")

configs = [json_format.MessageToDict(text_format.Parse(text, model_config_pb2.ModelConfig()),
                                     preserving_proto_field_name=True)
           for text in request["pbtxt"]]
json.dump({"problems": problems, "compared": compared, "configs": configs}, sys.stdout)
"""


def triton_side(pbtxt: list[str]) -> dict[str, Any]:
    files = [base64.b64encode(module.DESCRIPTOR.serialized_pb).decode()
             for module in (grpc_predict_v2_pb2, model_config_pb2)]
    done = subprocess.run([sys.executable, "-c", TRITON_SIDE], capture_output=True, text=True,
                          input=json.dumps({"files": files, "pbtxt": pbtxt}), timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_message_field_enum_and_rpc_is_tritons() -> None:
    answer = triton_side([])
    assert answer["problems"] == []
    # Not vacuous: the ModelConfig, statistics and repository messages, the inference ones, the
    # enums and the 11 RPCs were all compared.
    assert answer["compared"] > 150, answer["compared"]
    rpcs = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    assert {"ModelConfig", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad",
            "RepositoryModelUnload", "ModelInfer"} <= {m.name for m in rpcs}


def _graph_io(onnx_path: Path) -> tuple[list[int], list[int]]:
    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def dims(value: Any) -> list[int]:
        return [d.dim_value for d in value.type.tensor_type.shape.dim]

    return dims(graph.input[0]), dims(graph.output[0])


def check_triton_config(config: dict[str, Any], folder: Path) -> None:
    """``config`` (Triton's ModelConfig as JSON) agrees with the newest version in ``folder``:
    its model.json and its ONNX graph, and the labels file holds the classes in output order."""
    version = ModelRepository(folder.parent).resolve(folder.name)
    card = version.card
    graph_in, graph_out = _graph_io(version.onnx_path)
    assert config["name"] == folder.name
    assert config["platform"] == "onnxruntime_onnx" and config["backend"] == "onnxruntime"
    assert config["default_model_filename"] == version.onnx_path.name
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert config["max_batch_size"] == 32
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 2000
    (pixels,) = config["input"]
    assert pixels["name"] == card.input_name
    assert pixels["data_type"] == "TYPE_FP32" and pixels["format"] == "FORMAT_NCHW"
    assert [int(d) for d in pixels["dims"]] == [3, card.input_size, card.input_size]
    assert [int(d) for d in pixels["dims"]] == graph_in[1:]  # the graph's batch axis is dynamic
    assert graph_in[0] == 0
    (output,) = config["output"]
    assert output["name"] == card.output_name and output["data_type"] == "TYPE_FP32"
    assert [int(d) for d in output["dims"]] == [len(card.classes)] == graph_out[1:]
    labels = (folder / output["label_filename"]).read_text().splitlines()
    assert labels == list(card.classes)


def test_config_pbtxt_is_tritons_model_config_and_agrees_with_the_model(tmp_path: Path) -> None:
    root = publish_versions(tmp_path)
    written = write_triton_files(root / MODEL, ModelRepository(root).resolve(MODEL).card)
    assert written == root / MODEL / "config.pbtxt"
    (config,) = triton_side([written.read_text()])["configs"]
    check_triton_config(config, root / MODEL)
    assert (root / MODEL / "labels.txt").read_text().splitlines() == list(CLASSES)
    assert [int(d) for d in config["input"][0]["dims"]] == [3, SIZE, SIZE]
    # The repository still lists only the versions (Triton's files sit beside them).
    assert ModelRepository(root).versions(MODEL) == [1, 2]


def test_bundled_models_have_a_triton_config() -> None:
    folders = [p.parent for p in sorted((REPO_ROOT / "models").glob("*/config.pbtxt"))]
    names = ModelRepository(REPO_ROOT / "models").model_names()
    if not names:
        pytest.fail("no bundled models under models/")
    assert [f.name for f in folders] == names, "run training export (or make_default_model.sh)"
    configs = triton_side([(f / "config.pbtxt").read_text() for f in folders])["configs"]
    for config, folder in zip(configs, folders, strict=True):
        check_triton_config(config, folder)
