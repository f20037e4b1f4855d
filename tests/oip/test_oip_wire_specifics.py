"""What only one wire has: gRPC shares its port with Classifier and takes typed contents; HTTP
takes JSON tensors, the binary extension both ways, and compressed requests."""

from __future__ import annotations

import base64
import gzip
import json

import grpc
import httpx
import numpy as np
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from oip_testkit import (
    CLASSES,
    MODEL,
    SERVED_VERSION,
    SIZE,
    RunningServers,
    TritonClient,
    TritonError,
    image_tensor,
)

from service._proto.tta_serve.v1 import classifier_pb2 as pb
from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc

# ---- gRPC


def test_classifier_and_oip_share_one_port(serving: RunningServers, grpc_client: TritonClient,
                                           images: list[bytes]) -> None:
    oip = grpc_client.infer([("image", "BYTES", image_tensor(images))])
    with grpc.insecure_channel(serving.grpc_address) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        for image, row in zip(images, oip.outputs["probabilities"], strict=True):
            answer = stub.Predict(pb.PredictRequest(image=image, top_k=len(CLASSES)))
            ours = np.zeros(len(CLASSES), np.float32)
            for score in answer.classes:
                ours[score.index] = score.probability
            np.testing.assert_allclose(row, ours, atol=1e-6)
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "inference.GRPCInferenceService" in services
    assert "tta_serve.v1.Classifier" in services


def test_grpc_typed_contents(serving: RunningServers, grpc_client: TritonClient,
                             images: list[bytes]) -> None:
    """Inputs in InferTensorContents instead of raw_input_contents (tritonclient sends raw)."""
    request = {
        "model_name": MODEL,
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                    "contents": {"bytes_contents": [base64.b64encode(b).decode()
                                                    for b in images]}}],
    }
    answer = grpc_client.call("typed_infer", request=request)
    assert answer["model_version"] == str(SERVED_VERSION)
    probabilities = np.frombuffer(
        base64.b64decode(answer["outputs"]["probabilities"]["b64"]), "<f4")
    expected = serving.run(serving.core.predict_batch(images))
    np.testing.assert_allclose(probabilities.reshape(len(images), -1),
                               np.stack([p.probabilities for p in expected]), atol=1e-6)


# ---- HTTP


def test_http_json_outputs(http_client: TritonClient, images: list[bytes]) -> None:
    """binary_data=False: tensors come back as JSON "data" (numbers, and strings)."""
    binary = http_client.infer([("image", "BYTES", image_tensor(images))])
    as_json = http_client.infer(
        [("image", "BYTES", image_tensor(images))],
        outputs=[{"name": "probabilities", "options": {"binary_data": False}}])
    assert "data" in as_json.response["outputs"][0]
    np.testing.assert_array_equal(as_json.outputs["probabilities"],
                                  binary.outputs["probabilities"])
    strings = http_client.infer(
        [("image", "BYTES", image_tensor(images))],
        outputs=[{"name": "probabilities", "options": {"binary_data": False, "class_count": 3}}])
    assert strings.outputs["probabilities"].shape == (3, 3)
    assert strings.response["outputs"][0]["data"][0].count(":") == 2


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_http_compressed_request(http_client: TritonClient, images: list[bytes],
                                 algorithm: str) -> None:
    plain = http_client.infer([("image", "BYTES", image_tensor(images))])
    compressed = http_client.infer([("image", "BYTES", image_tensor(images))],
                                   request_compression_algorithm=algorithm,
                                   response_compression_algorithm=algorithm)
    np.testing.assert_array_equal(compressed.outputs["probabilities"],
                                  plain.outputs["probabilities"])


def test_http_fp32_as_json(http_client: TritonClient, serving: RunningServers,
                           images: list[bytes]) -> None:
    from service.imaging import decode_image, eval_view, to_model_input

    spec = serving.core.get_model(MODEL).eval_spec
    pixels = to_model_input(np.stack([eval_view(decode_image(b), spec) for b in images]))
    as_json = http_client.infer([("pixels", "FP32", pixels)], binary_inputs=False)
    binary = http_client.infer([("image", "BYTES", image_tensor(images))])
    np.testing.assert_allclose(as_json.outputs["probabilities"],
                               binary.outputs["probabilities"], atol=1e-6)


def test_http_fp32_json_shape_is_checked(http_client: TritonClient) -> None:
    with pytest.raises(TritonError) as error:
        http_client.infer([("pixels", "FP32", np.zeros((1, 3, SIZE, 2), np.float32))],
                          binary_inputs=False)
    assert error.value.status == "INVALID_ARGUMENT"
    assert f"[N, 3, {SIZE}, {SIZE}]" in error.value.message


def test_http_malformed_requests_get_json_errors(serving: RunningServers,
                                                 images: list[bytes]) -> None:
    url = f"http://{serving.http_address}/v2/models/{MODEL}"
    with httpx.Client(timeout=30) as client:
        bad_json = client.post(f"{url}/infer", content=b"{not json")
        assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]
        head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                       "parameters": {"binary_data_size": 10**6}}]}).encode()
        short = client.post(f"{url}/infer", content=head + b"1234",
                            headers={"Inference-Header-Content-Length": str(len(head))})
        assert short.status_code == 400 and "binary_data_size" in short.json()["error"]
        unknown = client.get(f"http://{serving.http_address}/v2/models/nope/ready")
        assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
        bad_encoding = client.post(f"{url}/infer", content=gzip.compress(b"{}"),
                                   headers={"Content-Encoding": "br"})
        assert bad_encoding.status_code == 400 and "gzip" in bad_encoding.json()["error"]
        ok = client.get(f"http://{serving.http_address}/v2/models/{MODEL}/versions/"
                        f"{SERVED_VERSION}/ready")
        assert ok.status_code == 200 and ok.json()["ready"] is True


def _binary_image_request(image: bytes, parameters: dict,
                          outputs: list | None = None) -> tuple[bytes, dict[str, str]]:
    """An infer body with one image in the binary tensor data extension, and its headers."""
    blob = len(image).to_bytes(4, "little") + image
    document: dict = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                  "parameters": {"binary_data_size": len(blob)}}],
                      "parameters": parameters}
    if outputs is not None:
        document["outputs"] = outputs
    head = json.dumps(document).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


@pytest.mark.parametrize(("parameters", "outputs", "binary"), [
    ({"binary_data_output": "false"}, None, False),
    ({"binary_data_output": False}, None, False),
    ({"binary_data_output": "true"}, None, True),
    ({"binary_data_output": True}, [{"name": "probabilities",
                                     "parameters": {"binary_data": "false"}}], False),
    ({}, [{"name": "probabilities", "parameters": {"binary_data": "true"}}], True),
])
def test_http_binary_output_switches_read_false_strings_as_false(
        serving: RunningServers, images: list[bytes], parameters: dict, outputs: list | None,
        binary: bool) -> None:
    body, headers = _binary_image_request(images[0], parameters, outputs)
    with httpx.Client(timeout=30) as client:
        answer = client.post(f"http://{serving.http_address}/v2/models/{MODEL}/infer",
                             content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert ("Inference-Header-Content-Length" in answer.headers) == binary
    if not binary:
        (output,) = answer.json()["outputs"]
        assert "data" in output and len(output["data"]) == len(CLASSES)


def test_http_binary_output_switch_must_be_a_boolean(serving: RunningServers,
                                                      images: list[bytes]) -> None:
    body, headers = _binary_image_request(images[0], {"binary_data_output": "sometimes"})
    with httpx.Client(timeout=30) as client:
        answer = client.post(f"http://{serving.http_address}/v2/models/{MODEL}/infer",
                             content=body, headers=headers)
    assert answer.status_code == 400
    assert "binary_data_output" in answer.json()["error"]


@pytest.mark.parametrize(("element", "shown"), [
    (50_000_000, "int 50000000"),  # bytes(50000000) would be a 50 MB buffer of zeros
    ({"b64": "iVBORw0K"}, "dict {'b64': 'iVBORw0K'}"),  # was HTTP 500
    (None, "NoneType None"),
    (True, "bool True"),
])
def test_http_json_bytes_elements_must_be_strings(serving: RunningServers, element: object,
                                                  shown: str) -> None:
    document = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                            "data": ["not an image", element]}]}
    with httpx.Client(timeout=30) as client:
        answer = client.post(f"http://{serving.http_address}/v2/models/{MODEL}/infer",
                             json=document)
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]
    assert "input 'image'" in message and f"BYTES element 1 is {shown}" in message
