"""The inference core on its own: predictions, TTA, batching, back-pressure, versions, errors."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from service_testkit import FixtureModel, core_config, publish, write_card

from service.core import (
    CoreError,
    DeviceUnavailable,
    InferenceCore,
    InvalidImage,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    Prediction,
    VersionPolicy,
)
from service.core.runtime import cuda_problem


@pytest.fixture(scope="module")
def core(digits_model: FixtureModel):
    core = InferenceCore.create(core_config(digits_model.repo_root)).start()
    yield core
    core.stop()


def test_predict_matches_the_offline_model(core: InferenceCore, digits_model: FixtureModel):
    async def run() -> list[Prediction]:
        return await asyncio.gather(*(core.predict(b, top_k=3) for b, _ in digits_model.valid[:40]))

    predictions = asyncio.run(run())
    for pred, probs in zip(predictions, digits_model.valid_probs[:40], strict=True):
        assert (pred.model, pred.version, pred.tta, pred.tta_views) == ("digits", 1, False, 1)
        assert len(pred.top) == 3
        assert pred.top[0].index == int(np.argmax(probs))
        np.testing.assert_allclose(pred.probabilities, probs, atol=1e-5)


def test_tta_uses_recorded_views_in_one_forward_pass(digits_model: FixtureModel):
    # Batching off: every forward pass holds one request, so rows/batches = views per request.
    with InferenceCore.create(core_config(digits_model.repo_root, max_batch_size=1)) as core:
        for image, label in digits_model.samples:
            pred = asyncio.run(core.predict(image, tta=True))
            assert pred.label == label and pred.tta and pred.tta_views == 6
        stats = core.stats.snapshot()["models"]["digits"]
        assert stats["batch_sizes"] == {1: len(digits_model.samples)}
        assert stats["rows"] == 6 * len(digits_model.samples)


def test_top_k_defaults_and_limits(core: InferenceCore, digits_model: FixtureModel):
    image = digits_model.samples[0][0]
    assert len(asyncio.run(core.predict(image, top_k=0)).top) == 5
    assert len(asyncio.run(core.predict(image, top_k=50)).top) == 10
    with pytest.raises(InvalidRequest, match="top_k must be >= 0"):
        asyncio.run(core.predict(image, top_k=-1))


def test_predict_batch_reports_errors_per_item(core: InferenceCore, digits_model: FixtureModel):
    images = [digits_model.samples[3][0], b"not an image", digits_model.samples[7][0], b""]
    results = asyncio.run(core.predict_batch(images))
    assert results[0].label == "3" and results[2].label == "7"
    assert isinstance(results[1], InvalidImage) and "not a recognised image" in str(results[1])
    assert isinstance(results[3], InvalidImage) and "empty" in str(results[3])


def test_concurrent_requests_are_batched(core: InferenceCore, digits_model: FixtureModel):
    before = core.stats.batch_sizes("digits")

    async def run() -> list[Prediction]:
        return await asyncio.gather(*(core.predict(b) for b, _ in digits_model.valid[:64]))

    predictions = asyncio.run(run())
    assert [p.top[0].index for p in predictions] == digits_model.valid_pred[:64].tolist()
    formed = core.stats.batch_sizes("digits") - before
    assert max(formed) > 1, f"no batch larger than one formed: {formed}"


def test_unknown_model_and_version(core: InferenceCore, digits_model: FixtureModel):
    image = digits_model.samples[0][0]
    with pytest.raises(ModelNotFound, match="'cats' is not served"):
        asyncio.run(core.predict(image, model="cats"))
    with pytest.raises(ModelNotFound, match="version 9 is not served"):
        asyncio.run(core.predict(image, version=9))


def test_overloaded_when_the_queue_is_full(digits_model: FixtureModel):
    with InferenceCore.create(core_config(digits_model.repo_root, max_pending=1)) as core:
        images = [b for b, _ in digits_model.samples[:3]]
        results = asyncio.run(core.predict_batch(images))
        assert results[0].label == "0"
        assert all(isinstance(r, Overloaded) and "--max-pending" in str(r) for r in results[1:])
        assert asyncio.run(core.predict(images[1])).label == "1"  # and it recovers


def test_image_limits_name_their_flags(core: InferenceCore):
    from PIL import Image

    with pytest.raises(CoreError, match="--max-image-bytes"):
        asyncio.run(core.predict(b"\0" * (core.config.max_image_bytes + 1)))
    big = Image.new("L", (1100, 1000))
    import io

    buf = io.BytesIO()
    big.save(buf, format="PNG")
    with pytest.raises(CoreError, match="--max-pixels") as info:
        asyncio.run(core.predict(buf.getvalue()))
    assert info.value.kind == "image_too_large"


def test_evaluate_reproduces_recorded_metrics(core: InferenceCore, digits_model: FixtureModel):
    for tta, key in ((False, "accuracy"), (True, "tta_accuracy")):
        result = asyncio.run(core.evaluate(iter(digits_model.valid), tta=tta))
        assert result.report.n == len(digits_model.valid) == int(result.report.confusion.sum())
        assert result.report.accuracy == pytest.approx(digits_model.card.metrics[key],
                                                       abs=1.5 / result.report.n)
        assert result.png.startswith(b"\x89PNG")


def test_evaluate_rejects_unknown_labels(core: InferenceCore, digits_model: FixtureModel):
    items = [digits_model.valid[0], (digits_model.valid[1][0], "eleven")]
    with pytest.raises(InvalidRequest, match="item 1: label 'eleven' is not a class"):
        asyncio.run(core.evaluate(items))


def test_pinned_version_survives_a_hot_reload(repo_copy: Path, digits_model: FixtureModel):
    image = digits_model.samples[4][0]
    with InferenceCore.create(core_config(repo_copy)) as core:

        async def run() -> tuple[Prediction, Prediction]:
            with core.pin() as old:
                publish(repo_copy, digits_model.onnx_path.read_bytes(), version=2)
                assert await asyncio.to_thread(core.reload) == ["digits v1 -> v2"]
                new = await core.predict(image)
                return await old.predict(image), new

        on_old, on_new = asyncio.run(run())
        assert (on_old.version, on_new.version) == (1, 2)
        assert core.get_model().version == 2


def test_broken_version_is_refused_and_old_keeps_serving(
    repo_copy: Path, digits_model: FixtureModel, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="service.core")
    with InferenceCore.create(core_config(repo_copy)) as core:
        publish(repo_copy, digits_model.logits_onnx, version=2)  # valid files, logits out
        broken = repo_copy / "digits" / "3"  # garbage graph, written around publish()
        broken.mkdir()
        (broken / "model.onnx").write_bytes(b"this is no onnx graph")

        write_card(broken, version=3, metrics={})
        assert core.reload() == []
        assert core.reload() == []  # refused versions are not retried until they change
        refusals = [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]
        assert len(refusals) == 2, refusals
        assert "refusing digits v3" in refusals[0] and "not a readable ONNX graph" in refusals[0]
        assert "refusing digits v2" in refusals[1] and "not probabilities" in refusals[1]
        assert all("still serving digits v1" in r for r in refusals)
        assert asyncio.run(core.predict(digits_model.samples[2][0])).version == 1


def test_pinned_policy_ignores_newer_versions(repo_copy: Path, digits_model: FixtureModel):
    publish(repo_copy, digits_model.onnx_path.read_bytes(), version=2)
    config = core_config(repo_copy, version_policy=VersionPolicy.parse("pinned:1"))
    with InferenceCore.create(config) as core:
        assert core.get_model().version == 1
        assert core.reload() == []
    with pytest.raises(ModelNotFound, match="has no version 5"):
        InferenceCore.create(core_config(
            repo_copy, version_policy=VersionPolicy.parse("pinned:5"))).start()


def test_ready_follows_the_lifecycle(digits_model: FixtureModel):
    core = InferenceCore.create(core_config(digits_model.repo_root))
    assert not core.ready
    core.start()
    assert core.ready
    core.stop()
    assert not core.ready


def test_missing_default_model_refuses_to_start(tmp_path: Path):
    with pytest.raises(ModelNotFound, match="no versions in"):
        InferenceCore.create(core_config(tmp_path)).start()


@pytest.mark.skipif(cuda_problem() is None, reason="CUDA is usable on this machine")
def test_device_cuda_without_gpu_refuses(digits_model: FixtureModel):
    with pytest.raises(DeviceUnavailable, match="--device cuda was requested"):
        InferenceCore.create(core_config(digits_model.repo_root, device="cuda")).start()


def test_poller_picks_up_a_new_version(repo_copy: Path, digits_model: FixtureModel):
    with InferenceCore.create(core_config(repo_copy, poll_interval_s=0.1)) as core:
        publish(repo_copy, digits_model.onnx_path.read_bytes(), version=2)
        deadline = time.monotonic() + 10
        while core.get_model().version != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert core.get_model().version == 2


def test_prometheus_collector_exposes_batch_sizes(core: InferenceCore):
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(core.stats.prometheus_collector())
    text = generate_latest(registry).decode()
    assert 'tta_serve_batch_size_bucket{le="1.0",model="digits"}' in text
    assert "tta_serve_requests_total" in text and "tta_serve_pending_requests" in text
