"""The inference core on its own: predictions, TTA, batching, back-pressure, versions, errors,
and preprocessed pixels (predict_pixels)."""

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
from service.core.batcher import DynamicBatcher
from service.core.runtime import cuda_problem
from service.core.stats import CoreStats
from service.imaging import decode_image, stack_views


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
        assert (pred.model, pred.model_version, pred.tta, pred.tta_views) == ("digits", 1, False, 1)
        assert len(pred.classes) == 3
        assert pred.classes[0].index == int(np.argmax(probs))
        assert pred.top is pred.classes and pred.version == pred.model_version  # older names
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
    assert len(asyncio.run(core.predict(image, top_k=0)).classes) == 5
    assert len(asyncio.run(core.predict(image, top_k=50)).classes) == 10
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
    assert [p.classes[0].index for p in predictions] == digits_model.valid_pred[:64].tolist()
    formed = core.stats.batch_sizes("digits") - before
    assert max(formed) > 1, f"no batch larger than one formed: {formed}"


def test_unknown_model_and_version(core: InferenceCore, digits_model: FixtureModel):
    image = digits_model.samples[0][0]
    with pytest.raises(ModelNotFound, match="'cats' is not served"):
        asyncio.run(core.predict(image, model="cats"))
    with pytest.raises(ModelNotFound, match="version 9 is not served"):
        asyncio.run(core.predict(image, version=9))


def test_empty_name_and_version_zero_mean_the_default(core: InferenceCore,
                                                      digits_model: FixtureModel):
    # the protobuf/form defaults reach the core as they come: it alone reads them as "unset"
    image = digits_model.samples[0][0]
    default = core.get_model()
    assert core.get_model("", 0) == default
    answer = asyncio.run(core.predict(image, model="", version=0))
    assert (answer.model, answer.model_version) == (default.name, default.version)
    with core.pin("", 0) as pinned:
        assert (pinned.name, pinned.version) == (default.name, default.version)


def test_overloaded_when_the_queue_is_full(digits_model: FixtureModel):
    with InferenceCore.create(core_config(digits_model.repo_root, max_pending=1)) as core:
        images = [b for b, _ in digits_model.samples[:3]]

        async def three_requests() -> list:
            return await asyncio.gather(*(core.predict(im) for im in images),
                                        return_exceptions=True)

        results = asyncio.run(three_requests())
        assert results[0].label == "0"
        assert all(isinstance(r, Overloaded) and "--max-pending" in str(r) for r in results[1:])
        assert asyncio.run(core.predict(images[1])).label == "1"  # and it recovers


def test_a_batch_is_one_request_however_many_images(digits_model: FixtureModel):
    """A batch larger than --max-pending is served on an idle server (KServe batches may be
    large), counts once against the limit, and reports each image's outcome."""
    images = [b for b, _ in digits_model.valid[:12]] + [b"not an image"]
    with InferenceCore.create(core_config(digits_model.repo_root, max_pending=1,
                                          max_batch_size=4)) as core:
        async def batch_and_one() -> list:
            return await asyncio.gather(core.predict_batch(images), core.predict(images[0]),
                                        return_exceptions=True)

        results, refused = asyncio.run(batch_and_one())
        assert isinstance(refused, Overloaded)  # the batch holds the one slot
        assert [r.classes[0].index for r in results[:12]] == digits_model.valid_pred[:12].tolist()
        assert isinstance(results[12], InvalidImage)
        stats = core.stats.snapshot()
        assert stats["requests"] == {"digits/ok": 12, "digits/invalid_image": 1,
                                     "digits/overloaded": 1}
        assert max(stats["models"]["digits"]["batch_sizes"]) <= 4
        assert core.pending == 0


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
        n = result.report.n  # the same images right as training counted (no slack)
        assert round(result.report.accuracy * n) == round(digits_model.card.metrics[key] * n)
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
        assert (on_old.model_version, on_new.model_version) == (1, 2)
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
        assert asyncio.run(core.predict(digits_model.samples[2][0])).model_version == 1


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
        InferenceCore.create(core_config(tmp_path, default_model="digits")).start()
    with pytest.raises(ModelNotFound, match="holds no model"):
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


# ---- preprocessed pixels (the Open Inference Protocol's FP32 input)


def _pixels(images: list[bytes], spec) -> np.ndarray:
    """The model input the way a client preprocesses it: service.imaging, no TTA."""
    return stack_views([decode_image(b) for b in images], spec, None)


def test_predict_pixels_equals_predict_on_the_image(core: InferenceCore,
                                                    digits_model: FixtureModel):
    images = [b for b, _ in digits_model.valid[:12]]
    pixels = _pixels(images, core.get_model().eval_spec)
    assert pixels.dtype == np.float32 and pixels.shape == (12, 3, 16, 16)

    async def run() -> tuple[list[Prediction], list[Prediction]]:
        return await core.predict_pixels(pixels, top_k=3), \
            await asyncio.gather(*(core.predict(b, top_k=3) for b in images))

    from_pixels, from_images = asyncio.run(run())
    assert len(from_pixels) == len(images)
    for pred, ref, probs in zip(from_pixels, from_images, digits_model.valid_probs[:12],
                                strict=True):
        assert (pred.model, pred.model_version, pred.tta, pred.tta_views) == ("digits", 1, False, 1)
        assert [c.index for c in pred.classes] == [c.index for c in ref.classes]
        assert len(pred.classes) == 3
        np.testing.assert_allclose(pred.probabilities, ref.probabilities, atol=1e-6)
        np.testing.assert_allclose(pred.probabilities, probs, atol=1e-5)
    with core.pin() as pinned:  # the same through a pinned version
        again = asyncio.run(pinned.predict_pixels(pixels[:2]))
    np.testing.assert_allclose(again[1].probabilities, from_pixels[1].probabilities, atol=1e-6)


def test_predict_pixels_is_one_request_in_blocks_of_max_batch_size(digits_model: FixtureModel):
    images = [b for b, _ in digits_model.valid[:10]]
    with InferenceCore.create(core_config(digits_model.repo_root, max_batch_size=4,
                                          max_pending=1)) as core:
        pixels = _pixels(images, core.get_model().eval_spec)

        async def run() -> list:
            # max_pending=1: the 10 rows are one admitted request, so the image is refused.
            return await asyncio.gather(core.predict_pixels(pixels), core.predict(images[0]),
                                        return_exceptions=True)

        predictions, refused = asyncio.run(run())
        assert isinstance(refused, Overloaded)
        assert [p.classes[0].index for p in predictions] == digits_model.valid_pred[:10].tolist()
        stats = core.stats.snapshot()
        assert stats["models"]["digits"]["batch_sizes"] == {4: 2, 2: 1}  # 10 rows, 4 + 4 + 2
        assert stats["models"]["digits"]["rows"] == 10
        assert stats["requests"] == {"digits/ok": 1, "digits/overloaded": 1}
    with InferenceCore.create(core_config(digits_model.repo_root, max_batch_size=1)) as core:
        assert len(asyncio.run(core.predict_pixels(pixels[:3]))) == 3  # batching off: 1 a pass
        assert core.stats.snapshot()["models"]["digits"]["batch_sizes"] == {1: 3}


def _bad_pixels(case: str) -> object:
    good = np.full((2, 3, 16, 16), 0.5, np.float32)
    make = {
        "good": lambda: good,
        "float64": lambda: good.astype(np.float64),
        "uint8": lambda: (good * 255).astype(np.uint8),
        "size": lambda: np.zeros((2, 3, 8, 8), np.float32),
        "channels last": lambda: good.transpose(0, 2, 3, 1),
        "no batch axis": lambda: good[0],
        "empty": lambda: good[:0],
        "list": lambda: good.tolist(),
        "nan": lambda: np.where(np.arange(good.size).reshape(good.shape) == good.size - 1,
                                np.float32(np.nan), good),
        "inf": lambda: np.where(np.arange(good.size).reshape(good.shape) == 7,
                                np.float32(np.inf), good),
        "0-255": lambda: good * 255,
        "normalised": lambda: good - 1.5,
    }
    return make[case]()


@pytest.mark.parametrize("case, message", [
    ("float64", "float64, not float32"), ("uint8", "uint8, not float32"),
    ("size", "shape [2, 3, 8, 8], expected [N, 3, 16, 16]"),
    ("channels last", "expected [N, 3, 16, 16]"), ("no batch axis", "expected [N, 3, 16, 16]"),
    ("empty", "shape [0, 3, 16, 16]"), ("list", "numpy array"),
    ("nan", "NaN or infinite values (rows [1]"), ("inf", "NaN or infinite values (rows [0]"),
    ("0-255", "divided by 255"), ("normalised", "normalises (mean/std) inside"),
])
def test_predict_pixels_refuses_bad_input(core: InferenceCore, digits_model: FixtureModel,
                                          case: str, message: str):
    before = core.stats.snapshot()["requests"].get("digits/invalid_request", 0)
    with pytest.raises(InvalidRequest) as error:
        asyncio.run(core.predict_pixels(_bad_pixels(case)))
    assert message in str(error.value)
    if "float32" in message or "shape" in message:
        assert "[N, 3, 16, 16]" in str(error.value)  # the contract is always named
    assert core.stats.snapshot()["requests"]["digits/invalid_request"] == before + 1
    assert len(asyncio.run(core.predict_pixels(_bad_pixels("good")))) == 2  # and it recovers


def test_batcher_gathers_blocks_by_rows_and_never_splits_one():
    """Blocks: (rows, images) = one image (1, 1), its TTA views (6, 1), preprocessed (n, n)."""
    stats = CoreStats()
    batcher = DynamicBatcher(lambda x: x * 10, name="t", max_batch_size=4, max_wait_ms=20,
                             stats=stats)
    blocks = [(3, 3), (1, 1), (2, 2), (6, 1), (6, 6), (1, 1)]
    arrays = [np.arange(rows, dtype=np.float32)[:, None] + 100 * i
              for i, (rows, _) in enumerate(blocks)]
    # Queued before the worker starts, so the passes are deterministic, in rows: 3 + 1 | 2 | 6 |
    # 6 | 1 (a block that does not fit waits for the next pass; one over the limit runs alone).
    futures = [batcher.submit(a, images=n) for a, (_, n) in zip(arrays, blocks, strict=True)]
    batcher.start()
    for future, array in zip(futures, arrays, strict=True):
        np.testing.assert_array_equal(future.result(timeout=10), array * 10)
    batcher.close(wait=True)
    assert stats.batch_sizes("t") == {4: 1, 2: 1, 1: 2, 6: 1}  # images per pass
    assert stats.snapshot()["models"]["t"]["rows"] == 19


def test_default_grpc_message_limit_fits_an_fp32_batch():
    from service.core.config import default_max_message_bytes

    assert default_max_message_bytes(16 << 20) == 64 << 20 > 32 * 3 * 224 * 224 * 4
    assert default_max_message_bytes(100 << 20) == 101 << 20
