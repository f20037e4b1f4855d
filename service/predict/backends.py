"""Where ``tta-serve predict`` / ``evaluate`` get their answers: this process, or a server.

``LocalBackend`` runs the inference core in this process (the servers' own code, so the answers
are the servers' answers); ``GrpcBackend`` goes through ``service.client.Client`` (one
PredictStream); ``HttpBackend`` posts ``/predict_batch`` in chunks and ``/evaluate`` a zip. All
three hand back the client's typed results and exceptions, so the command cannot tell them apart.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import io
import threading
import zipfile
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from service.client import Client
from service.client.client import TTAChoice
from service.client.connection import Credentials
from service.client.errors import (
    ClientError,
    Unavailable,
    UnreadableImage,
    error_for,
    error_for_http,
)
from service.client.files import labelled_files, read_image
from service.client.results import (
    Evaluation,
    ModelInfo,
    Prediction,
    evaluation_from_json,
    model_info_from_json,
    model_info_from_proto,
    prediction_from_json,
)
from service.core.errors import CoreError
from service.process.core_options import core_config_from_args, core_parser

HTTP_CHUNK = 32  # images per POST /predict_batch


class Backend(Protocol):
    """Where predictions come from: this process, a gRPC server, or an HTTP server."""

    description: str

    def model(self, name: str) -> ModelInfo: ...

    def predict(self, images: Iterable[Path], *, tta: TTAChoice, top_k: int,
                model: str, min_confidence: float | None = None,
                ) -> Iterator[Prediction | ClientError]: ...

    def evaluate(self, folder: Path, *, tta: TTAChoice, model: str,
                 min_confused: int) -> Evaluation: ...

    def close(self) -> None: ...


def _core_error(error: CoreError) -> ClientError:
    """A core error as the client exception a server would have produced."""
    return error_for(error.status, str(error))


def _local_prediction(p: Any) -> Prediction:
    fields = p.wire_fields()  # what a server would send, so the same as over a wire
    return Prediction(classes=tuple(p.classes),
                      **{**fields, "views_used": tuple(fields["views_used"])})


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
        from service.grpc.messages import model_info_to_proto

        try:
            return model_info_from_proto(model_info_to_proto(self.core.get_model(name)))
        except CoreError as e:
            raise _core_error(e) from None

    async def _predict(self, data: bytes, tta: TTAChoice, top_k: int, model: str,
                       min_confidence: float | None) -> Prediction | ClientError:
        try:
            return _local_prediction(await self.core.predict(
                data, model=model, tta=tta, top_k=top_k, min_confidence=min_confidence))
        except CoreError as e:
            return _core_error(e)

    def predict(self, images: Iterable[Path], *, tta: TTAChoice, top_k: int,
                model: str, min_confidence: float | None = None,
                ) -> Iterator[Prediction | ClientError]:
        in_flight: deque[concurrent.futures.Future] = deque()
        for path in images:
            future: concurrent.futures.Future = concurrent.futures.Future()
            try:
                data = read_image(path)
            except UnreadableImage as e:
                future.set_result(e)
            else:
                future = asyncio.run_coroutine_threadsafe(
                    self._predict(data, tta, top_k, model, min_confidence), self.loop)
            in_flight.append(future)
            while len(in_flight) >= self.window or (in_flight and in_flight[0].done()):
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()

    def evaluate(self, folder: Path, *, tta: TTAChoice, model: str,
                 min_confused: int) -> Evaluation:
        items = ((read_image(path), label) for path, label in labelled_files(folder))
        try:
            result = asyncio.run_coroutine_threadsafe(
                self.core.evaluate(items, model=model, tta=tta,
                                   min_confused=min_confused), self.loop).result()
        except CoreError as e:
            raise _core_error(e) from None
        return Evaluation(model=result.model, model_version=result.version, tta=result.tta,
                          report=result.report, confusion_png=result.png, ece=result.ece,
                          tta_mode=result.tta_mode, tta_answers=result.tta_answers,
                          calibrated=result.calibrated)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.core.stop()


class GrpcBackend:
    """A tta-serve gRPC server, through the public client."""

    def __init__(self, url: str, window: int = 64,
                 credentials: Credentials = Credentials()) -> None:
        c = credentials
        self.client = Client(url, ca_cert=c.ca_cert, client_cert=c.client_cert,
                             client_key=c.client_key, token=c.token)
        self.window = window
        scheme = "grpcs" if self.client.secure else "grpc"
        self.description = f"on {scheme}://{self.client.target}"

    def model(self, name: str) -> ModelInfo:
        return self.client.model(name)

    def predict(self, images: Iterable[Path], *, tta: TTAChoice, top_k: int,
                model: str, min_confidence: float | None = None,
                ) -> Iterator[Prediction | ClientError]:
        return self.client.predict_many(images, tta=tta, top_k=top_k, model=model,
                                        window=self.window, min_confidence=min_confidence)

    def evaluate(self, folder: Path, *, tta: TTAChoice, model: str,
                 min_confused: int) -> Evaluation:
        return self.client.evaluate(folder, tta=tta, model=model, min_confused=min_confused)

    def close(self) -> None:
        self.client.close()


def _http_error(status: int, body: Any) -> ClientError:
    message = body.get("error") if isinstance(body, dict) else None
    return error_for_http(status, message or f"HTTP {status}")


class HttpBackend:
    """A tta-serve HTTP server: ``POST /predict_batch`` in chunks, ``/evaluate`` with a zip."""

    def __init__(self, url: str, parallel: int = 2,
                 credentials: Credentials = Credentials()) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=600, trust_env=False,
                                 verify=_tls_context(credentials),
                                 headers={"authorization": f"Bearer {credentials.token}"}
                                 if credentials.token else None)
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
        return model_info_from_json(self._call("GET", f"/models/{name}"))

    def _chunk(self, paths: list[Path], tta: TTAChoice, top_k: int, model: str,
               min_confidence: float | None) -> list[Prediction | ClientError]:
        results: list[Prediction | ClientError | None] = [None] * len(paths)
        files = []
        for i, path in enumerate(paths):
            try:
                files.append((i, read_image(path)))
            except UnreadableImage as e:
                results[i] = e
        if files:
            data = {"top_k": str(top_k), **_http_answer_options(tta, min_confidence)}
            if model:
                data["model"] = model
            try:
                body = self._call("POST", "/predict_batch", data=data, files=[
                    ("images", (paths[i].name, b, "application/octet-stream"))
                    for i, b in files])
                answers: list[Prediction | ClientError] = [
                    prediction_from_json(item["prediction"]) if item["status"] == 200
                    else _http_error(item["status"], item) for item in body["results"]]
            except ClientError as e:  # the whole chunk failed (e.g. 503): each image says so
                answers = [e] * len(files)
            for (i, _), answer in zip(files, answers, strict=True):
                results[i] = answer
        return [r for r in results if r is not None]

    def predict(self, images: Iterable[Path], *, tta: TTAChoice, top_k: int,
                model: str, min_confidence: float | None = None,
                ) -> Iterator[Prediction | ClientError]:
        chunks = _chunks(images, HTTP_CHUNK)
        with concurrent.futures.ThreadPoolExecutor(self.parallel) as pool:
            in_flight: deque[concurrent.futures.Future] = deque()
            for chunk in chunks:
                in_flight.append(pool.submit(self._chunk, chunk, tta, top_k, model,
                                             min_confidence))
                if len(in_flight) > self.parallel:
                    yield from in_flight.popleft().result()
            while in_flight:
                yield from in_flight.popleft().result()

    def evaluate(self, folder: Path, *, tta: TTAChoice, model: str,
                 min_confused: int) -> Evaluation:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
            for path, label in labelled_files(folder):
                zf.writestr(f"{label}/{path.relative_to(folder / label).as_posix()}",
                            read_image(path))
        data = {"min_confused": str(min_confused), **_http_answer_options(tta, None)}
        if model:
            data["model"] = model
        body = self._call("POST", "/evaluate", data=data, files={
            "archive": ("set.zip", buffer.getvalue(), "application/zip")})
        return evaluation_from_json(body)

    def close(self) -> None:
        self.http.close()


def _http_answer_options(tta: TTAChoice, min_confidence: float | None) -> dict[str, str]:
    """Form fields of a TTA choice (unset: the model's default) and an abstention threshold."""
    data = {} if tta is None else {"tta": str(tta).lower()}
    if min_confidence is not None:
        data["min_confidence"] = str(min_confidence)
    return data


def _tls_context(credentials: Credentials) -> Any:
    """httpx's ``verify``: the system's CAs or ``--ca-cert``, plus a client certificate."""
    import ssl

    context = ssl.create_default_context(cafile=credentials.ca_cert)
    if credentials.client_cert:
        context.load_cert_chain(credentials.client_cert, credentials.client_key)
    return context


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
    credentials = Credentials(ca_cert=args.ca_cert, client_cert=args.client_cert,
                              client_key=args.client_key,
                              token=Credentials.token_from(args.token_file))
    if url.startswith(("http://", "https://")):
        return HttpBackend(url, credentials=credentials)
    return GrpcBackend(url, window=args.window, credentials=credentials)


def _local_core_config(args: argparse.Namespace) -> Any:
    """The core options as for a server; --model left unset means the core's own default."""
    if args.model is None:
        args = argparse.Namespace(**{**vars(args), "model": core_parser().get_default("model")})
    return core_config_from_args(args)
