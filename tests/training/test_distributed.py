"""Training under torchrun: 2 Gloo processes on the CPU over the real digits data.

The end-to-end runs launch the real command line (``torchrun --standalone --nproc-per-node 2
-m training fit ...``) as subprocesses, beside a single-process run of the same small recipe,
and check what the issue promises: every validation image counted once, accuracy in the same
range, a checkpoint that loads and exports like any other, rank-0-only output, identical weights
on every rank (also after fine-tune's freeze -> unfreeze) and an exact ``--resume``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from training.checkpoint import load_checkpoint
from training.config import load_recipe
from training.data import EpochShuffleSampler, load_items
from training.distributed import (
    DistributedEpochSampler,
    ShardedEvalSampler,
    distributed_session,
    init_distributed,
    interleave,
    lr_factor,
)
from training.errors import ConfigError

ROOT = Path(__file__).parents[2]
RECIPE = ROOT / "recipes" / "digits.toml"
TORCHRUN = Path(sys.executable).with_name("torchrun")
# Small enough for ~30 s per run on a shared CPU; a frozen phase exercises the DDP rebuild.
# On the CPU (gloo) even where a GPU is present: the test is about DDP, not the device.
SMALL = ["stages.0.epochs=3", "stages.1.epochs=1", "stages.0.size=12", "stages.1.size=16",
         "data.presize=20", "train.freeze_epochs=1", "train.device=cpu"]
TORCHRUN_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# -- samplers, LR scaling, launch detection (no processes) -------------------------------------

def test_train_shards_deal_out_the_single_process_permutation():
    n, world = 10, 3
    single = EpochShuffleSampler(n, seed=7)
    shards = [DistributedEpochSampler(n, seed=7, rank=r, world_size=world) for r in range(world)]
    for epoch in (0, 5):
        single.set_epoch(epoch)
        order = list(single)
        parts = []
        for s in shards:
            s.set_epoch(epoch)
            parts.append(list(s))
        assert [len(p) for p in parts] == [4, 4, 4]  # equal step counts: DDP needs them
        padded = order + order[:2]
        assert all(parts[r] == padded[r::world] for r in range(world))
        assert set().union(*map(set, parts)) == set(range(n))
    again = DistributedEpochSampler(n, seed=7, rank=1, world_size=world)
    again.set_epoch(5)
    assert list(again) == parts[1]  # same seed and epoch: same shard (what --resume needs)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_eval_shards_count_every_image_exactly_once(world):
    n = 359
    parts = [list(ShardedEvalSampler(n, rank=r, world_size=world)) for r in range(world)]
    assert sorted(i for p in parts for i in p) == list(range(n))
    assert sum(len(ShardedEvalSampler(n, rank=r, world_size=world)) for r in range(world)) == n
    rows = np.arange(n * 2).reshape(n, 2)
    assert (interleave([rows[r::world] for r in range(world)]) == rows).all()


def test_lr_scaling_rules_and_recipe_key():
    assert (lr_factor("linear", 4), lr_factor("sqrt", 4), lr_factor("none", 4)) == (4, 2, 1)
    assert lr_factor("linear", 1) == 1
    with pytest.raises(ConfigError, match="scale_lr"):
        load_recipe(RECIPE, ['train.scale_lr="cubic"'])


def test_without_torchrun_there_is_no_process_group(monkeypatch):
    for key in TORCHRUN_ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    assert init_distributed("cpu") is None
    with distributed_session("cpu") as dist:
        assert dist is None
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc-per-node 1: a plain run
    assert init_distributed("cpu") is None
    assert not torch.distributed.is_initialized()


def test_world_size_without_torchrun_variables_is_a_clear_error(monkeypatch):
    for key in TORCHRUN_ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="torchrun"):
        init_distributed("cpu")


def test_lr_finder_refuses_under_torchrun(digits_dir, tmp_path, monkeypatch):
    from training.run import run_lr_find

    monkeypatch.setenv("WORLD_SIZE", "2")
    recipe = load_recipe(RECIPE, [f'data.path="{digits_dir}"', f'train.output="{tmp_path}"'])
    with pytest.raises(ConfigError, match="without torchrun"):
        run_lr_find(recipe, num_it=5)


def test_export_and_evaluate_refuse_under_torchrun(tmp_path, monkeypatch, capsys):
    """They publish or report once: N ranks would publish N versions or race on the reports."""
    from training.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    missing = str(tmp_path / "never-read.pt")
    assert main(["export", missing, "--name", "x", "--models-dir", str(tmp_path / "m")]) != 0
    assert main(["evaluate", missing, "--output", str(tmp_path / "e")]) != 0
    err = capsys.readouterr().err
    assert err.count("runs in one process: run it without torchrun") == 2
    assert not (tmp_path / "m").exists() and not (tmp_path / "e").exists()


# -- real runs ---------------------------------------------------------------------------------

@dataclass
class Run:
    out: Path
    stdout: str


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV_KEYS}
    # One thread per process in both runs (torchrun's default for several processes): the
    # single-process run is then comparable, and neither oversubscribes a shared CPU.
    env["OMP_NUM_THREADS"] = "1"
    return env


def _fit_args(digits_dir: Path, out: Path, *extra: str) -> list[str]:
    args = ["fit", "--config", str(RECIPE), "--data", str(digits_dir), "--output", str(out)]
    for item in [*SMALL, *extra]:
        args += ["--set", item]
    return args


def _launch(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=400)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _torchrun(*args: str) -> list[str]:
    return [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", *args]


@pytest.fixture(scope="module")
def single_run(digits_dir, tmp_path_factory) -> Run:
    out = tmp_path_factory.mktemp("single")
    proc = _launch([sys.executable, "-m", "training", *_fit_args(digits_dir, out)], out)
    return Run(out, proc.stdout)


@pytest.fixture(scope="module")
def ddp_run(digits_dir, tmp_path_factory) -> Run:
    out = tmp_path_factory.mktemp("ddp")
    proc = _launch(_torchrun("-m", "training", *_fit_args(digits_dir, out)), out)
    return Run(out, proc.stdout)


@pytest.mark.slow
def test_distributed_run_counts_every_validation_image_once(ddp_run, digits_dir):
    n_valid = len(load_items(digits_dir, valid_pct=0.2, seed=42).valid.paths)
    metrics = json.loads((ddp_run.out / "metrics.json").read_text())
    assert [row["n_valid"] for row in metrics["history"]] == [n_valid] * len(metrics["history"])
    assert metrics["final"]["n_valid"] == n_valid
    for name in ("confusion_matrix.json", "tta_confusion_matrix.json"):
        matrix = json.loads((ddp_run.out / "report" / name).read_text())
        assert sum(map(sum, matrix["confusion"])) == n_valid, name
    assert len(json.loads((ddp_run.out / "report" / "valid_items.json").read_text())) == n_valid
    for row in metrics["history"]:  # accuracy = correct / n_valid with an integer `correct`
        assert row["accuracy"] * n_valid == pytest.approx(round(row["accuracy"] * n_valid))


@pytest.mark.slow
def test_distributed_accuracy_is_in_the_single_process_range(ddp_run, single_run):
    ddp = json.loads((ddp_run.out / "metrics.json").read_text())["final"]
    single = json.loads((single_run.out / "metrics.json").read_text())["final"]
    print(f"accuracy: 2 processes {ddp['accuracy']:.4f} (TTA {ddp['tta_accuracy']:.4f}), "
          f"1 process {single['accuracy']:.4f} (TTA {single['tta_accuracy']:.4f})")
    assert ddp["accuracy"] >= 0.85 and single["accuracy"] >= 0.85
    assert abs(ddp["accuracy"] - single["accuracy"]) <= 0.05
    assert abs(ddp["tta_accuracy"] - single["tta_accuracy"]) <= 0.05
    phases = [row["phase"] for row in json.loads((ddp_run.out / "metrics.json").read_text())
              ["history"]]
    assert phases == ["stage1-frozen", "stage1", "stage1", "stage1", "stage2"]


@pytest.mark.slow
def test_only_rank_zero_prints_and_writes(ddp_run):
    assert ddp_run.stdout.count("best valid accuracy") == 1
    assert ddp_run.stdout.count("train_loss") == 1  # the progress table's header
    assert not list(ddp_run.out.rglob("*.tmp"))
    assert (ddp_run.out / "recipe.toml").is_file()


@pytest.mark.slow
def test_distributed_checkpoint_loads_and_exports_like_any_other(ddp_run, digits_dir, tmp_path):
    from training.checkpoint import load_model
    from training.export import export_checkpoint

    ckpt = load_checkpoint(ddp_run.out / "best.pt")
    assert not any(k.startswith("module.") for k in ckpt.model)  # the unwrapped module
    assert ckpt.world_size == 2 and ckpt.recipe["train"]["scale_lr"] == "linear"
    model, _ = load_model(ddp_run.out / "best.pt", torch.device("cpu"))
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 10)
    published = export_checkpoint(ddp_run.out / "best.pt", name="digits",
                                  models_dir=tmp_path / "models", data=digits_dir,
                                  max_images=64)
    card = json.loads((published.path / "model.json").read_text())
    assert card["metrics"]["accuracy"] == pytest.approx(ckpt.metrics["accuracy"])


STOP_SCRIPT = textwrap.dedent("""
    # Runs under torchrun: fit the recipe, save every rank's weights after `phase` epoch
    # `epoch`, then stop as a crash would (after rank 0 wrote last.pt).
    import sys
    import torch
    import torch.distributed as tdist
    from training.cli import build_parser
    from training.commands._recipe_args import recipe_from_args
    from training.distributed import distributed_session
    from training.phases import fit
    from training.learner import Callback

    out, phase, epoch = sys.argv[1], sys.argv[2], int(sys.argv[3])

    class StopAfter(Callback):
        order = 100  # after the checkpoint callback

        def after_epoch(self, learn):
            if learn.state.phase == phase and learn.state.epoch + 1 == epoch:
                torch.save(learn.model.state_dict(), f"{out}/rank{learn.dist.rank}.pt")
                tdist.barrier()
                raise KeyboardInterrupt

    args = build_parser().parse_args(sys.argv[4:])
    recipe = recipe_from_args(args)
    with distributed_session(recipe.train.device) as dist:
        fit(recipe, progress=False, callbacks=[StopAfter()], dist=dist)
""")


@pytest.mark.slow
def test_ranks_agree_and_resume_reproduces_the_uninterrupted_run(ddp_run, digits_dir, tmp_path):
    script = tmp_path / "stop_after.py"
    script.write_text(STOP_SCRIPT)
    out = tmp_path / "run"
    out.mkdir()
    stopped = _launch(_torchrun(str(script), str(out), "stage1", "1",
                                *_fit_args(digits_dir, out)), tmp_path, check=False)
    assert stopped.returncode != 0
    assert load_checkpoint(out / "last.pt").progress == {"phase": 1, "epoch": 1}
    rank0, rank1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    for key, tensor in rank0.items():  # after freeze -> unfreeze, gradients are still reduced
        assert torch.equal(tensor, rank1[key]), key

    _launch(_torchrun("-m", "training", *_fit_args(digits_dir, out), "--resume"), tmp_path)
    resumed, straight = load_checkpoint(out / "last.pt"), load_checkpoint(ddp_run.out / "last.pt")
    for key, tensor in straight.model.items():
        assert torch.equal(tensor, resumed.model[key]), key
    assert [h["accuracy"] for h in resumed.history] == \
        [h["accuracy"] for h in straight.history]
