"""Mixed precision choice per device, and weight EMA used for evaluation and the best checkpoint."""

from pathlib import Path

import torch

from training.callbacks import load_checkpoint
from training.config import load_recipe
from training.device import select_precision, use_channels_last
from training.fit import fit

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


def test_ema_weights_are_what_evaluation_and_best_checkpoint_use(digits_dir, tmp_path):
    recipe = load_recipe(RECIPE, [f'data.path="{digits_dir}"', f'train.output="{tmp_path}"',
                                  "train.ema=0.9", "stages.0.epochs=1", "stages.1.epochs=0",
                                  "stages.0.size=12"])
    fit(recipe, progress=False)
    last, best = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(tmp_path / "best.pt")
    ema = {k.removeprefix("module."): v for k, v in last["ema"].items() if k.startswith("module.")}
    assert ema.keys() == best["model"].keys()
    assert all(torch.equal(ema[k], best["model"][k]) for k in ema)  # best = the EMA weights
    raw = last["model"]
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())
