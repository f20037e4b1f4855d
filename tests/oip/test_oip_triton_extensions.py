"""Triton's extensions through NVIDIA's tritonclient (grpc and http, unchanged): model
configuration, statistics, the repository index and model control.

The statistics test counts: every request it makes is in the server's counters, exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from oip_testkit import (
    CLASSES,
    MODEL,
    SERVED_VERSION,
    SIZE,
    TritonClient,
    TritonError,
    image_tensor,
    make_image,
    publish_versions,
)

from service.core import CoreConfig, InferenceCore
from service.model_repository import MODEL_FILE
from service.oip.core_adapter import EXTENSIONS, OipAdapter

# Both servers of the session fixture run CoreConfig's batching defaults.
DEFAULTS = CoreConfig(models_dir=Path("."))


def _int(value: Any) -> int:
    """gRPC's JSON writes 64-bit integers as strings; HTTP as numbers; absent means 0."""
    return int(value or 0)


def _duration(stats: dict, key: str) -> tuple[int, int]:
    d = stats.get("inference_stats", {}).get(key, {})
    return _int(d.get("count")), _int(d.get("ns"))


def _model_stats(triton: TritonClient, **kwargs: Any) -> dict[str, dict]:
    answer = triton.call("get_inference_statistics", **kwargs)
    return {f"{s['name']}/{s['version']}": s for s in answer.get("model_stats", [])}


def _index(triton: TritonClient) -> list[dict]:
    answer = triton.call("get_model_repository_index")
    models = answer["models"] if isinstance(answer, dict) else answer  # grpc: a message
    return sorted(({"name": m["name"], "version": m["version"], "state": m["state"],
                    "reason": m.get("reason", "")} for m in models),
                  key=lambda m: (m["name"], int(m["version"])))


def test_server_metadata_lists_exactly_the_extensions(triton: TritonClient) -> None:
    assert triton.call("get_server_metadata")["extensions"] == list(EXTENSIONS)
    assert {"model_configuration", "statistics"} <= set(EXTENSIONS)


def test_model_config(triton: TritonClient) -> None:
    answer = triton.call("get_model_config", name=MODEL)
    config = answer.get("config", answer)  # grpc wraps it in ModelConfigResponse
    assert config["name"] == MODEL
    assert config["platform"] == "onnxruntime_onnx" and config["backend"] == "onnxruntime"
    assert _int(config["max_batch_size"]) == DEFAULTS.max_batch_size
    assert _int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == round(
        DEFAULTS.max_wait_ms * 1000)
    assert _int(config["version_policy"]["latest"]["num_versions"]) == 1
    inputs = {i["name"]: i for i in config["input"]}
    assert set(inputs) == {"image", "pixels"}
    assert inputs["image"]["data_type"] == "TYPE_STRING"
    assert [_int(d) for d in inputs["image"]["dims"]] == [1]
    assert inputs["pixels"]["data_type"] == "TYPE_FP32"
    assert inputs["pixels"]["format"] == "FORMAT_NCHW"
    assert [_int(d) for d in inputs["pixels"]["dims"]] == [3, SIZE, SIZE]
    assert inputs["image"]["optional"] is True and inputs["pixels"]["optional"] is True
    (output,) = config["output"]
    assert output["name"] == "probabilities" and output["data_type"] == "TYPE_FP32"
    assert [_int(d) for d in output["dims"]] == [len(CLASSES)]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"

    again = triton.call("get_model_config", name=MODEL, version=str(SERVED_VERSION))
    assert again == answer
    with pytest.raises(TritonError) as e:
        triton.call("get_model_config", name=MODEL, version="1")  # on disk, not served
    assert e.value.status == "NOT_FOUND"
    with pytest.raises(TritonError) as e:
        triton.call("get_model_config", name="no-such-model")
    assert e.value.status == "NOT_FOUND"


def test_statistics_count_exactly_the_requests_served(triton: TritonClient,
                                                       images: list[bytes]) -> None:
    key = f"{MODEL}/{SERVED_VERSION}"
    before = _model_stats(triton, name=MODEL)[key]

    # 3 successful requests (1 + 3 + 2 images: 6 inferences) and 1 failed one.
    pixels = np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32)
    triton.infer([("image", "BYTES", image_tensor(images[:1]))])
    triton.infer([("image", "BYTES", image_tensor(images))])
    triton.infer([("pixels", "FP32", pixels)])
    with pytest.raises(TritonError):
        triton.infer([("image", "BYTES", image_tensor([b"not an image"]))])

    after = _model_stats(triton, name=MODEL)[key]
    assert after["name"] == MODEL and after["version"] == str(SERVED_VERSION)

    def delta(name: str) -> tuple[int, int]:
        (c0, n0), (c1, n1) = _duration(before, name), _duration(after, name)
        return c1 - c0, n1 - n0

    assert delta("success")[0] == 3
    assert delta("fail")[0] == 1
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert delta(stage)[0] == 3, stage  # one per successful request
    assert delta("success")[1] > 0 and delta("compute_infer")[1] > 0
    assert delta("success")[1] >= delta("compute_infer")[1]
    assert _int(after.get("inference_count")) - _int(before.get("inference_count")) == 6
    # Forward passes: as many as the per-batch-size counts say, covering every image inferred
    # (the failed image never reached one).
    passes = _int(after.get("execution_count")) - _int(before.get("execution_count"))
    assert 1 <= passes <= 6

    def batches(stats: dict) -> dict[int, int]:
        return {_int(b["batch_size"]): _int(b["compute_infer"]["count"])
                for b in stats.get("batch_stats", [])}

    b0, b1 = batches(before), batches(after)
    grown = {size: b1[size] - b0.get(size, 0) for size in b1 if b1[size] != b0.get(size, 0)}
    assert sum(grown.values()) == passes
    assert sum(size * n for size, n in grown.items()) == 6
    last = _int(after.get("last_inference"))  # ms since the epoch
    assert last >= _int(before.get("last_inference")) and last > 1_700_000_000_000

    # All models, and one version, give the same entry; an unknown model is NOT_FOUND.
    assert _model_stats(triton)[key] == after
    assert _model_stats(triton, name=MODEL, version=str(SERVED_VERSION))[key] == after
    with pytest.raises(TritonError) as e:
        triton.call("get_inference_statistics", name="no-such-model")
    assert e.value.status == "NOT_FOUND"


def test_repository_index(triton: TritonClient) -> None:
    index = _index(triton)
    assert [(m["name"], m["version"], m["state"]) for m in index] == [
        (MODEL, "1", "UNAVAILABLE"), (MODEL, str(SERVED_VERSION), "READY")]
    assert f"version {SERVED_VERSION} is served" in index[0]["reason"]
    assert index[1]["reason"] == ""


def test_model_control_load_scans_unload_is_refused(triton: TritonClient,
                                                    images: list[bytes]) -> None:
    triton.call("load_model", name=MODEL)  # a scan now: nothing changed, still served
    assert triton.call("is_model_ready", name=MODEL, version=str(SERVED_VERSION)) is True
    with pytest.raises(TritonError) as e:
        triton.call("load_model", name="no-such-model")
    assert e.value.status == "NOT_FOUND"
    with pytest.raises(TritonError) as e:
        triton.call("unload_model", name=MODEL)
    assert e.value.status == "UNIMPLEMENTED" and "version policy" in e.value.message
    result = triton.infer([("image", "BYTES", image_tensor(images[:1]))])
    assert result.outputs["probabilities"].shape == (1, len(CLASSES))


def test_index_says_why_a_version_is_refused_and_load_serves_a_new_one(tmp_path: Path) -> None:
    """In-process: a broken newest version is UNAVAILABLE with the reason; after a good one is
    published, RepositoryModelLoad serves it without waiting for the poller."""
    import asyncio

    root = publish_versions(tmp_path, versions=(1, 2))
    (root / MODEL / "2" / MODEL_FILE).write_bytes(b"not onnx")  # sha256 no longer matches
    core = InferenceCore.create(CoreConfig(models_dir=root, default_model=MODEL, device="cpu",
                                           intra_op_threads=1, poll_interval_s=0)).start()
    try:
        adapter = OipAdapter(core)
        index = {m.version: m for m in adapter.repository_index().models}
        assert index["1"].state == "READY"
        assert index["2"].state == "UNAVAILABLE" and index["2"].reason.startswith("refused:")
        assert "sha256" in index["2"].reason
        assert [m.version for m in adapter.repository_index(ready_only=True).models] == ["1"]

        publish_versions(root, versions=(3,))
        assert index_state(adapter, "3") == "UNAVAILABLE"  # not scanned yet
        asyncio.run(adapter.load_model(MODEL))
        assert index_state(adapter, "3") == "READY" and index_state(adapter, "1") == "UNAVAILABLE"
        prediction = asyncio.run(core.predict(make_image(1)))
        assert prediction.version == 3
        stats = {(s.name, s.version): s for s in adapter.model_statistics(MODEL).model_stats}
        assert stats[(MODEL, "3")].inference_count == 1
        assert stats[(MODEL, "3")].inference_stats.success.count == 1
    finally:
        core.stop()


def index_state(adapter: OipAdapter, version: str) -> str:
    return {m.version: m.state for m in adapter.repository_index().models}[version]
