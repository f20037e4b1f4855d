"""``tta-serve``: one console script, one sub-command per front end.

    tta-serve                                        # gRPC :50051 + HTTP :3000, bundled models/
    tta-serve grpc --models-dir models --port 50051 --device cpu --max-batch-size 16
    tta-serve http --port 3000                       # the BentoML HTTP service alone

Each runs one process over one inference core, whichever front ends it serves
(``service.process.runner``).

Every sub-command shares the core options (``core_parser`` -> ``core_config_from_args``), each
serving one also ``--host`` and ``--grace-s`` (``serving_parser``, one parent parser for all).
To add a front end, write ``_add_NAME(subparsers, serving)`` that registers a sub-parser with
``parents=[serving]`` and ``set_defaults(run=...)`` (a function ``args -> exit code``) and list
it in ``SUBCOMMANDS``; commands that use a model without serving one take their own parent
(``service.predict.cli.client_parser``) and are listed in ``CLIENT_COMMANDS``. Without a
sub-command, ``DEFAULT_COMMAND`` runs (``scripts/serve.sh`` calls plain ``tta-serve``).
Start-up problems (no model, ``--device cuda`` without a GPU, a BentoML/uvicorn the HTTP
patches do not fit) end with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from service.core import CoreError
from service.predict.cli import add_evaluate, add_predict
from service.process.core_options import core_config_from_args, core_parser
from service.process.security_options import add_security_options, security_config_from_args

log = logging.getLogger(__name__)

# ---- sub-commands


def serving_parser() -> argparse.ArgumentParser:
    """The parent parser of every serving sub-command: the core options, --host, --grace-s, TLS
    and tokens (``service.process.security_options``)."""
    p = argparse.ArgumentParser(add_help=False, parents=[core_parser()])
    add_security_options(p)
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    p.add_argument("--grace-s", type=float, default=10.0,
                   help="on SIGTERM, seconds in-flight requests get to finish "
                        "(default: %(default)s)")
    return p


def _add_grpc(subparsers: argparse._SubParsersAction, serving: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("grpc", parents=[serving], help="serve tta_serve.v1.Classifier",
                              description="Serve the Classifier gRPC API (with health checking "
                                          "and reflection) until SIGTERM/SIGINT.")
    p.add_argument("--port", type=int, default=50051, help="(default: %(default)s)")
    _add_grpc_limits(p)
    p.set_defaults(run=_run_grpc)


def _add_grpc_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-message-bytes", type=int, default=None,
                   help="largest gRPC message, bytes: one Predict image, or a whole KServe v2 "
                        "batch (FP32 pixels: N x 3 x S x S x 4 bytes, 19 MB for 32 images at "
                        "224) (default: the larger of 64 MiB and --max-image-bytes + 1 MiB)")
    p.add_argument("--max-concurrent-rpcs", type=int, default=None,
                   help="RPCs handled at once; more are refused (default: unlimited)")


def _run_grpc(args: argparse.Namespace) -> int:
    from service.grpc.server import GrpcConfig
    from service.process.runner import serve

    grpc_config = GrpcConfig(host=args.host, port=args.port,
                             max_message_bytes=args.max_message_bytes,
                             max_concurrent_rpcs=args.max_concurrent_rpcs, grace_s=args.grace_s)
    return serve(core_config_from_args(args), grpc_config, None, security_config_from_args(args))


def _add_http(subparsers: argparse._SubParsersAction, serving: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("http", parents=[serving], help="serve the HTTP (BentoML) API",
                              description="Serve the HTTP API (BentoML: /predict, /evaluate, "
                                          "/models, /metrics, /docs.json) until SIGTERM/SIGINT.")
    p.add_argument("--port", type=int, default=3000, help="(default: %(default)s)")
    p.set_defaults(run=_run_http)


def _run_http(args: argparse.Namespace) -> int:
    from service.http.server import HttpConfig
    from service.process.runner import serve

    return serve(core_config_from_args(args), None,
                 HttpConfig(host=args.host, port=args.port, grace_s=args.grace_s,
                            port_flag="--port"), security_config_from_args(args))


def _add_all(subparsers: argparse._SubParsersAction, serving: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("all", parents=[serving], help="serve gRPC and HTTP together",
                              description="Serve the gRPC and the HTTP API from one process over "
                                          "one copy of each model; SIGTERM/SIGINT stops both.")
    p.add_argument("--grpc-port", "--port", dest="grpc_port", type=int, default=50051,
                   help="gRPC port; --port is kept from when plain tta-serve meant grpc "
                        "(default: %(default)s)")
    p.add_argument("--http-port", type=int, default=3000, help="(default: %(default)s)")
    _add_grpc_limits(p)
    p.set_defaults(run=_run_all)


def _run_all(args: argparse.Namespace) -> int:
    from service.grpc.server import GrpcConfig
    from service.http.server import HttpConfig
    from service.process.runner import serve

    grpc_config = GrpcConfig(host=args.host, port=args.grpc_port,
                             max_message_bytes=args.max_message_bytes,
                             max_concurrent_rpcs=args.max_concurrent_rpcs, grace_s=args.grace_s)
    http_config = HttpConfig(host=args.host, port=args.http_port, grace_s=args.grace_s)
    return serve(core_config_from_args(args), grpc_config, http_config,
                 security_config_from_args(args))


# What plain `tta-serve [options]` runs (scripts/serve.sh).
DEFAULT_COMMAND = "all"

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction, argparse.ArgumentParser], None]] = [
    _add_grpc,
    _add_http,
    _add_all,
]
# tta-serve predict / evaluate (service.predict.cli): a model used, not served.
CLIENT_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_predict, add_evaluate]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tta-serve", description="Serve image classifiers (ONNX, with test-time "
                                      "augmentation) from a model repository.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serving = serving_parser()
    for add in SUBCOMMANDS:
        add(subparsers, serving)
    for add_client in CLIENT_COMMANDS:
        add_client(subparsers)
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
