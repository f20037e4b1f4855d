"""The HTTP API's wire format: request parts -> the core's inputs, core objects -> JSON bodies
(pydantic models, so they appear in the OpenAPI spec), and error responses (a core error's HTTP
status is its own ``status``, from the table in ``service.core.errors``).

Field names follow the gRPC messages (``classes``, ``model_version``, ``tta_views`` ...), so a
client reads the same vocabulary on both front ends. Error bodies are
``{"error": message, "kind": CoreError.kind}``; the message is the core's, which already says
what was wrong and what to do.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import zipfile
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from service.core import (
    CoreError,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    ModelInfo,
    Prediction,
    ProviderInfo,
)
from service.core.evaluation import EvaluationResult
from service.image_suffixes import IMAGE_SUFFIXES
from service.model_repository import variants_to_dict

RETRY_AFTER_S = 1  # Retry-After on 503: the queue drains in well under a second when healthy


# A request's TTA choice: true/"on", false/"off", "auto", or unset (None: the model's default).
TTAParam = bool | Literal["off", "on", "auto"] | None


def tta_label(tta: object) -> str:
    """The metrics label of a request's TTA choice: true/false as before for a boolean, the mode
    for "on"/"off"/"auto", "default" when unset."""
    if tta is None:
        return "default"
    if isinstance(tta, bool):
        return str(tta).lower()
    return str(tta)


def status_code(error: CoreError) -> int:
    """The HTTP status of a core error: its ``Status`` value (service.core.errors)."""
    return error.status.http_status


def error_response(error: CoreError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The HTTP response for an error of the table (``headers`` added); 503s carry Retry-After."""
    status = status_code(error)
    headers = dict(headers or {})
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return JSONResponse({"error": str(error), "kind": error.kind}, status_code=status,
                        headers=headers or None)


# ---- request parts -> bytes for the core


def decode_base64_image(text: str, field: str) -> bytes:
    """Base64 (or a ``data:image/...;base64,`` URL) -> bytes; InvalidImage names the field."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidImage(f"{field} is not valid base64 ({e}); send the encoded image file's "
                           "bytes, base64-encoded") from e


def one_image(image: Path | None, image_base64: str | None) -> bytes:
    if (image is None) == (image_base64 is None):
        raise InvalidRequest("send exactly one image: a multipart file field 'image', or a JSON "
                             "body with 'image_base64'")
    if image is not None:
        return image.read_bytes()
    return decode_base64_image(image_base64, "image_base64")


def several_images(images: list[Path] | None, images_base64: list[str] | None) -> list[Any]:
    """Bytes per image, or the InvalidImage of an item that is not valid base64."""
    if (images is None) == (images_base64 is None) or not (images or images_base64):
        raise InvalidRequest("send one or more images: multipart file fields 'images', or a JSON "
                             "body with a list 'images_base64'")
    if images is not None:
        return [path.read_bytes() for path in images]
    out: list[Any] = []
    for i, text in enumerate(images_base64 or []):
        try:
            out.append(decode_base64_image(text, f"images_base64[{i}]"))
        except CoreError as e:
            out.append(e)
    return out


# A zip for /evaluate: entries it may list, and how much larger than the zip its declared
# contents may be (images are compressed already; a zip that inflates far more is no image set).
MAX_ARCHIVE_ENTRIES = 100_000
MAX_ARCHIVE_EXPANSION = 10
MIN_ARCHIVE_ALLOWANCE = 64 << 20  # bytes any archive may declare, whatever its own size


def _archive_entries(archive: Path, max_image_bytes: int) -> list[tuple[zipfile.ZipInfo, str]]:
    """The image entries of a zip and their labels, checked from its directory before a byte
    of them is read: layout, count, each entry's declared size, and the declared total."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise InvalidRequest(f"archive is not a zip file ({e}); send a zip of class folders "
                             "(CLASS/image.png)") from e
    with zf:
        infos = zf.infolist()
    if len(infos) > MAX_ARCHIVE_ENTRIES:
        raise ImageTooLarge(f"archive lists {len(infos):,} entries; the limit is "
                            f"{MAX_ARCHIVE_ENTRIES:,}: split the set into several evaluations")
    entries, total = [], 0
    for info in sorted(infos, key=lambda i: i.filename):
        path = PurePosixPath(info.filename)
        hidden = any(p.startswith(".") or p == "__MACOSX" for p in path.parts)
        if info.is_dir() or hidden or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if len(path.parts) < 2:
            raise InvalidRequest(f"archive entry {info.filename!r} is not in a class folder; "
                                 "lay the zip out as CLASS/image.png")
        if info.file_size > max_image_bytes:
            raise ImageTooLarge(f"archive entry {info.filename!r} is {info.file_size:,} bytes "
                                f"uncompressed; the limit is {max_image_bytes:,} bytes per image "
                                "(raise it with --max-image-bytes)")
        total += info.file_size
        entries.append((info, path.parent.name))
    allowance = max(MIN_ARCHIVE_ALLOWANCE, MAX_ARCHIVE_EXPANSION * archive.stat().st_size)
    if total > allowance:
        raise ImageTooLarge(f"archive declares {total:,} bytes of images in a zip of "
                            f"{archive.stat().st_size:,} bytes (more than "
                            f"{MAX_ARCHIVE_EXPANSION}x, and over {MIN_ARCHIVE_ALLOWANCE:,}): "
                            "that is not a zip of image files")
    return entries


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_image_bytes: int) -> bytes:
    try:
        with zf.open(info) as f:
            return f.read(max_image_bytes + 1)  # one byte over is enough for the core to refuse
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as e:
        raise InvalidRequest(f"archive entry {info.filename!r} cannot be read ({e})") from e


async def archive_items(archive: Path,
                        max_image_bytes: int) -> AsyncIterator[tuple[bytes, str]]:
    """(bytes, label) of every image in a zip laid out as [ROOT/]CLASS/image, in name order.

    The zip's directory is checked first (``_archive_entries``); entries are then read one at a
    time as the evaluation takes them, each at most ``max_image_bytes`` + 1 bytes, off the
    event loop."""
    entries = await asyncio.to_thread(_archive_entries, archive, max_image_bytes)
    zf = zipfile.ZipFile(archive)
    try:
        for info, label in entries:
            yield await asyncio.to_thread(_read_entry, zf, info, max_image_bytes), label
    finally:
        zf.close()


def labelled_items(images: list[Path] | None, images_base64: list[str] | None,
                   labels: list[str] | None) -> Iterator[tuple[bytes, str]]:
    """(bytes, label) pairs, read one at a time as the evaluation consumes them."""
    data: list[Path] | list[str] = images if images is not None else images_base64 or []
    if labels is None or len(labels) != len(data):
        raise InvalidRequest(f"labels must list one class name per image: got {len(data)} images "
                             f"and {'no' if labels is None else len(labels)} labels (multipart: "
                             "one field 'labels' holding a JSON list)")
    for i, (item, label) in enumerate(zip(data, labels, strict=True)):
        if isinstance(item, Path):
            yield item.read_bytes(), label
        else:
            yield decode_base64_image(item, f"images_base64[{i}]"), label


# ---- response bodies


class ClassScore(BaseModel):
    """``service.class_score.ClassScore`` as the HTTP body's pydantic model: BentoML builds
    the OpenAPI document (and validates the response) from pydantic models, not dataclasses."""

    label: str
    index: int = Field(description="index of the class in the model's class list")
    probability: float


class PredictResponse(BaseModel):
    classes: list[ClassScore] = Field(description="top-k classes, most probable first")
    label: str = Field(description="the most probable class")
    model: str
    model_version: int
    tta: bool = Field(description="whether test-time augmentation was applied")
    tta_views: int = Field(description="views combined (1 without TTA)")
    calibrated: bool = Field(False, description="probabilities calibrated by the model's fitted "
                                                "temperature (false: exported before, T = 1)")
    unsure: bool = Field(False, description="the top-1 probability is below min_confidence: "
                                            "\"not sure\" (the classes are still given)")
    path: str = Field("plain", description="which path answered: plain or tta")
    views_used: list[str] = Field(default_factory=list, description="views the network ran")
    tta_mode: str = Field("off", description="mode asked (or the model's default): off, on, "
                                             "auto")
    min_confidence: float = Field(0.0, description="the threshold this answer was held to")


class BatchItem(BaseModel):
    """One image of a batch: its prediction, or the error it alone would have got."""

    status: int = Field(description="HTTP status this image would have had on /predict")
    prediction: PredictResponse | None = None
    error: str | None = None
    kind: str | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem] = Field(description="one per image, in request order")


class ExecutionProvider(BaseModel):
    name: str = Field(description="ONNX Runtime provider, e.g. CUDAExecutionProvider")
    device: str = Field(description="cpu or cuda")
    requested: str = Field(description="what the server was asked for: auto, cpu or cuda")


class ModelInfoResponse(BaseModel):
    name: str
    version: int = Field(description="the served version")
    repository_versions: list[int] = Field(description="versions in the model repository")
    classes: list[str]
    input_size: int = Field(description="side of the square model input, pixels")
    tta_views: list[str]
    tta_combine: str
    tta_beta: float | None = Field(description="centre-view weight; null = equal weights")
    metrics: dict[str, Any] = Field(description="validation metrics recorded at export")
    is_default: bool
    created_at: str
    provider: ExecutionProvider
    variant: str | None = Field(None, description="the reduced-precision variant served "
                                                  "(--variant), null = model.onnx")
    variants: dict[str, Any] = Field(default_factory=dict, description=(
        "reduced-precision variants in model.json, as measured at export: file, accuracy, "
        "top-1 agreement with model.onnx, bytes"))
    tta_weights: list[float] | None = Field(None, description="per-view weights (null: the "
                                                              "combine/beta rule)")
    calibration: dict[str, Any] = Field(default_factory=dict, description=(
        "model.json calibration: calibrated (false: exported before it, T = 1), temperature "
        "(plain, tta), default_tta, auto_threshold, min_confidence, and what export measured"))


class ListModelsResponse(BaseModel):
    default_model: str
    provider: ExecutionProvider
    models: list[ModelInfoResponse]


class ClassMetrics(BaseModel):
    name: str
    precision: float
    recall: float
    f1: float
    support: int


class ConfusedPair(BaseModel):
    actual: str
    predicted: str
    count: int


class EvaluationResponse(BaseModel):
    id: str = Field(description="names this evaluation in /evaluations/{id}/confusion.png")
    model: str
    model_version: int
    tta: bool
    n: int = Field(description="images evaluated")
    accuracy: float
    ece: float = Field(0.0, description="expected calibration error of the top-1 probabilities "
                                        "(15 bins)")
    calibrated: bool = False
    tta_mode: str = "off"
    tta_answers: int = Field(0, description="answers that combined the TTA views")
    classes: list[str] = Field(description="row and column names of the confusion matrix")
    confusion: list[list[int]] = Field(description="counts, rows = actual, columns = predicted")
    normalized: list[list[float]] = Field(description="confusion rows divided by their sums")
    per_class: list[ClassMetrics]
    most_confused: list[ConfusedPair] = Field(description="largest count first")
    macro_avg: dict[str, float]
    weighted_avg: dict[str, float]
    confusion_png_url: str
    confusion_png_base64: str = Field(description="the confusion matrix drawn as a PNG")


# ---- core objects -> bodies


def prediction_body(prediction: Prediction) -> PredictResponse:
    return PredictResponse(
        classes=[ClassScore(label=s.label, index=s.index, probability=s.probability)
                 for s in prediction.classes],
        label=prediction.label,
        **prediction.wire_fields(),
    )


def batch_item(result: Prediction | CoreError) -> BatchItem:
    if isinstance(result, CoreError):
        return BatchItem(status=status_code(result), error=str(result), kind=result.kind)
    return BatchItem(status=200, prediction=prediction_body(result))


def provider_body(provider: ProviderInfo) -> ExecutionProvider:
    return ExecutionProvider(name=provider.name, device=provider.device,
                             requested=provider.requested)


def model_info_body(info: ModelInfo) -> ModelInfoResponse:
    tta = info.tta
    return ModelInfoResponse(
        name=info.name,
        version=info.version,
        repository_versions=list(info.repository_versions),
        classes=list(info.classes),
        input_size=info.input_size,
        tta_views=list(tta.views),
        tta_combine=tta.combine,
        tta_beta=tta.beta if tta.combine == "mean" else None,
        metrics=info.metrics,
        is_default=info.is_default,
        created_at=info.created_at,
        provider=provider_body(info.provider),
        variant=info.variant,
        variants=variants_to_dict(info.variants),
        tta_weights=None if tta.weights is None else list(tta.weights),
        calibration={"calibrated": info.calibration.calibrated,
                     **info.calibration.to_dict()},
    )


def evaluation_body(result: EvaluationResult, evaluation_id: str,
                    png_url: str) -> EvaluationResponse:
    return EvaluationResponse(
        id=evaluation_id,
        model=result.model,
        model_version=result.version,
        tta=result.tta,
        ece=result.ece,
        calibrated=result.calibrated,
        tta_mode=result.tta_mode,
        tta_answers=result.tta_answers,
        confusion_png_url=png_url,
        confusion_png_base64=base64.b64encode(result.png).decode("ascii"),
        **result.report.to_dict(),
    )
