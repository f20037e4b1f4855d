"""Write scikit-learn's 1,797 handwritten digits as an image folder (offline sample data).

One sub-folder per digit, 8x8 grayscale PNGs: `training data-summary --data DIR` and
`training fit` take it like any user image folder (the random splitter splits it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.data import make_digits


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, help="folder to write <digit>/<index>.png into")


def run(args: argparse.Namespace) -> int:
    out = make_digits(args.out_dir)
    n = sum(1 for _ in out.glob("*/*.png"))
    print(f"wrote {n} images in 10 class folders under {out}")
    return 0
