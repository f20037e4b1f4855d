"""The core options every ``tta-serve`` sub-command shares, and the CoreConfig they make.

Its own module so that the serving commands (``service.cli``) and the predict/evaluate commands
(``service.predict.cli``, which runs a core in-process without ``--url``) parse the same flags
without importing each other.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from service.core.config import DEVICES, CoreConfig, VersionPolicy, default_threads
from service.imaging import DEFAULT_MAX_PIXELS
from service.process.serve_env import MODELS_DIR_ENV, default_models_dir


def _version_policy(text: str) -> VersionPolicy:
    try:
        return VersionPolicy.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def add_core_options(parser: argparse.ArgumentParser) -> None:
    """The options every front end shares; they map one-to-one onto CoreConfig."""
    d = CoreConfig(models_dir=Path("."))  # the defaults, in one place
    g = parser.add_argument_group("models and inference")
    g.add_argument("--models-dir", type=Path, default=None,
                   help=f"model repository, NAME/VERSION/{{model.onnx,model.json}} (default: "
                        f"${MODELS_DIR_ENV} or the repository's models/)")
    g.add_argument("--model", default=d.default_model,
                   help="default model, used when a request names none (default: the only "
                        "model in the repository, else cifar10 when it is there)")
    g.add_argument("--version-policy", type=_version_policy, default=VersionPolicy(),
                   metavar="latest|pinned:N",
                   help="serve the newest valid version (hot-reloading new ones) or one pinned "
                        "version (default: latest)")
    g.add_argument("--variant", default=d.variant, metavar="int8|fp16|NAME=KIND,...",
                   help="serve the reduced-precision variant training export recorded in "
                        "model.json (--int8/--fp16) instead of model.onnx: for every model that "
                        "has one, or per model (NAME=KIND, required) (default: model.onnx)")
    g.add_argument("--device", choices=DEVICES, default=d.device,
                   help="auto = CUDA when usable, else CPU; cuda refuses to start without a "
                        "GPU (default: %(default)s)")
    g.add_argument("--intra-op-threads", type=int, default=default_threads(),
                   help="ONNX Runtime threads per model (default: %(default)s)")
    g.add_argument("--poll-interval-s", type=float, default=d.poll_interval_s,
                   help="seconds between model repository scans for new versions; 0 = off "
                        "(default: %(default)s)")
    b = parser.add_argument_group("batching and limits")
    b.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                   help="rows per forward pass (an image is 1 row, V with TTA); "
                        "1 = batching off (default: %(default)s)")
    b.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help="how long a batch waits for more images (default: %(default)s)")
    b.add_argument("--max-pending", type=int, default=d.max_pending,
                   help="requests in flight before new ones get 'overloaded' "
                        "(default: %(default)s)")
    b.add_argument("--decode-threads", type=int, default=d.decode_threads,
                   help="threads decoding images (default: %(default)s)")
    b.add_argument("--max-image-bytes", type=int, default=d.max_image_bytes,
                   help="largest encoded image accepted, bytes (default: %(default)s)")
    b.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="largest image accepted, width x height (default: %(default)s)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def core_parser(**defaults: object) -> argparse.ArgumentParser:
    """The core options as a parent parser (``parents=[core_parser()]``), with ``defaults``
    replacing some of theirs (``tta-serve predict``: no --model unless given)."""
    parent = argparse.ArgumentParser(add_help=False)
    add_core_options(parent)
    parent.set_defaults(**defaults)
    return parent


def core_config_from_args(args: argparse.Namespace) -> CoreConfig:
    return CoreConfig(
        models_dir=args.models_dir or default_models_dir(),
        default_model=args.model,
        version_policy=args.version_policy,
        device=args.device,
        intra_op_threads=args.intra_op_threads,
        poll_interval_s=args.poll_interval_s,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_pending=args.max_pending,
        decode_threads=args.decode_threads,
        max_image_bytes=args.max_image_bytes,
        max_pixels=args.max_pixels,
        variant=args.variant,
    )
