"""A small public Python client for tta-serve's gRPC API (``tta_serve.v1.Classifier``).

So a script can classify a folder without generating stubs or knowing the wire format::

    from service.client import Client

    with Client("localhost:50051") as client:          # or "grpc://host:50051"
    # TLS, mutual TLS and a bearer token (docs/deploy.md):
    #   Client("grpcs://host:50051", ca_cert="ca.pem", client_cert="me.crt", client_key="me.key",
    #          token=Credentials.token_from())      # $TTA_SERVE_CLIENT_TOKEN
        p = client.predict("seven.png", tta=True)       # a path, or the encoded bytes
        print(p.label, p.probability, p.model, p.model_version)
        for path, result in zip(paths, client.predict_many(paths)):   # one PredictStream
            print(path, result.label if isinstance(result, Prediction) else result)
        report = client.evaluate("data/digits/valid")   # a folder of class folders
        print(report.accuracy, report.text())
        for info in client.models(): print(info.name, info.version, info.metrics)

Results are typed (frozen dataclasses). A failed call raises a ``ServiceError`` subclass chosen
by its gRPC status (``InvalidArgument``, ``TooLarge``, ``NotFound``, ``Unavailable``) carrying
the server's message; ``predict_many`` puts such an error in the failed image's place instead,
and keeps going. Only UNAVAILABLE (the server overloaded, starting or restarting) is retried,
with exponential backoff: any other status would fail the same way again, and so would a failed
TLS handshake, which raises ``Unavailable`` at once with OpenSSL's reason
(``service.client.connection``). A missing or wrong token raises ``Unauthenticated``, a token
without the call's scope ``PermissionDenied``.

The results (``service.client.results``), the exceptions (``service.client.errors``) and the file
helpers (``service.client.files``) live in modules of their own, which ``tta-serve predict``
shares; ``__all__`` below is this module's public API, as README shows it.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from service._proto.tta_serve.v1 import classifier_pb2 as pb
from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc
from service.client.connection import Credentials, open_channel, parse_url, tls_problem
from service.client.errors import (
    ClientError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServiceError,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UnreadableImage,
    error_for_number,
    error_from_rpc,
)
from service.client.files import ImageInput, image_files, labelled_files, read_image
from service.client.results import (
    ClassScore,
    Evaluation,
    ExecutionProvider,
    ModelInfo,
    Prediction,
    evaluation_from_proto,
    model_info_from_proto,
    prediction_from_proto,
)

__all__ = [
    "ClassScore",
    "Client",
    "ClientError",
    "Credentials",
    "Evaluation",
    "ExecutionProvider",
    "InvalidArgument",
    "ModelInfo",
    "NotFound",
    "PermissionDenied",
    "Prediction",
    "ServiceError",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "UnreadableImage",
    "image_files",
    "labelled_files",
]

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20  # the server's default; an evaluation PNG fits easily

T = TypeVar("T")
TTAChoice = bool | str | None  # True/"on", False/"off", "auto", None = the model's default
_MODES = {"off": pb.TTA_MODE_OFF, "on": pb.TTA_MODE_ON, "auto": pb.TTA_MODE_AUTO}


def answer_options(tta: TTAChoice, min_confidence: float | None) -> dict[str, Any]:
    """PredictRequest fields for a TTA choice and an abstention threshold (None: unset)."""
    if isinstance(tta, bool):
        tta = "on" if tta else "off"
    if tta is not None and tta not in _MODES:
        raise ValueError(f"tta must be True, False, 'on', 'off', 'auto' or None; got {tta!r}")
    options: dict[str, Any] = {"tta_mode": _MODES[tta] if tta else pb.TTA_MODE_UNSPECIFIED}
    if min_confidence is not None:
        options["min_confidence"] = float(min_confidence)
    return options


def grpc_target(url: str) -> str:
    """``grpc://host:port``, ``grpcs://host:port`` or ``host:port`` -> ``host:port``."""
    return parse_url(url)[0]


class Client:
    """A connection to one tta-serve gRPC server; thread-safe, reusable, closable.

    ``timeout_s`` bounds each unary call (and each image's wait in ``predict_many``);
    UNAVAILABLE is retried ``retries`` times, waiting ``backoff_s`` x 2^attempt (with jitter).
    ``grpcs://`` means TLS: ``ca_cert`` checks the server (default: the system's CAs),
    ``client_cert``/``client_key`` answer mutual TLS; ``token`` goes with every call.
    """

    def __init__(self, target: str = "localhost:50051", *, timeout_s: float = 60.0,
                 retries: int = 4, backoff_s: float = 0.25,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 ca_cert: str | Path | None = None, client_cert: str | Path | None = None,
                 client_key: str | Path | None = None, token: str | None = None) -> None:
        self.target, self.secure = parse_url(target)
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.credentials = Credentials(*(Path(p) if p else None
                                         for p in (ca_cert, client_cert, client_key)), token)
        self._channel = open_channel(self.target, self.secure, self.credentials, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_http_proxy", 0),  # a model server is usually on the local network
        ])
        self._stub = pb_grpc.ClassifierStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- calls

    def predict(self, image: ImageInput, *, tta: TTAChoice = None, top_k: int = 0,
                model: str = "", version: int = 0,
                min_confidence: float | None = None) -> Prediction:
        """Classify one image (a path or encoded bytes); top_k 0 = the server's default (5).

        tta: True/"on", False/"off", "auto", None = the model's default mode. min_confidence:
        None = the model's default; below it the answer says ``unsure`` (top-k still given).
        """
        request = pb.PredictRequest(image=read_image(image), top_k=top_k, model=model,
                                    version=version, **answer_options(tta, min_confidence))
        return prediction_from_proto(self._unary(self._stub.Predict, request))

    def predict_many(self, images: Iterable[ImageInput], *, tta: TTAChoice = None, top_k: int = 0,
                     model: str = "", version: int = 0, window: int = 64,
                     min_confidence: float | None = None) -> Iterator[Prediction | ClientError]:
        """Classify many images over one PredictStream; one result per image, in input order.

        At most ``window`` images are in flight (read, sent, not yet answered), so a folder of
        any size streams in bounded memory. A failed image yields its error (UnreadableImage,
        InvalidArgument, TooLarge ...) in its place; items the server answered UNAVAILABLE
        (overloaded) are retried one by one with backoff. A stream that breaks with UNAVAILABLE
        is reopened for the images not yet answered; any other broken stream raises.
        """
        stream = _PredictStream(self, iter(images), options=dict(
            top_k=top_k, model=model, version=version, **answer_options(tta, min_confidence)),
            window=max(1, window))
        yield from stream.results()

    def evaluate(self, data: str | Path | Sequence[tuple[ImageInput, str]], *,
                 tta: TTAChoice = False, model: str = "", version: int = 0,
                 min_confused: int = 1) -> Evaluation:
        """Evaluate a folder of class folders (FOLDER/CLASS/image), or (image, label) pairs.

        The images are streamed (one Evaluate client stream); the report is the server's.
        """
        items: Sequence[tuple[ImageInput, str]] = (
            labelled_files(data) if isinstance(data, str | Path) else data)
        options = pb.EvaluateOptions(model=model, version=version, min_confused=min_confused,
                                     tta_mode=answer_options(tta, None)["tta_mode"])

        def requests() -> Iterator[pb.EvaluateRequest]:
            yield pb.EvaluateRequest(options=options)
            for image, label in items:
                yield pb.EvaluateRequest(image=read_image(image), label=label)

        # An evaluation can take minutes: no deadline of its own, beyond a generous one per image.
        timeout = self.timeout_s + 0.5 * len(items)
        return evaluation_from_proto(self._retrying(lambda: self._stub.Evaluate(requests(),
                                                                      timeout=timeout)))

    def models(self) -> list[ModelInfo]:
        """Every served model (its served version), the default model first."""
        reply = self._unary(self._stub.ListModels, pb.ListModelsRequest())
        return [model_info_from_proto(m) for m in reply.models]

    def model(self, name: str = "", version: int = 0) -> ModelInfo:
        """One served model version; "" = the default model, 0 = its served version."""
        return model_info_from_proto(self._unary(self._stub.GetModel,
                                       pb.GetModelRequest(name=name, version=version)))

    # ---- retries

    def _unary(self, method: Callable[..., T], request: Any) -> T:
        return self._retrying(lambda: method(request, timeout=self.timeout_s))

    def _retrying(self, call: Callable[[], T]) -> T:
        """Run ``call``; on UNAVAILABLE wait and try again, at most ``retries`` more times."""
        for attempt in itertools.count():
            try:
                return call()
            except grpc.RpcError as e:
                error = self._explained(error_from_rpc(e))
                if not isinstance(error, Unavailable) or attempt >= self.retries or \
                        getattr(error, "tls", False):
                    raise error from None
                self._sleep(attempt)
        raise AssertionError("unreachable")

    def _explained(self, error: ClientError) -> ClientError:
        """UNAVAILABLE on a TLS channel: a handshake problem becomes its own message."""
        if not isinstance(error, Unavailable):
            return error
        if not self.secure:
            if "Socket closed" in error.message:  # what a TLS server does to plaintext
                return Unavailable(f"{error.message} (if the server serves TLS, use "
                                   f"grpcs://{self.target})")
            return error
        problem = tls_problem(self.target, self.credentials)
        if problem is None:
            return error
        explained = Unavailable(f"TLS with {self.target} failed: {problem}")
        explained.tls = True  # type: ignore[attr-defined]  # not retried
        return explained

    def _sleep(self, attempt: int) -> None:
        time.sleep(self.backoff_s * (2 ** attempt) * (0.5 + random.random()))


class _PredictStream:
    """The bookkeeping of one ``predict_many``: a bounded window, ordering, and reopening.

    gRPC's sync API consumes the request iterator on its own thread; a semaphore bounds the
    images in flight, ``pending`` keeps the bytes of every unanswered image (to resend them if
    the stream must be reopened), and results wait in ``done`` until every earlier one is ready.
    """

    def __init__(self, client: Client, images: Iterator[ImageInput], *, options: dict[str, Any],
                 window: int) -> None:
        self.client = client
        self.images = images
        self.options = options
        self.window = window
        self.lock = threading.Lock()
        self.next_index = 0  # the next image to take from ``images``
        self.exhausted = False
        self.pending: dict[int, bytes] = {}  # sent (or about to be), not yet answered
        self.done: dict[int, Prediction | ClientError] = {}
        self._out = 0  # the next result to hand out

    def _take(self) -> tuple[int, ImageInput] | None:
        with self.lock:
            if self.exhausted:
                return None
            image = next(self.images, None)
            if image is None:
                self.exhausted = True
                return None
            index, self.next_index = self.next_index, self.next_index + 1
            return index, image

    def _requests(self, resend: list[int], slots: threading.Semaphore,
                  cancelled: threading.Event) -> Iterator[pb.PredictRequest]:
        for index in resend:
            slots.acquire()
            if cancelled.is_set():
                return
            yield pb.PredictRequest(image=self.pending[index], request_id=str(index),
                                    **self.options)
        while (taken := self._take()) is not None:
            index, image = taken
            try:
                data = read_image(image)
            except UnreadableImage as e:
                with self.lock:
                    self.done[index] = e
                continue
            with self.lock:
                self.pending[index] = data
            slots.acquire()
            if cancelled.is_set():
                return  # the image stays pending: the next stream sends it
            yield pb.PredictRequest(image=data, request_id=str(index), **self.options)

    def _answer(self, response: pb.PredictResponse) -> None:
        index = int(response.request_id)
        with self.lock:
            data = self.pending.pop(index, b"")
        if response.status.code == 0:
            result: Prediction | ClientError = prediction_from_proto(response)
        else:
            result = error_for_number(response.status.code, response.status.message)
            if isinstance(result, Unavailable):  # overloaded: this image alone, with backoff
                try:
                    request = pb.PredictRequest(image=data, **self.options)
                    result = prediction_from_proto(self.client._unary(
                        self.client._stub.Predict, request))
                except ClientError as e:
                    result = e
        with self.lock:
            self.done[index] = result

    def _ready(self) -> list[Prediction | ClientError]:
        """Results that can be yielded now: consecutive from the next one to hand out."""
        with self.lock:
            ready = []
            while self._out in self.done:
                ready.append(self.done.pop(self._out))
                self._out += 1
        return ready

    def results(self) -> Iterator[Prediction | ClientError]:
        attempt = 0
        while True:
            slots = threading.Semaphore(self.window)
            cancelled = threading.Event()
            with self.lock:
                resend = sorted(self.pending)
            call = self.client._stub.PredictStream(self._requests(resend, slots, cancelled))
            try:
                for response in call:
                    slots.release()
                    self._answer(response)
                    yield from self._ready()
                break
            except grpc.RpcError as e:
                error = self.client._explained(error_from_rpc(e))
                cancelled.set()
                for _ in range(self.window):  # unblock gRPC's request thread, if it waits
                    slots.release()
                if not isinstance(error, Unavailable) or attempt >= self.client.retries:
                    raise error from None
                self.client._sleep(attempt)
                attempt += 1
            finally:
                call.cancel()
        yield from self._ready()  # unreadable files after the last answer
        if self.done or self.pending:
            raise ServiceError(f"the stream ended with {len(self.pending)} images unanswered")
