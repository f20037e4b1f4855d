"""``tta-serve``: one console script, one sub-command per front end.

    tta-serve                                        # gRPC :50051 + HTTP :3000, bundled models/
    tta-serve grpc --models-dir models --port 50051 --device cpu --max-batch-size 16
    tta-serve http --port 3000                       # the BentoML HTTP service alone

Every sub-command shares the core options (``add_core_options`` -> ``core_config_from_args``).
To add a front end, write ``_add_NAME(subparsers, common)`` that registers a sub-parser with
``parents=[common]`` and ``set_defaults(run=...)`` (a function ``args -> exit code``) and list
it in ``SUBCOMMANDS``. Without a sub-command, ``DEFAULT_COMMAND`` runs (``scripts/serve.sh``
calls plain ``tta-serve``). Start-up problems (no model, ``--device cuda`` without a GPU) end with
a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from service.core import CoreConfig, CoreError, VersionPolicy
from service.core.config import DEVICES, default_threads
from service.imaging import DEFAULT_MAX_PIXELS
from service.predict_cli import add_evaluate, add_predict

log = logging.getLogger(__name__)

MODELS_DIR_ENV = "TTA_SERVE_MODELS_DIR"


def default_models_dir() -> Path:
    """$TTA_SERVE_MODELS_DIR, else the repository's models/ beside the package, else ./models."""
    if os.environ.get(MODELS_DIR_ENV):
        return Path(os.environ[MODELS_DIR_ENV])
    beside_package = Path(__file__).resolve().parents[1] / "models"
    return beside_package if beside_package.is_dir() else Path("models")


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


# ---- sub-commands


def _add_grpc(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("grpc", parents=[common], help="serve tta_serve.v1.Classifier",
                              description="Serve the Classifier gRPC API (with health checking "
                                          "and reflection) until SIGTERM/SIGINT.")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=50051, help="(default: %(default)s)")
    _add_grpc_limits(p)
    p.add_argument("--grace-s", type=float, default=10.0,
                   help="on SIGTERM, seconds in-flight requests get to finish "
                        "(default: %(default)s)")
    p.set_defaults(run=_run_grpc)


def _add_grpc_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-message-bytes", type=int, default=None,
                   help="largest gRPC message, bytes: one Predict image, or a whole KServe v2 "
                        "batch (FP32 pixels: N x 3 x S x S x 4 bytes, 19 MB for 32 images at "
                        "224) (default: the larger of 64 MiB and --max-image-bytes + 1 MiB)")
    p.add_argument("--max-concurrent-rpcs", type=int, default=None,
                   help="RPCs handled at once; more are refused (default: unlimited)")


def _run_grpc(args: argparse.Namespace) -> int:
    from service.grpc_server import GrpcConfig, serve

    grpc_config = GrpcConfig(host=args.host, port=args.port,
                             max_message_bytes=args.max_message_bytes,
                             max_concurrent_rpcs=args.max_concurrent_rpcs, grace_s=args.grace_s)
    asyncio.run(serve(core_config_from_args(args), grpc_config))
    return 0


def _add_http(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("http", parents=[common], help="serve the HTTP (BentoML) API",
                              description="Serve the HTTP API (BentoML: /predict, /evaluate, "
                                          "/models, /metrics, /docs.json) until SIGTERM/SIGINT.")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=3000, help="(default: %(default)s)")
    p.add_argument("--grace-s", type=float, default=10.0,
                   help="on SIGTERM, seconds in-flight requests get to finish "
                        "(default: %(default)s)")
    p.set_defaults(run=_run_http)


def _run_http(args: argparse.Namespace) -> int:
    from service.runner import HttpConfig, serve_http

    serve_http(core_config_from_args(args), HttpConfig(host=args.host, port=args.port,
                                                       grace_s=args.grace_s,
                                                       log_level=args.log_level))


def _add_all(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("all", parents=[common], help="serve gRPC and HTTP together",
                              description="Serve the gRPC API in this process and the HTTP API "
                                          "in a child process; SIGTERM/SIGINT stops both.")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    p.add_argument("--grpc-port", "--port", dest="grpc_port", type=int, default=50051,
                   help="gRPC port; --port is kept from when plain tta-serve meant grpc "
                        "(default: %(default)s)")
    p.add_argument("--http-port", type=int, default=3000, help="(default: %(default)s)")
    _add_grpc_limits(p)
    p.add_argument("--grace-s", type=float, default=10.0,
                   help="on SIGTERM, seconds in-flight requests get to finish "
                        "(default: %(default)s)")
    p.set_defaults(run=_run_all)


def _run_all(args: argparse.Namespace) -> int:
    from service.grpc_server import GrpcConfig
    from service.runner import HttpConfig, serve_all

    grpc_config = GrpcConfig(host=args.host, port=args.grpc_port,
                             max_message_bytes=args.max_message_bytes,
                             max_concurrent_rpcs=args.max_concurrent_rpcs, grace_s=args.grace_s)
    http_config = HttpConfig(host=args.host, port=args.http_port, grace_s=args.grace_s,
                             log_level=args.log_level)
    return serve_all(core_config_from_args(args), grpc_config, http_config)


# What plain `tta-serve [options]` runs (scripts/serve.sh).
DEFAULT_COMMAND = "all"

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction, argparse.ArgumentParser], None]] = [
    _add_grpc,
    _add_http,
    _add_all,
    add_predict,  # tta-serve predict / evaluate: service.predict_cli
    add_evaluate,
]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_core_options(common)
    parser = argparse.ArgumentParser(
        prog="tta-serve", description="Serve image classifiers (ONNX, with test-time "
                                      "augmentation) from a model repository.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = [DEFAULT_COMMAND, *argv]
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (CoreError, OSError, ValueError) as e:
        log.debug("start-up failed", exc_info=True)
        print(f"tta-serve: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
