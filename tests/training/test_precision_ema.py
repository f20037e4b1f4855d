"""Mixed precision choice per device, and weight EMA used for evaluation and the best checkpoint."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.checkpoint import load_checkpoint, load_model
from training.config import load_recipe
from training.device import select_precision, use_channels_last
from training.phases import fit

RECIPE = Path(__file__).parents[2] / "recipes" / "digits.toml"


def test_cpu_stays_fp32_unless_asked():
    cpu = torch.device("cpu")
    assert select_precision("auto", cpu).dtype is None
    assert select_precision("off", cpu).name == "fp32"
    bf16 = select_precision("bf16", cpu)
    assert bf16.dtype == torch.bfloat16 and bf16.scaler is None  # bf16 needs no loss scaling
    with bf16.autocast():
        out = torch.nn.Linear(4, 2)(torch.rand(3, 4))
    assert out.dtype == torch.bfloat16
    assert not use_channels_last("auto", cpu) and use_channels_last("on", cpu)


@pytest.fixture(scope="module")
def ema_run(digits_dir, tmp_path_factory) -> Path:
    """One epoch with a weight EMA: best.pt and last.pt hold the same epoch."""
    out = tmp_path_factory.mktemp("ema")
    recipe = load_recipe(RECIPE, [f'data.path="{digits_dir}"', f'train.output="{out}"',
                                  "train.ema=0.9", "stages.0.epochs=1", "stages.1.epochs=0",
                                  "stages.0.size=12"])
    fit(recipe, progress=False)
    return out


def test_ema_weights_are_what_evaluation_and_best_checkpoint_use(ema_run):
    last, best = load_checkpoint(ema_run / "last.pt"), load_checkpoint(ema_run / "best.pt")
    ema = {k.removeprefix("module."): v for k, v in last.ema.items() if k.startswith("module.")}
    assert ema.keys() == best.model.keys()
    assert all(torch.equal(ema[k], best.model[k]) for k in ema)  # best = the EMA weights
    raw = last.model
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())


def test_evaluate_and_export_use_the_evaluated_weights_of_either_file(ema_run, tmp_path):
    """last.pt keeps the raw weights beside the EMA; evaluating or exporting it uses the EMA,
    the weights training validated and best.pt holds, so both files give the same answers."""
    from service.imaging import decode_image, eval_view, to_model_input
    from training.data import split_from_recipe
    from training.export import export_checkpoint
    from training.run import evaluate_checkpoint

    best = load_checkpoint(ema_run / "best.pt")
    from_last, _ = load_model(ema_run / "last.pt", torch.device("cpu"))
    for k, v in from_last.state_dict().items():
        assert torch.equal(v, best.model[k]), k
    summaries = [evaluate_checkpoint(ema_run / name, output=tmp_path / name, progress=False)
                 for name in ("last.pt", "best.pt")]
    assert summaries[0].accuracy == summaries[1].accuracy
    assert summaries[0].accuracy == pytest.approx(best.metrics["accuracy"], abs=1e-9)

    mv = export_checkpoint(ema_run / "last.pt", name="ema", models_dir=tmp_path / "models",
                           max_images=64)
    paths = split_from_recipe(best.recipe["data"], check_images=False).valid.paths[:32]
    pixels = to_model_input(np.stack([eval_view(decode_image(p), best.eval_transform)
                                      for p in paths]))
    session = ort.InferenceSession(str(mv.onnx_path), providers=["CPUExecutionProvider"])
    onnx_probs = session.run(["probabilities"], {"pixels": pixels})[0]
    raw = load_checkpoint(ema_run / "last.pt")
    raw.ema = None  # the same file read as if it had no EMA: its raw weights
    with torch.no_grad():
        ema_probs = torch.softmax(best.build_model()(torch.from_numpy(pixels)), 1).numpy()
        raw_probs = torch.softmax(raw.build_model()(torch.from_numpy(pixels)), 1).numpy()
    assert np.abs(onnx_probs - ema_probs).max() <= 1e-4
    assert np.abs(onnx_probs - raw_probs).max() > 1e-3
