"""InferenceCore: the one place where an image becomes a prediction; front ends are adapters.

The gRPC server, the HTTP (BentoML) service and the KServe v2 adapter only translate their wire
format into these calls and map ``service.core.errors`` to status codes::

    core = InferenceCore.create(CoreConfig(models_dir="models"))
    core.start()                       # blocking: loads models; DeviceUnavailable/ModelNotFound
    pred = await core.predict(png_bytes, tta="auto", top_k=3, min_confidence=0.9)
    pred.label, pred.classes[0].probability, pred.model, pred.model_version, pred.probabilities
    pred.path, pred.views_used, pred.calibrated, pred.unsure   # service.core.answering
    results = await core.predict_batch([a, b, c])      # Prediction | CoreError per image
    preds = await core.predict_pixels(x)  # x: float32 (N, 3, S, S) in [0, 1], preprocessed
    result = await core.evaluate(labelled_items, tta=True)  # EvaluationResult(report, png, ...)
    core.list_models(); core.get_model("digits"); core.provider; core.stats; core.ready
    core.reload()                      # blocking: rescan the repository now (also polled)
    core.stop()                        # blocking: finishes queued work

Request path (``service.core.preprocess`` decodes, inline for a small image alone, else in a
pool): the rows -- one, or every TTA view -- go to the version's batcher as one unit; TTA views
are combined by the recorded rule. ``tta="auto"`` runs the other views, as a second unit, only
for an image whose calibrated plain top-1 is under the model's threshold (``service.core.
answering`` calibrates and marks unsure). FP32 pixels (``predict_pixels``) skip decoding. At
most ``max_pending`` requests are admitted, ``max_queue`` per model; beyond, Overloaded
(``service.core.admission``; ``arriving``: the same answer before a front end reads a body).
Past its deadline (``service.core.deadlines``) or cancelled, a request is dropped uncomputed.

The async methods may be awaited from any event loop (no loop is captured); start/stop/reload
block and should run before serving or via ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from service.core import deadlines
from service.core.admission import Admission, admitted, arriving
from service.core.answering import (
    AnswerOptions,
    answer_options,
    first_views,
    join_views,
    make_answer,
    rest_views,
    wants_more_views,
)
from service.core.config import CoreConfig, resolve_default_model
from service.core.errors import CoreError, ImageTooLarge, InvalidRequest, ModelUnavailable
from service.core.evaluation import EvaluationResult, LabelledItems, evaluate_pinned
from service.core.models import LoadedModel, ModelInfo, ModelRegistry, VersionState
from service.core.prediction import Prediction
from service.core.preprocess import (
    check_pixel_values,
    check_pixels_shape,
    first_rows,
    first_rows_inline,
)
from service.core.runtime import ProviderInfo, plan_device
from service.core.stats import CoreStats, RequestTimes
from service.model_repository import ModelCard, ModelRepository

__all__ = ["InferenceCore", "PinnedModel"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class PinnedModel:
    """One leased model version: every call runs on exactly this version (see core.pin()).

    Valid only inside its ``with core.pin(...)`` block; the lease ends with the block.
    """

    def __init__(self, core: InferenceCore, model: LoadedModel) -> None:
        self._core = core
        self._model = model

    @property
    def name(self) -> str:
        return self._model.name

    @property
    def version(self) -> int:
        return self._model.version

    @property
    def card(self) -> ModelCard:
        return self._model.card

    @property
    def classes(self) -> tuple[str, ...]:
        return self._model.card.classes

    async def predict(self, image: bytes, *, tta: bool | str | None = None,
                      top_k: int | None = None,
                      min_confidence: float | None = None) -> Prediction:
        options = self._options(tta, top_k, min_confidence)
        return await self._core._predict_one(self._model, image, options)

    async def predict_batch(self, images: Sequence[bytes], *, tta: bool | str | None = None,
                            top_k: int | None = None, min_confidence: float | None = None,
                            ) -> list[Prediction | CoreError]:
        options = self._options(tta, top_k, min_confidence)
        return await self._core._predict_many(self._model, images, options)

    def _options(self, tta: bool | str | None, top_k: int | None,
                 min_confidence: float | None) -> AnswerOptions:
        k = self._core._check_top_k(top_k)
        return answer_options(self._model.card, tta, min_confidence, k)

    async def predict_pixels(self, pixels: np.ndarray, *, top_k: int | None = None,
                             min_confidence: float | None = None) -> list[Prediction]:
        """Classify already-preprocessed images: float32 (N, 3, S, S) in [0, 1], one each.

        S is this version's input size (model.json ``eval_transform.size``). A wrong dtype or
        shape, non-finite values or values off the [0, 1] scale raise InvalidRequest. No TTA:
        its views are cut from the full image.
        """
        options = self._options("off", top_k, min_confidence)
        return await self._core._predict_pixels(self._model, pixels, options)


class InferenceCore:
    """Models, batching, TTA and evaluation behind one async API; see the module docstring."""

    def __init__(self, config: CoreConfig, repository: ModelRepository | None = None) -> None:
        self.config = config
        self.repository = repository or ModelRepository(config.models_dir)
        self._admission = Admission(config.max_pending, config.max_queue)
        self.stats = CoreStats(pending=lambda: self._admission.pending)
        self._registry: ModelRegistry | None = None
        self._decode_pool: ThreadPoolExecutor | None = None
        self._provider: ProviderInfo | None = None

    @classmethod
    def create(cls, config: CoreConfig) -> InferenceCore:
        """A core for ``config``; nothing is loaded until start()."""
        return cls(config)

    # ---- lifecycle

    def start(self) -> InferenceCore:
        """Choose the device, load the models, start polling for new versions.

        Raises DeviceUnavailable (``device="cuda"`` without a usable GPU), ModelNotFound or
        ModelUnavailable (the default model cannot be served); nothing is left running then.
        """
        self.config = resolve_default_model(self.config, self.repository)
        plan = plan_device(self.config.device)
        if plan.reason:
            log.info("running on the CPU: %s", plan.reason)
        self._decode_pool = ThreadPoolExecutor(self.config.decode_threads,
                                               thread_name_prefix="tta-decode")
        registry = ModelRegistry(self.repository, self.config, plan, self.stats,
                                 in_flight=lambda: self._admission.images)
        try:
            registry.start()
        except BaseException:
            self._decode_pool.shutdown(wait=False)
            raise
        self._registry = registry
        served = registry.served()
        self._provider = served[0].provider if served else plan
        return self

    def stop(self) -> None:
        """Stop polling; finish queued requests; release sessions and threads."""
        if self._registry is not None:
            self._registry.stop()
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> InferenceCore:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reload(self) -> list[str]:
        """Rescan the model repository now (the poller does this every poll_interval_s)."""
        return self._require_registry().reload()

    # ---- queries

    @property
    def provider(self) -> ProviderInfo:
        """The execution provider the default model's session runs on."""
        if self._provider is None:
            raise ModelUnavailable("the inference core is not started; call start() first")
        default = next((m for m in self._require_registry().served()
                        if m.name == self.config.default_model), None)
        return default.provider if default else self._provider

    @property
    def ready(self) -> bool:
        """Started, not stopped, and serving the default model (for readiness probes)."""
        registry = self._registry
        return registry is not None and any(
            m.name == self.config.default_model for m in registry.served())

    @property
    def pending(self) -> int:
        """Requests admitted and not yet answered."""
        return self._admission.pending

    def list_models(self) -> list[ModelInfo]:
        """Every served model (its served version), default model first."""
        registry = self._require_registry()
        infos = [registry.info(m) for m in registry.served()]
        return sorted(infos, key=lambda i: (not i.is_default, i.name))

    def get_model(self, name: str | None = None, version: int | None = None) -> ModelInfo:
        """One served model version; ModelNotFound when it is not served."""
        with self._lease(name, version) as model:
            return self._require_registry().info(model)

    def repository_index(self) -> list[VersionState]:
        """Every model and version in the repository: served, or why not."""
        return self._require_registry().index()

    def load_model(self, name: str) -> str | None:
        """Blocking: scan ``name``'s versions now and serve the policy's choice (the poller's
        work, for one model); returns what changed, None when nothing did."""
        return self._require_registry().load(name)

    # ---- inference

    def arriving(self, model: str | None = None,
                 timeout_s: float | None = None) -> contextlib.AbstractContextManager[None]:
        """A request whose body is still on its way, for ``model`` (None: named in its body):
        Overloaded or DeadlineExceeded now when the core would refuse it anyway (admission)."""
        default, registry = self.config.default_model, self._registry
        names = [model] if model else [default] + sorted(
            {m.name for m in registry.served()} - {default} if registry else ())
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        return arriving(self._admission, self.stats, names, deadline)

    @contextlib.contextmanager
    def pin(self, model: str | None = None, version: int | None = None) -> Iterator[PinnedModel]:
        """Hold one version for several calls (an evaluation), even across a hot reload."""
        with self._lease(model, version) as loaded:
            yield PinnedModel(self, loaded)

    async def predict(self, image: bytes, *, model: str | None = None,
                      version: int | None = None, tta: bool | str | None = None,
                      top_k: int | None = None,
                      min_confidence: float | None = None) -> Prediction:
        """Classify one encoded image.

        model/version: None ("", 0) = the default model / its served version. tta: False/"off",
        True/"on", "auto", None = the model's default. top_k: None or 0 = the configured
        default (5); more than the class count returns every class. min_confidence: None = the
        model's default, 0 = never unsure (service.core.answering).
        """
        self._check_top_k(top_k)
        with self.pin(model, version) as pinned:
            return await pinned.predict(image, tta=tta, top_k=top_k,
                                        min_confidence=min_confidence)

    async def predict_batch(self, images: Sequence[bytes], *, model: str | None = None,
                            version: int | None = None, tta: bool | str | None = None,
                            top_k: int | None = None, min_confidence: float | None = None,
                            ) -> list[Prediction | CoreError]:
        """Classify several images on one version; a bad image's CoreError takes its place.
        Request-level problems (unknown model, bad top_k) raise instead."""
        with self.pin(model, version) as pinned:
            return await pinned.predict_batch(images, tta=tta, top_k=top_k,
                                              min_confidence=min_confidence)

    async def predict_pixels(self, pixels: np.ndarray, *, model: str | None = None,
                             version: int | None = None, top_k: int | None = None,
                             min_confidence: float | None = None) -> list[Prediction]:
        """Classify already-preprocessed images, one Prediction per row (tta=False):
        ``pixels``: float32 (N, 3, S, S), NCHW RGB in [0, 1] -- the model's input contract, as
        ``service.imaging.stack_views(images, spec, None)`` makes it; S = the model's input size.
        One request for back-pressure and stats however large N is; InvalidRequest names the
        expected shape."""
        with self.pin(model, version) as pinned:
            return await pinned.predict_pixels(pixels, top_k=top_k,
                                               min_confidence=min_confidence)

    async def evaluate(self, items: LabelledItems, *, model: str | None = None,
                       version: int | None = None, tta: bool | str | None = False,
                       min_confused: int = 1) -> EvaluationResult:
        """Evaluate (image bytes, label) pairs on one version -> report (accuracy, ECE, which
        path each answer took) + confusion PNG. tta as in predict()."""
        window = max(1, min(32, self.config.max_pending // 4,
                            self.config.max_queue // 2 or 32))
        with self.pin(model, version) as pinned:
            return await evaluate_pinned(pinned, items, tta=tta, min_confused=min_confused,
                                         window=window)

    # ---- internals shared with PinnedModel

    def _require_registry(self) -> ModelRegistry:
        if self._registry is None:
            raise ModelUnavailable("the inference core is not started; call start() first")
        return self._registry

    @contextlib.contextmanager
    def _lease(self, name: str | None, version: int | None) -> Iterator[LoadedModel]:
        registry = self._require_registry()
        loaded = registry.acquire(name, version)
        try:
            yield loaded
        finally:
            registry.release(loaded)

    def _check_top_k(self, top_k: int | None) -> int:
        if top_k is None or top_k == 0:
            return self.config.default_top_k
        if top_k < 0:
            raise InvalidRequest(f"top_k must be >= 0 (0 = the default, "
                                 f"{self.config.default_top_k}); got {top_k}")
        return int(top_k)

    async def _predict_many(self, model: LoadedModel, images: Sequence[bytes],
                            options: AnswerOptions) -> list[Prediction | CoreError]:
        """One admitted request however many images (a KServe batch may hold thousands), with
        at most ``max_batch_size`` of them decoded or queued at once, so memory stays bounded.
        A bad image's CoreError takes its place; each image's outcome is counted."""
        limit = asyncio.Semaphore(max(1, self.config.max_batch_size))
        times = RequestTimes()  # the request's (Triton statistics): each stage's longest image

        async def one(image: bytes) -> Prediction | CoreError:
            mine = RequestTimes()
            async with limit:
                try:
                    with self._admission.on_the_way(1):
                        result: Prediction | CoreError = await self._run(model, image,
                                                                         options, mine)
                except CoreError as e:
                    result = e
            times.merge(mine)
            self.stats.record_request(model.name, result.kind if isinstance(result, CoreError)
                                      else "ok")
            return result

        started = time.perf_counter_ns()
        try:
            with admitted(self._admission, self.stats, model.name):
                results = list(await asyncio.gather(*(one(image) for image in images)))
        except CoreError as e:  # refused as a whole (overloaded, deadline passed)
            self.stats.record_request(model.name, e.kind)
            self.stats.record_inference(model.name, model.version, ok=False, images=len(images),
                                        duration_ns=time.perf_counter_ns() - started)
            raise
        ok = not any(isinstance(r, CoreError) for r in results)
        self.stats.record_inference(model.name, model.version, ok=ok, images=len(results),
                                    duration_ns=time.perf_counter_ns() - started, times=times)
        return results

    async def _predict_one(self, model: LoadedModel, image: bytes,
                           options: AnswerOptions) -> Prediction:
        return await self._request(model, lambda t: self._run(model, image, options, t))

    async def _predict_pixels(self, model: LoadedModel, pixels: np.ndarray,
                              options: AnswerOptions) -> list[Prediction]:
        return await self._request(model, lambda t: self._run_pixels(model, pixels, options, t))

    async def _request(self, model: LoadedModel,
                       run: Callable[[RequestTimes], Awaitable[T]]) -> T:
        """One admitted request (back-pressure), its outcome counted in the stats."""
        times, started = RequestTimes(), time.perf_counter_ns()
        try:  # one arrival at the batcher (a pixel tensor's blocks are submitted together)
            with admitted(self._admission, self.stats, model.name), self._admission.on_the_way(1):
                result = await run(times)
        except CoreError as e:
            self.stats.record_request(model.name, e.kind)
            self.stats.record_inference(model.name, model.version, ok=False, images=1,
                                        duration_ns=time.perf_counter_ns() - started)
            raise
        self.stats.record_request(model.name, "ok")
        self.stats.record_inference(model.name, model.version, ok=True,
                                    images=len(result) if isinstance(result, list) else 1,
                                    duration_ns=time.perf_counter_ns() - started, times=times)
        return result

    async def _run(self, model: LoadedModel, image: bytes, options: AnswerOptions,
                   times: RequestTimes) -> Prediction:
        if len(image) > self.config.max_image_bytes:
            raise ImageTooLarge(
                f"image is {len(image):,} bytes; the limit is {self.config.max_image_bytes:,} "
                "bytes (raise it with --max-image-bytes)")
        started = time.perf_counter_ns()
        card, max_pixels = model.card, self.config.max_pixels
        views = first_views(card, options.mode)
        # Alone, a small image decodes here (no pool hop); among others, in the pool, so that
        # they are admitted meanwhile and the batcher sees them coming (one pass for all).
        deadline = deadlines.current()
        alone = self._admission.images <= 1
        got = first_rows_inline(image, card, views, max_pixels) if alone else None
        if got is None:
            work = deadlines.unless_expired(deadline, first_rows, model.batcher.count_dropped)
            got = await self._in_pool(work, image, card, views, max_pixels)
        decoded, rows = got
        times.compute_input = time.perf_counter_ns() - started
        out = await model.batcher.run(rows, times=times, deadline=deadline)
        if wants_more_views(card, options.mode, views, out[0]):  # tta=auto, an unsure image
            views = rest_views(card)
            more = (decoded.rows(card, views) if decoded.small
                    else await self._in_pool(decoded.rows, card, views))
            out = join_views(card, out, await model.batcher.run(more, times=times,
                                                                deadline=deadline))
            views = card.tta.views
        answered = time.perf_counter_ns()
        prediction = make_answer(model.name, model.version, card, out, views, options)
        self.stats.record_answers(model.name, [prediction])
        times.compute_output = time.perf_counter_ns() - answered
        return prediction

    async def _run_pixels(self, model: LoadedModel, pixels: np.ndarray, options: AnswerOptions,
                          times: RequestTimes) -> list[Prediction]:
        started = time.perf_counter_ns()
        pixels = check_pixels_shape(pixels, model.name, model.version, model.card.input_size)
        await self._in_pool(check_pixel_values, pixels)  # a pass over every value: off the loop
        times.compute_input = time.perf_counter_ns() - started
        # One block, or blocks of max_batch_size images: a pass never exceeds that many.
        step = self.config.max_batch_size
        blocks = [pixels[i:i + step] for i in range(0, len(pixels), step)]
        deadline = deadlines.current()
        outs = await asyncio.gather(*(model.batcher.run(block, images=len(block), times=times,
                                                        deadline=deadline)
                                      for block in blocks))
        answered = time.perf_counter_ns()
        out = outs[0] if len(outs) == 1 else np.concatenate(outs)
        predictions = [make_answer(model.name, model.version, model.card, row[None], ("center",),
                                   options) for row in out]
        self.stats.record_answers(model.name, predictions)
        times.compute_output = time.perf_counter_ns() - answered
        return predictions

    async def _in_pool(self, work: Callable[..., T], *args: object) -> T:
        """``work(*args)`` in the decode pool; ModelUnavailable when the core is not running."""
        if self._decode_pool is None:
            raise ModelUnavailable("the inference core is not started; call start() first")
        try:
            running = asyncio.get_running_loop().run_in_executor(self._decode_pool, work, *args)
        except RuntimeError as e:  # submit() after the pool was shut down: we are stopping
            raise ModelUnavailable("the inference core is stopping; retry") from e
        return await running

