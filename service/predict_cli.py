"""``tta-serve predict`` and ``tta-serve evaluate``: use a model without writing a client.

    tta-serve predict IMAGE_OR_FOLDER... [--url grpc://host:50051 | http://host:3000 |
                      --models-dir DIR] [--tta] [--top-k K] [--format table|csv|json] [--output F]
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
import asyncio
import base64
import concurrent.futures
import csv
import io
import json
import logging
import sys
import threading
import time
import zipfile
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from service.client import (
    ClassScore,
    Client,
    ClientError,
    Evaluation,
    InvalidArgument,
    ModelInfo,
    Prediction,
    ServiceError,
    Unavailable,
    UnreadableImage,
    error_for,
    error_for_http,
    image_files,
    labelled_files,
    read_image,
)
from service.core.errors import CoreError
from service.core_options import add_core_options, core_config_from_args
from service.evaluation_report import ClassMetrics, EvaluationReport

log = logging.getLogger(__name__)

FORMATS = ("table", "csv", "json")
CSV_COLUMNS = ("path", "label", "probability", "top_k", "model", "version", "error")
HTTP_CHUNK = 32  # images per POST /predict_batch


class Backend(Protocol):
    """Where predictions come from: this process, a gRPC server, or an HTTP server."""

    description: str

    def model(self, name: str) -> ModelInfo: ...

    def predict(self, images: Iterable[Path], *, tta: bool, top_k: int,
                model: str) -> Iterator[Prediction | ClientError]: ...

    def evaluate(self, folder: Path, *, tta: bool, model: str,
                 min_confused: int) -> Evaluation: ...

    def close(self) -> None: ...


# ---- backends


def _core_error(error: CoreError) -> ClientError:
    """A core error as the client exception a server would have produced."""
    return error_for(error.status, str(error))


def _local_prediction(p: Any) -> Prediction:
    return Prediction(classes=tuple(ClassScore(s.label, s.index, s.probability) for s in p.top),
                      model=p.model, model_version=p.version, tta=p.tta, tta_views=p.tta_views)


class LocalBackend:
    """The inference core in this process; its event loop on a thread of its own."""

    def __init__(self, config: Any, window: int = 64) -> None:
        from service.core import InferenceCore

        self.core = InferenceCore.create(config).start()
        self.window = window
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.description = f"in this process, from {config.models_dir}"

    def model(self, name: str) -> ModelInfo:
        from service.client import _model_info
        from service.grpc_server import model_info_to_proto

        try:
            return _model_info(model_info_to_proto(self.core.get_model(name or None)))
        except CoreError as e:
            raise _core_error(e) from None

    async def _predict(self, data: bytes, tta: bool, top_k: int,
                       model: str) -> Prediction | ClientError:
        try:
            return _local_prediction(await self.core.predict(data, model=model or None,
                                                             tta=tta, top_k=top_k))
        except CoreError as e:
            return _core_error(e)

    def predict(self, images: Iterable[Path], *, tta: bool, top_k: int,
                model: str) -> Iterator[Prediction | ClientError]:
        in_flight: deque[concurrent.futures.Future] = deque()
        for path in images:
            future: concurrent.futures.Future = concurrent.futures.Future()
            try:
                data = read_image(path)
            except UnreadableImage as e:
                future.set_result(e)
            else:
                future = asyncio.run_coroutine_threadsafe(
                    self._predict(data, tta, top_k, model), self.loop)
            in_flight.append(future)
            while len(in_flight) >= self.window or (in_flight and in_flight[0].done()):
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()

    def evaluate(self, folder: Path, *, tta: bool, model: str,
                 min_confused: int) -> Evaluation:
        items = ((read_image(path), label) for path, label in labelled_files(folder))
        try:
            result = asyncio.run_coroutine_threadsafe(
                self.core.evaluate(items, model=model or None, tta=tta,
                                   min_confused=min_confused), self.loop).result()
        except CoreError as e:
            raise _core_error(e) from None
        return Evaluation(model=result.model, model_version=result.version, tta=result.tta,
                          report=result.report, confusion_png=result.png)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.core.stop()


class GrpcBackend:
    """A tta-serve gRPC server, through the public client."""

    def __init__(self, url: str, window: int = 64) -> None:
        self.client = Client(url)
        self.window = window
        self.description = f"on grpc://{self.client.target}"

    def model(self, name: str) -> ModelInfo:
        return self.client.model(name)

    def predict(self, images: Iterable[Path], *, tta: bool, top_k: int,
                model: str) -> Iterator[Prediction | ClientError]:
        return self.client.predict_many(images, tta=tta, top_k=top_k, model=model,
                                        window=self.window)

    def evaluate(self, folder: Path, *, tta: bool, model: str,
                 min_confused: int) -> Evaluation:
        return self.client.evaluate(folder, tta=tta, model=model, min_confused=min_confused)

    def close(self) -> None:
        self.client.close()


def _http_error(status: int, body: Any) -> ClientError:
    message = body.get("error") if isinstance(body, dict) else None
    return error_for_http(status, message or f"HTTP {status}")


class HttpBackend:
    """A tta-serve HTTP server: ``POST /predict_batch`` in chunks, ``/evaluate`` with a zip."""

    def __init__(self, url: str, parallel: int = 2) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=600, trust_env=False)
        self.parallel = parallel
        self.description = f"on {self.url}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise Unavailable(f"cannot reach {self.url}: {e}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200:
            raise _http_error(response.status_code, body)
        return body

    def model(self, name: str) -> ModelInfo:
        if not name:
            listing = self._call("GET", "/models")
            name = listing["default_model"]
        return _model_info_from_json(self._call("GET", f"/models/{name}"))

    def _chunk(self, paths: list[Path], tta: bool, top_k: int,
               model: str) -> list[Prediction | ClientError]:
        results: list[Prediction | ClientError | None] = [None] * len(paths)
        files = []
        for i, path in enumerate(paths):
            try:
                files.append((i, read_image(path)))
            except UnreadableImage as e:
                results[i] = e
        if files:
            data = {"tta": str(tta).lower(), "top_k": str(top_k)}
            if model:
                data["model"] = model
            try:
                body = self._call("POST", "/predict_batch", data=data, files=[
                    ("images", (paths[i].name, b, "application/octet-stream"))
                    for i, b in files])
                answers: list[Prediction | ClientError] = [
                    _prediction_from_json(item["prediction"]) if item["status"] == 200
                    else _http_error(item["status"], item) for item in body["results"]]
            except ClientError as e:  # the whole chunk failed (e.g. 503): each image says so
                answers = [e] * len(files)
            for (i, _), answer in zip(files, answers, strict=True):
                results[i] = answer
        return [r for r in results if r is not None]

    def predict(self, images: Iterable[Path], *, tta: bool, top_k: int,
                model: str) -> Iterator[Prediction | ClientError]:
        chunks = _chunks(images, HTTP_CHUNK)
        with concurrent.futures.ThreadPoolExecutor(self.parallel) as pool:
            in_flight: deque[concurrent.futures.Future] = deque()
            for chunk in chunks:
                in_flight.append(pool.submit(self._chunk, chunk, tta, top_k, model))
                if len(in_flight) > self.parallel:
                    yield from in_flight.popleft().result()
            while in_flight:
                yield from in_flight.popleft().result()

    def evaluate(self, folder: Path, *, tta: bool, model: str,
                 min_confused: int) -> Evaluation:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
            for path, label in labelled_files(folder):
                zf.writestr(f"{label}/{path.relative_to(folder / label).as_posix()}",
                            read_image(path))
        data = {"tta": str(tta).lower(), "min_confused": str(min_confused)}
        if model:
            data["model"] = model
        body = self._call("POST", "/evaluate", data=data, files={
            "archive": ("set.zip", buffer.getvalue(), "application/zip")})
        report = EvaluationReport(
            classes=body["classes"], confusion=np.asarray(body["confusion"], dtype=np.int64),
            accuracy=body["accuracy"], n=body["n"],
            per_class=[ClassMetrics(**m) for m in body["per_class"]],
            most_confused=[(p["actual"], p["predicted"], p["count"])
                           for p in body["most_confused"]])
        return Evaluation(model=body["model"], model_version=body["model_version"],
                          tta=body["tta"], report=report,
                          confusion_png=base64.b64decode(body["confusion_png_base64"]))

    def close(self) -> None:
        self.http.close()


def _prediction_from_json(body: dict[str, Any]) -> Prediction:
    return Prediction(classes=tuple(ClassScore(c["label"], c["index"], c["probability"])
                                    for c in body["classes"]),
                      model=body["model"], model_version=body["model_version"],
                      tta=body["tta"], tta_views=body["tta_views"])


def _model_info_from_json(body: dict[str, Any]) -> ModelInfo:
    from service.client import ExecutionProvider

    p = body["provider"]
    return ModelInfo(
        name=body["name"], version=body["version"],
        repository_versions=tuple(body["repository_versions"]), classes=tuple(body["classes"]),
        input_size=body["input_size"], tta_views=tuple(body["tta_views"]),
        tta_combine=body["tta_combine"], tta_beta=body.get("tta_beta"),
        metrics=body.get("metrics") or {}, is_default=body["is_default"],
        created_at=body["created_at"],
        provider=ExecutionProvider(p["name"], p["device"], p["requested"]),
        variant=body.get("variant"), variants=body.get("variants") or {})


def _chunks(items: Iterable[Path], size: int) -> Iterator[list[Path]]:
    chunk: list[Path] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def open_backend(args: argparse.Namespace) -> Backend:
    """``--url`` chooses a remote server; without it, the model runs in this process."""
    url: str | None = args.url
    if url is None:
        return LocalBackend(_local_core_config(args), window=args.window)
    if url.startswith(("http://", "https://")):
        return HttpBackend(url)
    return GrpcBackend(url, window=args.window)


def _local_core_config(args: argparse.Namespace) -> Any:
    """The core options as for a server; --model left unset means the core's own default."""
    if args.model is None:
        defaults = argparse.ArgumentParser(add_help=False)
        add_core_options(defaults)
        args = argparse.Namespace(**{**vars(args), "model": defaults.get_default("model")})
    return core_config_from_args(args)


# ---- output


def _top_k_text(p: Prediction) -> str:
    return ";".join(f"{c.label}:{c.probability:.6f}" for c in p.classes)


def row(path: Path, result: Prediction | ClientError) -> dict[str, Any]:
    """One output row: the prediction, or the error in the ``error`` column."""
    if isinstance(result, ClientError):
        return {"path": str(path), "label": "", "probability": "", "top_k": "", "model": "",
                "version": "", "error": f"{result.code}: {result.message}"}
    return {"path": str(path), "label": result.label,
            "probability": f"{result.probability:.6f}", "top_k": _top_k_text(result),
            "model": result.model, "version": result.model_version, "error": ""}


class RowWriter:
    """Writes rows as they come (a CSV of a huge folder never waits for the end)."""

    def __init__(self, out: IO[str], fmt: str) -> None:
        self.out, self.fmt = out, fmt
        self.count = 0
        if fmt == "csv":
            self.csv = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
            self.csv.writeheader()
        elif fmt == "json":
            out.write("[")
        else:
            out.write(f"{'label':<12} {'prob':>8}  {'path'}\n")

    def write(self, path: Path, result: Prediction | ClientError) -> None:
        r = row(path, result)
        if self.fmt == "csv":
            self.csv.writerow(r)
        elif self.fmt == "json":
            item: dict[str, Any] = {"path": r["path"]}
            if isinstance(result, ClientError):
                item["error"] = result.message
                item["kind"] = result.code
            else:
                item.update(label=result.label, probability=result.probability,
                            classes=[{"label": c.label, "index": c.index,
                                      "probability": c.probability} for c in result.classes],
                            model=result.model, model_version=result.model_version,
                            tta=result.tta, tta_views=result.tta_views)
            self.out.write(("\n " if self.count == 0 else ",\n ") + json.dumps(item))
        elif isinstance(result, ClientError):
            self.out.write(f"{'ERROR':<12} {'':>8}  {r['path']}  ({r['error']})\n")
        else:
            self.out.write(f"{r['label']:<12} {r['probability']:>8}  {r['path']}\n")
        self.count += 1

    def close(self) -> None:
        if self.fmt == "json":
            self.out.write("\n]\n" if self.count else "]\n")
        self.out.flush()


class Progress:
    """``  312/1000 images  31%  120 img/s`` on stderr, redrawn at most 10 times a second."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.done = self.failed = 0
        self.start = self.last = time.monotonic()

    def update(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.1 or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            pct = 100 * self.done / max(self.total, 1)
            bar = "#" * int(pct / 5)
            sys.stderr.write(f"\r[{bar:<20}] {self.done}/{self.total} images {pct:3.0f}%  "
                             f"{rate:.0f} img/s  {self.failed} failed ")
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


# ---- commands


def _add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, metavar="grpc://HOST:PORT|http://HOST:PORT",
                   help="a running tta-serve server (host:port alone means gRPC); without it the "
                        "model runs in this process, from --models-dir")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: the model's recorded views, combined")
    p.add_argument("--window", type=int, default=64,
                   help="images in flight at once (default: %(default)s)")


def _common_without_model_default(common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The server options (for local runs), with --model unset unless given: a remote server's
    own default model answers then, not the name this machine would default to."""
    parent = argparse.ArgumentParser(add_help=False)
    add_core_options(parent)
    parent.set_defaults(model=None, log_level="WARNING")
    return parent


def add_predict(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "predict", parents=[_common_without_model_default(common)],
        help="classify images or folders (in this process, or on a server)",
        description="Classify images: each file, and every image under each folder "
                    "(recursively). One row per file; unreadable or undecodable files are rows "
                    "with an error, counted, and the run goes on. Exit code 0 = all predicted, "
                    "1 = some failed, 2 = could not run.")
    p.add_argument("paths", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER")
    _add_client_options(p)
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default: %(default)s)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: csv when --output ends in .csv, json for .json, "
                        "else table)")
    p.add_argument("--output", "-o", type=Path, default=None,
                   help="write the rows here instead of to stdout")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(run=run_predict)


def add_evaluate(subparsers: argparse._SubParsersAction,
                 common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "evaluate", parents=[_common_without_model_default(common)],
        help="evaluate a folder of class folders: accuracy, P/R/F1, confusion matrix",
        description="Evaluate a labelled set laid out as FOLDER/CLASS/image (class names must be "
                    "the model's). Prints the report, writes the confusion matrix PNG.")
    p.add_argument("folder", type=Path, metavar="FOLDER_OF_CLASS_FOLDERS")
    _add_client_options(p)
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


def _describe(info: ModelInfo, tta: bool) -> str:
    views = f"TTA on, {len(info.tta_views)} views" if tta else "TTA off"
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
                                  model=args.model or "")
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
        evaluation = backend.evaluate(args.folder, tta=args.tta, model=args.model or "",
                                      min_confused=args.min_confused)
    except (InvalidArgument, ServiceError) as e:
        raise ValueError(f"{backend.description}: {e.message}") from None
    finally:
        backend.close()
    tta = "TTA on" if evaluation.tta else "TTA off"
    print(f"{evaluation.model} v{evaluation.model_version} ({tta}) {backend.description}: "
          f"accuracy {evaluation.accuracy:.4f} on {evaluation.n} images\n")
    print(evaluation.text())
    args.png.parent.mkdir(parents=True, exist_ok=True)
    args.png.write_bytes(evaluation.confusion_png)
    print(f"\nconfusion matrix: {args.png}")
    if args.json:
        body = {"model": evaluation.model, "model_version": evaluation.model_version,
                "tta": evaluation.tta, **evaluation.report.to_dict()}
        args.json.write_text(json.dumps(body, indent=2))
        print(f"report: {args.json}")
    return 0
