"""``tta-serve predict`` and ``tta-serve evaluate``: use a model without writing a client.

    tta-serve predict IMAGE_OR_FOLDER... [--url grpc://host:50051 | http://host:3000 |
                      grpcs://... | https://... | --models-dir DIR] [--tta] [--top-k K]
                      [--format table|csv|json] [--output F]
                      [--ca-cert PEM] [--client-cert PEM --client-key PEM] [--token-file F]
    tta-serve evaluate FOLDER_OF_CLASS_FOLDERS [--url ...] [--tta] [--png confusion.png]

Without ``--url`` the model runs in this process (the same ``InferenceCore`` the servers use, so
the answers are the servers' answers); with it, the images go to a running server: gRPC through
``service.client.Client`` (one PredictStream), HTTP through ``POST /predict_batch`` in chunks.
Folders are walked recursively (image suffixes only); every file becomes one row, and a file that
cannot be read or decoded is a row with its error (counted, never the end of the run).
Exit codes: 0 every image predicted, 1 some failed (their rows say why), 2 nothing could run
(no model, server unreachable, unknown model).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import IO

from service.client.errors import ClientError, InvalidArgument, ServiceError
from service.client.files import image_files, labelled_files
from service.client.results import ModelInfo
from service.predict.backends import open_backend
from service.predict.output import FORMATS, Progress, RowWriter
from service.process.core_options import core_parser


def client_parser() -> argparse.ArgumentParser:
    """What predict and evaluate share: the core options (for local runs) with --model unset
    unless given -- a remote server's own default model answers then, not the name this
    machine would default to -- and where the model runs (--url, with TLS and a token),
    --tta, --window."""
    p = core_parser(model=None, log_level="WARNING")
    p.add_argument("--url", default=None, metavar="grpc[s]://HOST:PORT|http[s]://HOST:PORT",
                   help="a running tta-serve server (host:port alone means gRPC; grpcs:// and "
                        "https:// are TLS); without it the model runs in this process, from "
                        "--models-dir")
    t = p.add_argument_group("TLS and tokens (with --url)")
    t.add_argument("--ca-cert", type=Path, default=None, metavar="PEM",
                   help="CA bundle to check the server's certificate with (default: the "
                        "system's)")
    t.add_argument("--client-cert", type=Path, default=None, metavar="PEM",
                   help="client certificate, for a server that requires mutual TLS")
    t.add_argument("--client-key", type=Path, default=None, metavar="PEM",
                   help="its private key")
    t.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                   help="a file holding the bearer token (default: $TTA_SERVE_CLIENT_TOKEN); "
                        "never the token itself on the command line")
    p.add_argument("--tta", nargs="?", const="on", choices=("on", "off", "auto"), default=None,
                   help="test-time augmentation: 'on' (or --tta alone) combines the model's "
                        "views, 'auto' runs them only for images the plain view is unsure of, "
                        "'off' the plain view (default: the model's default mode; evaluate: off)")
    p.add_argument("--window", type=int, default=64,
                   help="images in flight at once (default: %(default)s)")
    return p


def add_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", parents=[client_parser()],
        help="classify images or folders (in this process, or on a server)",
        description="Classify images: each file, and every image under each folder "
                    "(recursively). One row per file; unreadable or undecodable files are rows "
                    "with an error, counted, and the run goes on. Exit code 0 = all predicted, "
                    "1 = some failed, 2 = could not run.")
    p.add_argument("paths", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER")
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default: %(default)s)")
    p.add_argument("--min-confidence", type=float, default=None,
                   help="answers below this calibrated top-1 probability say unsure (default: "
                        "the model's; 0 = never)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: csv when --output ends in .csv, json for .json, "
                        "else table)")
    p.add_argument("--output", "-o", type=Path, default=None,
                   help="write the rows here instead of to stdout")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(run=run_predict)


def add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", parents=[client_parser()],
        help="evaluate a folder of class folders: accuracy, P/R/F1, confusion matrix",
        description="Evaluate a labelled set laid out as FOLDER/CLASS/image (class names must be "
                    "the model's). Prints the report, writes the confusion matrix PNG.")
    p.add_argument("folder", type=Path, metavar="FOLDER_OF_CLASS_FOLDERS")
    p.add_argument("--png", type=Path, default=Path("confusion_matrix.png"),
                   help="where the confusion matrix picture goes (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    p.add_argument("--min-confused", type=int, default=1,
                   help="most-confused pairs need at least this many mistakes "
                        "(default: %(default)s)")
    p.set_defaults(run=run_evaluate)


def _format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    suffix = args.output.suffix.lower() if args.output else ""
    return {".csv": "csv", ".json": "json"}.get(suffix, "table")


def _describe(info: ModelInfo, tta: str | None) -> str:
    mode = tta or info.default_tta
    views = f"TTA {mode}, {len(info.tta_views)} views" if mode != "off" else "TTA off"
    views += ", calibrated" if info.calibrated else ", not calibrated"
    variant = f", {info.variant} variant" if info.variant else ""
    return f"{info.name} v{info.version} ({views}{variant}, {info.provider.name})"


def run_predict(args: argparse.Namespace) -> int:
    try:
        return _predict(args)
    except ClientError as e:  # the stream broke (server gone): what was written stays written
        print(f"tta-serve predict: error: {e.message}", file=sys.stderr)
        return 2


def _predict(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    paths = list(image_files(args.paths))
    if not paths:
        raise ValueError("no images found under " + ", ".join(map(str, args.paths)))
    backend = open_backend(args)
    out: IO[str] = sys.stdout
    try:
        try:
            info = backend.model(args.model or "")
        except ServiceError as e:
            raise ValueError(f"{backend.description}: {e.message}") from None
        print(f"predicting {len(paths)} images with {_describe(info, args.tta)} "
              f"{backend.description}", file=sys.stderr)
        if args.output:
            out = open(args.output, "w", newline="", encoding="utf-8")  # noqa: SIM115
        writer = RowWriter(out, _format(args))
        progress = Progress(len(paths), sys.stderr.isatty() if args.progress is None
                            else args.progress)
        started = time.monotonic()
        failures: dict[str, int] = {}
        results = backend.predict(paths, tta=args.tta, top_k=args.top_k,
                                  model=args.model or "", min_confidence=args.min_confidence)
        for path, result in zip(paths, results, strict=True):
            writer.write(path, result)
            failed = isinstance(result, ClientError)
            if failed:
                failures[result.code] = failures.get(result.code, 0) + 1
            progress.update(failed)
        writer.close()
        progress.finish()
    finally:
        if out is not sys.stdout:
            out.close()
        backend.close()
    seconds = time.monotonic() - started
    n_failed = sum(failures.values())
    summary = (f"predicted {len(paths) - n_failed} of {len(paths)} images in {seconds:.1f} s "
               f"({len(paths) / max(seconds, 1e-9):.0f} images/s)")
    if n_failed:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(failures.items()))
        summary += f"; {n_failed} failed ({kinds}): see the error column"
    if args.output:
        summary += f"; rows in {args.output}"
    print(summary, file=sys.stderr)
    return 1 if n_failed else 0


def run_evaluate(args: argparse.Namespace) -> int:
    if args.min_confused < 1:
        raise ValueError(f"--min-confused must be >= 1, got {args.min_confused}")
    labelled_files(args.folder)  # a missing or empty folder: a one-line error before any start
    backend = open_backend(args)
    try:
        evaluation = backend.evaluate(args.folder, tta=args.tta or "off", model=args.model or "",
                                      min_confused=args.min_confused)
    except (InvalidArgument, ServiceError) as e:
        raise ValueError(f"{backend.description}: {e.message}") from None
    finally:
        backend.close()
    tta = f"TTA {evaluation.tta_mode}"
    calibrated = "calibrated" if evaluation.calibrated else "not calibrated"
    print(f"{evaluation.model} v{evaluation.model_version} ({tta}, {calibrated}) "
          f"{backend.description}: accuracy {evaluation.accuracy:.4f} on {evaluation.n} "
          f"images, ECE {evaluation.ece:.4f}\n")
    print(evaluation.text())
    args.png.parent.mkdir(parents=True, exist_ok=True)
    args.png.write_bytes(evaluation.confusion_png)
    print(f"\nconfusion matrix: {args.png}")
    if args.json:
        body = {"model": evaluation.model, "model_version": evaluation.model_version,
                "tta": evaluation.tta, "tta_mode": evaluation.tta_mode, "ece": evaluation.ece,
                "calibrated": evaluation.calibrated, "tta_answers": evaluation.tta_answers,
                **evaluation.report.to_dict()}
        args.json.write_text(json.dumps(body, indent=2))
        print(f"report: {args.json}")
    return 0
