"""NVIDIA's tritonclient (grpc and http, unchanged) against our Open Inference Protocol servers.

Every test runs over both wires (the ``triton`` fixture); answers are compared with the core's own
``predict`` on the same images, and each error case is followed by a successful call.
"""

from __future__ import annotations

import numpy as np
import pytest
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

from service.imaging import TTASpec, decode_image, eval_view, to_model_input


def core_probabilities(serving: RunningServers, images: list[bytes], *,
                       tta: bool = False) -> np.ndarray:
    predictions = serving.run(serving.core.predict_batch(images, tta=tta))
    return np.stack([p.probabilities for p in predictions])


def assert_healthy(triton: TritonClient, images: list[bytes]) -> None:
    """A successful call: after an error the server still answers normally."""
    result = triton.infer([("image", "BYTES", image_tensor(images[:1]))])
    assert result.outputs["probabilities"].shape == (1, len(CLASSES))


def test_health_and_readiness(triton: TritonClient) -> None:
    assert triton.call("is_server_live") is True
    assert triton.call("is_server_ready") is True
    assert triton.call("is_model_ready", name=MODEL) is True
    assert triton.call("is_model_ready", name=MODEL, version=str(SERVED_VERSION)) is True
    assert triton.call("is_model_ready", name=MODEL, version="1") is False  # on disk, not served
    assert triton.call("is_model_ready", name="no-such-model") is False


def test_server_and_model_metadata(triton: TritonClient) -> None:
    server = triton.call("get_server_metadata")
    assert server["name"] == "tta-serve"
    assert {"classification", "binary_tensor_data"} <= set(server["extensions"])

    meta = triton.call("get_model_metadata", name=MODEL)
    assert meta["name"] == MODEL and meta["versions"] == [str(SERVED_VERSION)]
    # grpc's as_json renders int64 as strings
    shapes = {t["name"]: ([int(d) for d in t["shape"]], t["datatype"])
              for t in meta["inputs"] + meta["outputs"]}
    assert shapes == {"image": ([-1, 1], "BYTES"), "pixels": ([-1, 3, SIZE, SIZE], "FP32"),
                      "probabilities": ([-1, len(CLASSES)], "FP32")}
    assert triton.call("get_model_metadata", name=MODEL, version=str(SERVED_VERSION)) == meta


def test_bytes_batch_matches_core_predict(triton: TritonClient, serving: RunningServers,
                                          images: list[bytes]) -> None:
    result = triton.infer([("image", "BYTES", image_tensor(images))], request_id="r-17")
    probabilities = result.outputs["probabilities"]
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, len(CLASSES))
    np.testing.assert_allclose(probabilities, core_probabilities(serving, images), atol=1e-6)
    assert result.response["model_name"] == MODEL
    assert result.response["model_version"] == str(SERVED_VERSION)
    assert result.response["id"] == "r-17"


def test_bytes_with_batch_dimension_and_explicit_version(
        triton: TritonClient, serving: RunningServers, images: list[bytes]) -> None:
    """Triton users often send [N, 1] (a batching model with dims [1])."""
    result = triton.infer([("image", "BYTES", image_tensor(images).reshape(3, 1))],
                          version=str(SERVED_VERSION))
    np.testing.assert_allclose(result.outputs["probabilities"],
                               core_probabilities(serving, images), atol=1e-6)


def test_classification_extension(triton: TritonClient, serving: RunningServers,
                                  images: list[bytes]) -> None:
    result = triton.infer([("image", "BYTES", image_tensor(images))],
                          outputs=[{"name": "probabilities", "options": {"class_count": 2}}])
    strings = result.outputs["probabilities"]
    assert strings.shape == (3, 2)
    predictions = serving.run(serving.core.predict_batch(images, top_k=2))
    for row, prediction in zip(strings, predictions, strict=True):
        expected = [f"{c.probability:f}:{c.index}:{c.label}" for c in prediction.classes]
        assert [s.decode() for s in row] == expected
        score, index, label = row[0].decode().split(":")
        assert CLASSES[int(index)] == label and float(score) == pytest.approx(
            prediction.classes[0].probability, abs=1e-6)


def test_classification_asks_for_more_classes_than_exist(triton: TritonClient,
                                                         images: list[bytes]) -> None:
    result = triton.infer([("image", "BYTES", image_tensor(images[:1]))],
                          outputs=[{"name": "probabilities", "options": {"class_count": 50}}])
    assert result.outputs["probabilities"].shape == (1, len(CLASSES))


def test_tta_parameter(triton: TritonClient, serving: RunningServers, images: list[bytes]) -> None:
    result = triton.infer([("image", "BYTES", image_tensor(images))], parameters={"tta": True})
    with_tta = core_probabilities(serving, images, tta=True)
    np.testing.assert_allclose(result.outputs["probabilities"], with_tta, atol=1e-6)
    assert not np.allclose(with_tta, core_probabilities(serving, images), atol=1e-4)
    tta_views = result.response["parameters"]["tta_views"]
    assert int(tta_views.get("int64_param", 0) if isinstance(tta_views, dict) else tta_views) \
        == len(TTASpec().views)


def _parameter(response: dict, name: str) -> object:
    value = response["parameters"][name]
    if isinstance(value, dict):  # gRPC: an InferParameter's one field
        return next(iter(value.values()))
    return value


def test_auto_and_min_confidence_parameters(triton: TritonClient, serving: RunningServers,
                                            images: list[bytes]) -> None:
    """The fixture model has no auto threshold (exported before calibration): auto runs every
    view; min_confidence 1 makes every answer unsure; the outputs are unchanged (Triton's)."""
    result = triton.infer([("image", "BYTES", image_tensor(images))],
                          parameters={"tta": "auto", "min_confidence": 1.0})
    np.testing.assert_allclose(result.outputs["probabilities"],
                               core_probabilities(serving, images, tta=True), atol=1e-6)
    assert _parameter(result.response, "path") == ",".join(["tta"] * len(images))
    assert _parameter(result.response, "unsure") == ",".join(["true"] * len(images))
    assert _parameter(result.response, "tta_mode") == "auto"
    assert _parameter(result.response, "calibrated") in (False, "false")
    plain = triton.infer([("image", "BYTES", image_tensor(images[:1]))])
    assert _parameter(plain.response, "path") == "plain"
    assert _parameter(plain.response, "unsure") == "false"
    with pytest.raises(TritonError) as error:
        triton.infer([("image", "BYTES", image_tensor(images[:1]))],
                     parameters={"min_confidence": 2})
    assert error.value.status == "INVALID_ARGUMENT" and "min_confidence" in error.value.message


def test_fp32_pixels_match_bytes(triton: TritonClient, serving: RunningServers,
                                 images: list[bytes]) -> None:
    spec = serving.core.get_model(MODEL).eval_spec
    pixels = to_model_input(np.stack([eval_view(decode_image(b), spec) for b in images]))
    result = triton.infer([("pixels", "FP32", pixels)])
    np.testing.assert_allclose(result.outputs["probabilities"],
                               core_probabilities(serving, images), atol=1e-6)


def test_fp32_values_are_checked(triton: TritonClient, images: list[bytes]) -> None:
    """Non-finite values, and pixels on another scale (0-255, or mean/std-normalised)."""
    nan = np.full((2, 3, SIZE, SIZE), 0.5, np.float32)
    nan[1, 0, 3, 3] = np.nan
    scaled = np.full((1, 3, SIZE, SIZE), 200.0, np.float32)
    for pixels, expected in ((nan, "NaN"), (scaled, "[0, 1]")):
        with pytest.raises(TritonError) as error:
            triton.infer([("pixels", "FP32", pixels)])
        assert error.value.status == "INVALID_ARGUMENT" and expected in error.value.message
    assert_healthy(triton, images)


@pytest.mark.parametrize("model, version", [("no-such-model", ""), (MODEL, "7"), (MODEL, "1")])
def test_unknown_model_or_version_is_not_found(triton: TritonClient, images: list[bytes],
                                               model: str, version: str) -> None:
    with pytest.raises(TritonError) as error:
        triton.infer([("image", "BYTES", image_tensor(images[:1]))], model=model,
                     version=version)
    assert error.value.status == "NOT_FOUND"
    assert model in error.value.message
    with pytest.raises(TritonError) as error:
        triton.call("get_model_metadata", name=model, version=version)
    assert error.value.status == "NOT_FOUND"
    assert_healthy(triton, images)


def test_wrong_fp32_shape_names_the_expected_shape(triton: TritonClient,
                                                   images: list[bytes]) -> None:
    with pytest.raises(TritonError) as error:
        triton.infer([("pixels", "FP32", np.zeros((1, 3, SIZE + 4, SIZE + 4), np.float32))])
    assert error.value.status == "INVALID_ARGUMENT"
    assert f"[N, 3, {SIZE}, {SIZE}]" in error.value.message
    assert_healthy(triton, images)


def test_wrong_datatype_names_what_is_accepted(triton: TritonClient,
                                               images: list[bytes]) -> None:
    with pytest.raises(TritonError) as error:
        triton.infer([("pixels", "UINT8", np.zeros((1, 3, SIZE, SIZE), np.uint8))])
    assert error.value.status == "INVALID_ARGUMENT"
    assert "UINT8" in error.value.message and f"[N, 3, {SIZE}, {SIZE}]" in error.value.message
    assert_healthy(triton, images)


def test_wrong_bytes_shape(triton: TritonClient, images: list[bytes]) -> None:
    with pytest.raises(TritonError) as error:
        triton.infer([("image", "BYTES", image_tensor(images[:2]).reshape(1, 2))])
    assert error.value.status == "INVALID_ARGUMENT" and "[N]" in error.value.message
    assert_healthy(triton, images)


def test_undecodable_image_is_named_by_position(triton: TritonClient,
                                                images: list[bytes]) -> None:
    with pytest.raises(TritonError) as error:
        triton.infer([("image", "BYTES", image_tensor([images[0], b"not an image"]))])
    assert error.value.status == "INVALID_ARGUMENT"
    assert "image 1 of 2" in error.value.message
    assert_healthy(triton, images)


def test_unknown_output_and_bad_parameter(triton: TritonClient, images: list[bytes]) -> None:
    with pytest.raises(TritonError) as error:
        triton.infer([("image", "BYTES", image_tensor(images[:1]))],
                     outputs=[{"name": "logits"}])
    assert error.value.status == "INVALID_ARGUMENT" and "probabilities" in error.value.message
    with pytest.raises(TritonError) as error:
        triton.infer([("image", "BYTES", image_tensor(images[:1]))], parameters={"tta": "maybe"})
    assert error.value.status == "INVALID_ARGUMENT" and "tta" in error.value.message
    assert_healthy(triton, images)


def test_tta_with_fp32_explains_why_not(triton: TritonClient, images: list[bytes]) -> None:
    with pytest.raises(TritonError) as error:
        triton.infer([("pixels", "FP32", np.zeros((1, 3, SIZE, SIZE), np.float32))],
                     parameters={"tta": True})
    assert error.value.status == "INVALID_ARGUMENT" and "BYTES" in error.value.message
    assert_healthy(triton, images)
