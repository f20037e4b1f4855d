"""The reference peer: airbench94 from the package registry (``airbench`` 0.1.8), its own recipe
and hyper-parameters unchanged, run in float32 on the CPU on OUR photos.

The package is written for one CUDA GPU in half precision. Nothing in it is edited; this
runner patches, at run time, only what ties it to that device: ``.half()`` keeps float32,
``.cuda()`` and ``torch.cuda.synchronize`` do nothing, ``torch.cuda.Event`` times with the
CPU's clock, and its data loader reads ``train.pt``/``test.pt`` (our decoded JPEGs, written by
bench/time_to_accuracy.py) from the CPU. Its timing is its own: training steps and the
whitening init, not evaluation. Each epoch's accuracy (its per-epoch evaluation, plain) and
the final TTA accuracy (its ``tta_level`` 2: mirror + 1-px translates) are captured from the
table it prints, through its own ``print_training_details``.

    python bench/peers/airbench_cpu.py DATA_DIR OUT.json [--epochs 9.9] [--threads N]

DATA_DIR holds cifar10/train.pt and cifar10/test.pt. The package comes from
``pip install --no-deps --target .cache/airbench-0.1.8 airbench==0.1.8`` (torch and
torchvision are the project's; the shared environment is not touched).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

PACKAGE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "airbench-0.1.8"


class CpuEvent:
    """torch.cuda.Event's timing interface on the CPU's clock."""

    def __init__(self, enable_timing: bool = True) -> None:
        self.t = 0.0

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: CpuEvent) -> float:
        return 1000.0 * (end.t - self.t)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def patch_for_cpu() -> None:
    """float32 on the CPU: the only changes made to the reference."""
    torch.Tensor.half = lambda self, *a, **k: self.float()  # type: ignore[method-assign]
    nn.Module.half = lambda self: self.float()  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.cuda.Event = CpuEvent  # type: ignore[assignment,misc]
    torch.cuda.synchronize = lambda *a, **k: None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=float, default=None, help="default: airbench94's 9.9")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(PACKAGE_DIR))
    patch_for_cpu()
    import airbench
    import airbench.lib_airbench94 as a94
    import airbench.utils as utils

    loader_defaults = list(utils.CifarLoader.__init__.__defaults__)
    loader_defaults[-1] = "cpu"  # its `gpu=0` device argument
    utils.CifarLoader.__init__.__defaults__ = tuple(loader_defaults)
    rows: list[dict] = []
    printer = utils.print_training_details
    started = time.perf_counter()

    def capture(variables: dict, is_final_entry: bool) -> None:
        rows.append({"epoch": variables.get("epoch"), "seconds": variables["total_time_seconds"],
                     "accuracy": variables.get("val_acc"),
                     "tta_accuracy": variables.get("tta_val_acc") if is_final_entry else None,
                     "wall_seconds": time.perf_counter() - started,
                     "process_cpu_seconds": _cpu(),
                     "load_average": os.getloadavg()[0]})
        printer(variables, is_final_entry)
        sys.stdout.flush()

    utils.print_training_details = capture
    os.chdir(args.data_dir)  # it reads ./cifar10/{train,test}.pt
    kwargs = {} if args.epochs is None else {"epochs": args.epochs}
    loader = utils.CifarLoader("cifar10", train=True, batch_size=a94.hyp["opt"]["batch_size"],
                               aug=a94.hyp["aug"], altflip=True)
    airbench.train94(loader, **kwargs)
    args.out.write_text(json.dumps({"peer": "airbench 0.1.8 (airbench94), float32 CPU",
                                    "hyp": a94.hyp, "epochs": kwargs.get("epochs", 9.9),
                                    "threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
