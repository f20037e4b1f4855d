"""Multipart form limits: a request with more parts than the form parser takes gets 413, not 500.

Starlette's form parser (which BentoML uses) raises past its file and field limits, and BentoML
answers that with a 500 and a traceback. ``FormLimits`` (ASGI middleware) counts the parts as the
body streams past (``FormPartCounter``) and answers such a request itself with a 413 that says how
to send it instead; the BentoML service only installs it (``add_asgi_middleware``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.errors import TooManyParts
from service.http.schema import error_response

log = logging.getLogger(__name__)

# The form parser's limits (Starlette's ``Request.form``, as BentoML calls it: defaults). Past
# them the parser raises and BentoML answers 500; ``FormPartCounter`` finds such requests first.
_FORM_DEFAULTS = inspect.signature(Request.form).parameters


def _form_default(name: str) -> int:
    """One of ``Request.form``'s limits; 0 when Starlette no longer has it, and then
    ``service.http.patches`` (which checks ``Request.form``) refuses to serve."""
    parameter = _FORM_DEFAULTS.get(name)
    return parameter.default if parameter is not None and isinstance(parameter.default, int) else 0


MAX_FORM_FILES = _form_default("max_files")
MAX_FORM_FIELDS = _form_default("max_fields")


class FormPartCounter:
    """Counts the files and the other fields of a multipart body as it streams past.

    The same rule as Starlette's parser: a part whose Content-Disposition has a ``filename`` is a
    file, any other part a field. ``exceeded`` turns True at the first part over a limit. A body
    this parser cannot read is left to the application's parser to report (``broken``).
    """

    def __init__(self, boundary: bytes, max_files: int = MAX_FORM_FILES,
                 max_fields: int = MAX_FORM_FIELDS) -> None:
        self.max_files, self.max_fields = max_files, max_fields
        self.files = self.fields = 0
        self.broken = False
        self._header = b""
        self._value = b""
        self._disposition = b""
        self._parser = MultipartParser(boundary, {
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
        })

    @property
    def exceeded(self) -> bool:
        return self.files > self.max_files or self.fields > self.max_fields

    def feed(self, chunk: bytes) -> None:
        if self.broken or self.exceeded or not chunk:
            return
        try:
            self._parser.write(chunk)
        except Exception:  # malformed multipart: the application's parser says what is wrong
            self.broken = True

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header = self._value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"filename" in options:
            self.files += 1
        else:
            self.fields += 1
        self._disposition = b""


def too_many_parts_response(counter: FormPartCounter) -> JSONResponse:
    """413 for a multipart request over the form parser's limits; says how to send it instead."""
    return error_response(TooManyParts(
        f"a multipart request carries at most {counter.max_files} files and "
        f"{counter.max_fields} other fields; this one has more. Send a labelled set "
        "this large to POST /evaluate as one zip 'archive' of class folders "
        "(CLASS/image.png), and split larger /predict_batch requests"))


class TooManyFormParts(Exception):
    """What the application reads in place of a multipart body over the form parser's limits."""


class QuietTooManyFormParts(logging.Filter):
    """Drops BentoML's traceback of the request ``FormLimits`` answers (it logs one line);
    ``service.http.patches.install`` adds it to BentoML's API logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], TooManyFormParts))


class FormLimits:
    """ASGI middleware: a multipart request over the form parser's limits gets 413, not 500.

    Starlette's form parser takes at most ``MAX_FORM_FILES`` files and ``MAX_FORM_FIELDS`` other
    fields and raises past them, which BentoML answers with a 500. This counts the parts as the
    body streams to the application (``FormPartCounter``; no copy). At the first part over a
    limit it reads and drops the rest of the body (the client is still uploading), ends the
    application's read with ``TooManyFormParts``, drops the application's answer and sends the
    413, which says to send large labelled sets as a zip.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        counter = _form_part_counter(scope)
        if counter is None:
            await self.app(scope, receive, send)
            return
        answered = False  # the application's response started before any limit was passed

        async def counted_receive() -> Message:
            if counter.exceeded and not answered:
                raise TooManyFormParts("request body over the form limits")
            message = await receive()
            if message["type"] == "http.request":
                counter.feed(message.get("body", b""))
                if counter.exceeded and not answered:
                    more = message.get("more_body", False)
                    while more:  # drain, so the client gets to read the 413
                        message = await receive()
                        more = message["type"] == "http.request" and message.get("more_body")
                    raise TooManyFormParts("request body over the form limits")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if counter.exceeded and not answered:
                return  # the 413 below replaces it
            answered = True
            await send(message)

        with contextlib.suppress(TooManyFormParts):  # the application let it through
            await self.app(scope, counted_receive, guarded_send)
        if counter.exceeded and not answered:
            log.warning("%s %s: refused a multipart body of more than %d files or %d fields "
                        "(413)", scope.get("method"), scope.get("path"), counter.max_files,
                        counter.max_fields)
            await too_many_parts_response(counter)(scope, receive, send)


def _form_part_counter(scope: Scope) -> FormPartCounter | None:
    """A counter for a multipart/form-data HTTP request; None for any other."""
    if scope["type"] != "http":
        return None
    content_type = next((v for k, v in scope.get("headers", ()) if k == b"content-type"), b"")
    media_type, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        return None
    return FormPartCounter(boundary)
