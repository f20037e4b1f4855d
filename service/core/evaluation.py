"""Evaluate a labelled set on one pinned model version -> one EvaluationReport + its PNG.

The images go through exactly the serving path (decode, eval transform, TTA, batching) of the
pinned version, so the report says what clients of that version get. The numbers come from
``service.evaluation_report`` -- the same code training uses -- so the accuracy of a served model
evaluated on its validation set equals the one recorded in its model.json.

Images are streamed through a bounded window: the set is never held in memory at once, and the
dynamic batcher sees up to ``window`` requests together.

This module takes the pinned version (``InferenceCore.pin``) rather than the core, through the
``PinnedClassifier`` protocol, so the core can call it without an import cycle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.calibration import reliability
from service.core.errors import CoreError, InvalidRequest
from service.evaluation_report import EvaluationReport, build_report, confusion_png

log = logging.getLogger(__name__)

LabelledItems = Iterable[tuple[bytes, str]] | AsyncIterable[tuple[bytes, str]]


class _Scored(Protocol):
    @property
    def index(self) -> int: ...

    @property
    def probability(self) -> float: ...


class _Ranked(Protocol):
    @property
    def top(self) -> Sequence[_Scored]: ...

    @property
    def tta(self) -> bool: ...

    @property
    def tta_mode(self) -> str: ...

    @property
    def calibrated(self) -> bool: ...


class PinnedClassifier(Protocol):
    """What an evaluation needs of one leased version (``service.core.PinnedModel`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def classes(self) -> tuple[str, ...]: ...

    async def predict(self, image: bytes, *, tta: bool | str | None = None,
                      top_k: int | None = None,
                      min_confidence: float | None = None) -> _Ranked: ...


@dataclass(frozen=True)
class EvaluationResult:
    """The report of one evaluation, its confusion-matrix PNG, and which version produced it.

    ece: expected calibration error of the served top-1 probabilities (15 bins,
    ``service.calibration``), as calibrated as the model is (``calibrated``).
    tta_mode: the mode the answers were asked in ("off", "on", "auto"); tta_answers: how many
    answers combined the TTA views (with "auto", those under the model's threshold).
    """

    model: str
    version: int
    tta: bool
    report: EvaluationReport
    png: bytes
    ece: float = 0.0
    tta_mode: str = "off"
    tta_answers: int = 0
    calibrated: bool = False


async def evaluate_pinned(
    pinned: PinnedClassifier,
    items: LabelledItems,
    *,
    tta: bool | str | None = False,
    min_confused: int = 1,
    window: int = 32,
) -> EvaluationResult:
    """Predict every (image bytes, label) pair on ``pinned`` and build the report.

    The first bad item (undecodable image, label not among the model's classes) fails the
    evaluation with its CoreError, the message prefixed by the item's 0-based position.
    """
    if min_confused < 1:
        raise InvalidRequest(f"min_confused must be >= 1, got {min_confused}")
    y_true, answers = await _predict_all(pinned, items, tta=tta, window=window)
    if not y_true:
        raise InvalidRequest("no labelled images were sent; an evaluation needs at least one")
    y_pred = [a.classes[0].index for a in answers]
    report = build_report(y_true, y_pred, pinned.classes, min_confused=min_confused)
    confidence = np.array([a.classes[0].probability for a in answers])
    ece = reliability(confidence, np.asarray(y_pred) == np.asarray(y_true)).ece
    mode = answers[0].tta_mode
    title = (f"{pinned.name} v{pinned.version}{'' if mode == 'off' else f' + TTA {mode}'}: "
             f"accuracy {report.accuracy:.4f}, ECE {ece:.4f}, n={report.n}")
    png = await asyncio.to_thread(confusion_png, report, title=title)
    log.info("evaluated %s v%d (TTA %s) on %d images: accuracy %.4f, ECE %.4f", pinned.name,
             pinned.version, mode, report.n, report.accuracy, ece)
    return EvaluationResult(model=pinned.name, version=pinned.version, tta=mode != "off",
                            report=report, png=png, ece=ece, tta_mode=mode,
                            tta_answers=sum(bool(a.tta) for a in answers),
                            calibrated=answers[0].calibrated)


async def _predict_all(pinned: PinnedClassifier, items: LabelledItems, *,
                       tta: bool | str | None, window: int) -> tuple[list[int], list[_Ranked]]:
    """True class indices and answers in item order, at most ``window`` predictions in flight.
    Every answer is given (min_confidence 0): an evaluation scores them all."""
    index = {name: i for i, name in enumerate(pinned.classes)}
    y_true: list[int] = []
    y_pred: dict[int, _Ranked] = {}
    slots = asyncio.Semaphore(window)
    tasks: set[asyncio.Task] = set()
    failure: list[BaseException] = []

    async def predict(position: int, image: bytes) -> None:
        try:
            y_pred[position] = await pinned.predict(image, tta=tta, top_k=1, min_confidence=0)
        except CoreError as e:
            failure.append(type(e)(f"item {position}: {e}"))
        except BaseException as e:
            failure.append(e)
        finally:
            slots.release()

    try:
        async for position, (image, label) in _aenumerate(_aiter(items)):
            if label not in index:
                raise InvalidRequest(
                    f"item {position}: label {label!r} is not a class of {pinned.name} "
                    f"v{pinned.version} (classes: {_describe_classes(pinned.classes)})")
            y_true.append(index[label])
            await slots.acquire()
            if failure:
                break
            task = asyncio.create_task(predict(position, image))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    if failure:
        raise failure[0]
    return y_true, [y_pred[i] for i in range(len(y_true))]


async def _aiter(items: LabelledItems) -> AsyncIterator[tuple[bytes, str]]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def _aenumerate(items: AsyncIterator) -> AsyncIterator[tuple[int, tuple[bytes, str]]]:
    i = 0
    async for item in items:
        yield i, item
        i += 1


def _describe_classes(classes: tuple[str, ...]) -> str:
    shown = ", ".join(repr(c) for c in classes[:20])
    return shown + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
