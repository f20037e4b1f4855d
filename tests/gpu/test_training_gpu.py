"""A short digits training run on the GPU uses what the recipe promises there: mixed precision
(bf16, or fp16 with a GradScaler), channels_last, and batch augmentation on the device."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.gpu


def test_run_trains_and_checkpoints(gpu_training_run) -> None:
    result = gpu_training_run.result
    assert result.best_checkpoint.is_file()
    assert [h["phase"] for h in result.history] == ["stage1"]
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    assert result.best_metric > 0.3, "1 epoch on digits should be far above chance (0.1)"


def test_forward_passes_run_on_the_gpu_under_autocast(gpu_training_run) -> None:
    import torch

    forwards = gpu_training_run.spy.forwards
    assert forwards, "no training forward pass was recorded"
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    for device, autocast_on, dtype, _, _ in forwards:
        assert device == "cuda"
        assert autocast_on, "training forward passes must run under torch.autocast"
        assert dtype == expected, f"autocast dtype {dtype}, expected {expected}"


def test_model_and_batches_are_channels_last(gpu_training_run) -> None:
    forwards = gpu_training_run.spy.forwards
    assert all(input_cl for *_, input_cl, _ in forwards), "input batches are not channels_last"
    assert all(weight_cl for *_, weight_cl in forwards), "conv weights are not channels_last"


def test_batch_augmentation_runs_on_the_device(gpu_training_run) -> None:
    import torch

    spy = gpu_training_run.spy
    recipe = gpu_training_run.recipe
    assert spy.augment_inputs, "BatchAugment was never called"
    for device, dtype, shape in spy.augment_inputs:
        # uint8 presized batches are copied to the GPU and augmented there, whole.
        assert device == "cuda" and dtype == torch.uint8
        assert shape[1:] == (recipe.presize, recipe.presize, 3)
        assert shape[0] == recipe.stages[0].batch_size
    assert all(d == "cuda" and t == torch.float32 for d, t in spy.augment_outputs)
