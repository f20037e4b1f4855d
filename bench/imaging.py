"""Image-path benchmark: a 12 MP phone JPEG through ``service.imaging`` on one core.

What every server (and training's evaluation) does per request: decode, then the evaluation
view (or the TTA views). Compared: the full decode (no ``min_side``) against DCT-domain
decoding at the model's ``decode_side``, for a 32 px model (cifar10) and a 224 px model with
6-view TTA. Pinned to one core (``sched_setaffinity``): Pillow decodes on one thread anyway.

    .venv/bin/python -m bench.imaging                    # ~1 minute
    .venv/bin/python -m bench.imaging --photo some.jpg   # your own photo instead

Goal (issue 13): <= 30 ms for a 12 MP JPEG on the serving path.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from service.imaging import EvalSpec, TTASpec, decode_image, decode_side, eval_view, tta_views

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "cifar10_heldout" / "cat"


def phone_jpeg(source: Path | None, size: tuple[int, int] = (4000, 3000)) -> bytes:
    """A 12 MP JPEG as a phone writes it: the photo upscaled, with sensor-like noise (so it
    compresses to a realistic ~4-5 MB rather than a flat upscale's few hundred KB)."""
    if source is not None and Image.open(source).size[0] * Image.open(source).size[1] >= 8e6:
        return source.read_bytes()
    src = Image.open(source or sorted(SAMPLE.glob("*.jpg"))[0]).convert("RGB")
    big = np.asarray(src.resize(size, Image.Resampling.BICUBIC)).astype(np.int16)
    noise = np.random.default_rng(0).normal(0, 10, big.shape).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def time_ms(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1000)
    return min(runs), statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    data = phone_jpeg(args.photo)
    w, h = Image.open(io.BytesIO(data)).size
    cases = [
        ("cifar10 (32 px), plain", EvalSpec(32), TTASpec(views=("center", "hflip"), beta=None),
         False),
        ("224 px, plain", EvalSpec(224, 1.14), TTASpec(), False),
        ("224 px, 6-view TTA", EvalSpec(224, 1.14), TTASpec(), True),
    ]
    rows = []
    for name, spec, tta, with_tta in cases:
        def run(side: int | None, spec=spec, tta=tta, with_tta=with_tta) -> None:
            img = decode_image(data, min_side=side)
            tta_views(img, spec, tta) if with_tta else eval_view(img, spec)

        full = time_ms(lambda run=run: run(None), args.repeats)
        side = decode_side(spec, tta)
        fast = time_ms(lambda run=run, side=side: run(side), args.repeats)
        rows.append({"case": name, "decode_side": side, "full_min_ms": full[0],
                     "full_median_ms": full[1], "dct_min_ms": fast[0], "dct_median_ms": fast[1]})
    print(f"12 MP JPEG: {w}x{h}, {len(data) / 1e6:.1f} MB, one core, {args.repeats} runs\n")
    print("| case | decode side | full decode ms (min / median) | DCT decode ms (min / median) "
          "| speed-up |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['decode_side']} | {r['full_min_ms']:.1f} / "
              f"{r['full_median_ms']:.1f} | {r['dct_min_ms']:.1f} / {r['dct_median_ms']:.1f} | "
              f"{r['full_median_ms'] / r['dct_median_ms']:.1f}x |")
    out = ROOT / "bench" / "results" / "imaging-latest.json"
    out.write_text(json.dumps({"image": [w, h], "bytes": len(data), "rows": rows}, indent=2)
                   + "\n")


if __name__ == "__main__":
    main()
