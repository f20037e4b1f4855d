"""Export, verify and publish one checkpoint: the order of the steps and nothing else.

The checkpoint (docs/architecture.md) is rebuilt with the weights training evaluated, wrapped
as ``softmax(model(pixels))`` and exported as ``model.onnx``: input ``pixels`` float32 NCHW in
[0, 1] with a dynamic batch axis, output ``probabilities``. Nothing is published until ONNX
Runtime has reproduced PyTorch's probabilities on random inputs and on real images read through
``service.imaging`` (the path the service itself uses): max |p_onnx - p_torch| <= 1e-4 and the
same top-1 class. A failure raises ExportError and leaves no version behind: everything is
written into a hidden staging folder and renamed into place by ``ModelRepository.publish``.
Publishing the newest version also (re)writes ``NAME/config.pbtxt`` and ``NAME/labels.txt``
(``service.oip.model_config``), so NVIDIA Triton can serve the same folder (docs/deploy.md).
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

from torch import nn

from service.imaging import EvalSpec, TTASpec, decode_side
from service.model_repository import (
    MODEL_FILE,
    ModelCard,
    ModelRepository,
    ModelVersion,
    sha256_file,
)
from service.oip.model_config import write_triton_files
from training.checkpoint import Checkpoint, load_checkpoint
from training.distributed import require_single_process
from training.errors import ExportError
from training.export.check_images import MAX_CHECK_IMAGES, CheckImages, find_check_images
from training.export.onnx_graph import ProbabilityModel, build_export_module, export_onnx
from training.export.parity import FP32_ATOL, ParityResult, compare_with_recorded, verify_parity
from training.export.publish import (
    card_metrics,
    check_target,
    copy_run_report,
    jsonable,
    publish_staged,
)
from training.export.variants import build_variants

log = logging.getLogger(__name__)


def export_and_verify(module: nn.Module, onnx_path: Path, ckpt: Checkpoint,
                      images: CheckImages | None, spec: EvalSpec,
                      tolerance: float = FP32_ATOL) -> tuple[int, ParityResult]:
    """Write model.onnx and prove it computes what PyTorch computes; ExportError if not."""
    opset = export_onnx(module, onnx_path, size=spec.size, metadata={
        "tta_serve.classes": json.dumps(ckpt.classes),
        "tta_serve.arch": ckpt.arch,
        "tta_serve.eval_transform": json.dumps(spec.to_dict()),
    })
    parity = verify_parity(module, onnx_path, images, size=spec.size, tolerance=tolerance)
    log.info("parity: max |p_onnx - p_torch| = %.3g (tolerance %.0e) on %d random + %d real "
             "images; top-1 mismatches %d", parity.max_abs_diff, tolerance, parity.n_random,
             parity.n_images, parity.top1_mismatches)
    compare_with_recorded(ckpt.metrics or {}, parity)
    if not parity.ok:
        raise ExportError(
            f"ONNX Runtime does not reproduce PyTorch: max |p_onnx - p_torch| = "
            f"{parity.max_abs_diff:.3g} (tolerance {tolerance:.0e}), "
            f"{parity.top1_mismatches} top-1 mismatch(es); nothing was published"
        )
    return opset, parity


def read_specs(ckpt: Checkpoint, checkpoint: Path) -> tuple[EvalSpec, TTASpec]:
    try:
        return ckpt.eval_transform, ckpt.tta_spec
    except (TypeError, ValueError, KeyError) as e:
        raise ExportError(f"{checkpoint}: eval_spec/tta are not valid: {e}") from e


def check_images_for(ckpt: Checkpoint, checkpoint: Path, data: Path | None, limit: int,
                     random_inputs_only: bool) -> CheckImages | None:
    """The real images of the check; ExportError when there are none and random inputs alone
    were not asked for."""
    if random_inputs_only:
        return None
    spec, tta = read_specs(ckpt, checkpoint)
    images = find_check_images(data, ckpt.recipe, ckpt.classes, spec, limit=limit,
                               min_side=decode_side(spec, tta))
    if images is None:
        where = (ckpt.recipe.get("data") or {}).get("path")
        raise ExportError(
            f"no real images to check {checkpoint} on: the recipe's data folder {where!r} is not "
            "here. Pass --data DIR (a labelled folder of the model's classes), or "
            "--random-inputs-only to check on random inputs alone (model.json then records "
            "n_images 0)")
    return images


def stage_version(staging: Path, checkpoint: Path, ckpt: Checkpoint, module: ProbabilityModel,
                  images: CheckImages | None, *, name: str, version: int, variants: list[str],
                  tolerance: float) -> ModelCard:
    """model.onnx (verified), its variants and the run's report in ``staging``; its card."""
    spec, tta = read_specs(ckpt, checkpoint)
    opset, parity = export_and_verify(module, staging / MODEL_FILE, ckpt, images, spec,
                                      tolerance)
    measured = build_variants(staging, variants, images, parity, spec.size)
    report = copy_run_report(checkpoint.parent, staging / "report")
    log.info("staged %s (%d report file(s))", staging, len(report))
    return ModelCard(
        name=name, version=version, classes=tuple(ckpt.classes), eval_spec=spec, tta=tta,
        sha256=sha256_file(staging / MODEL_FILE), mean=tuple(float(v) for v in ckpt.mean),
        std=tuple(float(v) for v in ckpt.std), opset=opset,
        metrics=jsonable(card_metrics(ckpt, parity, checkpoint)), recipe=jsonable(ckpt.recipe),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"), variants=measured)


def export_checkpoint(
    checkpoint: Path, *, name: str, models_dir: Path, version: int | None = None,
    force: bool = False, data: Path | None = None, fp16: bool = False, int8: bool = False,
    tolerance: float = FP32_ATOL, max_images: int = MAX_CHECK_IMAGES,
    random_inputs_only: bool = False, calibrate: bool = False, abstain_at: float | None = None,
) -> ModelVersion:
    """Export, verify and publish a checkpoint as ``models_dir/name/version``.

    ``version`` None publishes the next integer; an existing version is replaced only with
    ``force``. Raises ExportError (nothing published) when the checkpoint is unusable, the
    export fails, or ONNX Runtime does not reproduce PyTorch within ``tolerance``. The check
    needs real images (``data``, or the run's validation split) unless ``random_inputs_only``
    (models without data, e.g. random-weight benchmark models). ``calibrate`` (the CLI's
    default): choose the served TTA views, fit the temperatures and thresholds on the held-out
    photos (``training.calibration``; ``abstain_at``: the target accuracy of min_confidence).
    """
    require_single_process("export", "every rank would publish its own version")
    checkpoint, repo = Path(checkpoint), ModelRepository(models_dir)
    target = check_target(repo, name, version, force)
    ckpt = load_checkpoint(checkpoint, error=ExportError)
    read_specs(ckpt, checkpoint)
    module = build_export_module(ckpt)  # an unusable checkpoint fails before any image is read
    images = check_images_for(ckpt, checkpoint, data, max_images, random_inputs_only)
    staging = repo.staging_dir(name)
    try:
        card = stage_version(staging, checkpoint, ckpt, module, images, name=name, version=target,
                             variants=[k for k, on in (("fp16", fp16), ("int8", int8)) if on],
                             tolerance=tolerance)
        if calibrate and images is not None:
            from training.calibration.publish import calibrate_staged

            card = calibrate_staged(card, staging, data=data, abstain_at=abstain_at)
        published = publish_staged(repo, staging, card, force=force,
                                   auto_version=version is None)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # NVIDIA Triton can serve the same folder: models/NAME/config.pbtxt + labels.txt (newest).
    if published.version == repo.latest(name):
        write_triton_files(repo.root / name, published.card)
    return published
