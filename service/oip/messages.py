"""The Open Inference Protocol's messages, independent of the wire: tensors, requests, answers.

Both wires parse into these (``grpc_servicer`` from protobuf, ``http_routes`` from JSON and the
binary tensor data extension) and ``core_adapter`` answers them. A tensor's data is a numpy array
from either of the protocol's encodings: raw (row-major little-endian bytes; BYTES elements each
a 4-byte length, then the bytes) or typed values. ``OipError`` is a refused request, with its
``service.core.errors.Status``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.core.errors import CoreError, Status

# The protocol's numeric datatypes; BYTES is a list of byte strings (object array).
NUMPY_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(dtype).newbyteorder("<")
    for name, dtype in {
        "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
        "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
        "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    }.items()
}
DATATYPES = (*NUMPY_DTYPES, "BYTES")


class OipError(Exception):
    """A request the protocol answers with an error; ``str()`` is safe to send to the client."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def from_core_error(error: CoreError, context: str = "") -> OipError:
    """The protocol error for a core error; ``context`` (e.g. "image 2 of 4") prefixes it."""
    return OipError(error.status, f"{context}: {error}" if context else str(error))


def invalid(message: str) -> OipError:
    return OipError(Status.INVALID_ARGUMENT, message)


def not_ready(error: OipError) -> OipError:
    """KServe's HTTP model-ready answer for a model that cannot answer: NOT_FOUND stays (no
    such model or version), anything else is "not ready", INVALID_ARGUMENT (400)."""
    return error if error.status is Status.NOT_FOUND else invalid(error.message)


# ---- tensors


@dataclass(frozen=True)
class Tensor:
    """One named tensor. ``data`` has ``shape``; BYTES data is an object array of ``bytes``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Mapping[str, Any] = field(default_factory=dict)


def element_count(name: str, shape: Sequence[int]) -> int:
    if any(int(d) < 0 for d in shape):
        raise invalid(f"input {name!r} has shape {list(shape)}; a request's shape must be "
                      "concrete (no -1)")
    return math.prod(int(d) for d in shape)


def check_datatype(name: str, datatype: str) -> None:
    if datatype not in DATATYPES:
        raise invalid(f"input {name!r} has datatype {datatype!r}, which the protocol does not "
                      f"define; use one of {list(DATATYPES)}")


def split_bytes_elements(name: str, raw: bytes) -> list[bytes]:
    """A serialized BYTES tensor: each element a 4-byte little-endian length, then its bytes."""
    view, out, offset = memoryview(raw), [], 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise invalid(f"input {name!r}: BYTES data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise invalid(f"input {name!r}: a BYTES element claims {length} bytes but only "
                          f"{len(view) - offset} remain")
        out.append(bytes(view[offset:offset + length]))
        offset += length
    return out


def join_bytes_elements(elements: Sequence[bytes]) -> bytes:
    """The inverse of ``split_bytes_elements``."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def tensor_from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes,
                    parameters: Mapping[str, Any] | None = None) -> Tensor:
    """A tensor from the protocol's raw (binary) encoding: row-major little-endian elements."""
    check_datatype(name, datatype)
    count = element_count(name, shape)
    shape = tuple(int(d) for d in shape)
    if datatype == "BYTES":
        elements = split_bytes_elements(name, raw)
        if len(elements) != count:
            raise invalid(f"input {name!r} has shape {list(shape)} ({count} elements) but its "
                          f"data holds {len(elements)} BYTES elements")
        data = np.empty(count, dtype=object)
        data[:] = elements
        return Tensor(name, datatype, shape, data.reshape(shape), parameters or {})
    dtype = NUMPY_DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise invalid(f"input {name!r} has shape {list(shape)} and datatype {datatype}, i.e. "
                      f"{count * dtype.itemsize} bytes, but its data is {len(raw)} bytes")
    data = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)
    return Tensor(name, datatype, shape, data.reshape(shape), parameters or {})


def tensor_from_values(name: str, datatype: str, shape: Sequence[int], values: Any,
                       parameters: Mapping[str, Any] | None = None) -> Tensor:
    """A tensor from typed values (gRPC typed contents, JSON ``data``; nested or flat)."""
    check_datatype(name, datatype)
    count = element_count(name, shape)
    shape = tuple(int(d) for d in shape)
    if datatype == "BYTES":
        elements = list(_flatten(values))
        if len(elements) != count:
            raise invalid(f"input {name!r} has shape {list(shape)} ({count} elements) but "
                          f"{len(elements)} BYTES elements were sent")
        data = np.empty(count, dtype=object)
        data[:] = [_bytes_element(name, i, e) for i, e in enumerate(elements)]
        return Tensor(name, datatype, shape, data.reshape(shape), parameters or {})
    try:
        flat = np.asarray(values, dtype=NUMPY_DTYPES[datatype].newbyteorder("=")).reshape(-1)
    except (TypeError, ValueError) as e:
        raise invalid(f"input {name!r}: the data is not {datatype} values: {e}") from e
    if flat.size != count:
        raise invalid(f"input {name!r} has shape {list(shape)} ({count} elements) but "
                      f"{flat.size} values were sent")
    return Tensor(name, datatype, shape, flat.reshape(shape), parameters or {})


def _bytes_element(name: str, index: int, element: Any) -> bytes:
    """One BYTES element: a string (UTF-8 encoded, as JSON sends it) or bytes (gRPC typed
    contents). Anything else is refused: ``bytes(50000000)`` would be a 50 MB zero buffer."""
    if isinstance(element, str):
        return element.encode()
    if isinstance(element, bytes | bytearray):
        return bytes(element)
    shown = repr(element)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise invalid(f"input {name!r}: BYTES element {index} is {type(element).__name__} "
                  f"{shown}; each BYTES element must be a string")


def _flatten(values: Any) -> Any:
    if isinstance(values, list | tuple):
        for v in values:
            yield from _flatten(v)
    else:
        yield values


def raw_contents(tensor: Tensor) -> bytes:
    """The tensor in the protocol's raw (binary) encoding."""
    if tensor.datatype == "BYTES":
        return join_bytes_elements(list(tensor.data.reshape(-1)))
    return np.ascontiguousarray(tensor.data, dtype=NUMPY_DTYPES[tensor.datatype]).tobytes()


# ---- requests and answers


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for; ``classification`` > 0 asks for top-k strings."""

    name: str
    classification: int = 0
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferRequest:
    model: str
    version: str = ""  # "" = the served version
    inputs: Sequence[Tensor] = ()
    outputs: Sequence[RequestedOutput] = ()  # empty = every output
    id: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferResponse:
    model: str
    version: str
    id: str
    outputs: list[Tensor]
    parameters: dict[str, Any]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 = any size


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


def parse_version(model: str, version: str | int | None) -> int | None:
    """The protocol's version string -> the core's version (None = the served one)."""
    if version is None or version == "":
        return None
    text = str(version).strip()
    if not text.isdigit():
        raise OipError(Status.NOT_FOUND, f"model {model!r} has no version {text!r}; versions "
                                         "are whole numbers (omit it for the served version)")
    return int(text)


def bool_parameter(name: str, value: Any) -> bool:
    """A boolean request parameter; "true"/"false" strings count too (string_param, JSON)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise invalid(f"parameter {name!r} must be a boolean (true or false), got {value!r}")


def tta_parameter(name: str, value: Any) -> bool | str | None:
    """The ``tta`` request parameter: a boolean (on/off) or "auto", "on", "off"; absent (None) =
    the model's default mode."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in ("auto", "on", "off"):
        return value.strip().lower()
    try:
        return bool_parameter(name, value)
    except OipError:
        raise invalid(f"parameter {name!r} must be true, false, \"on\", \"off\" or \"auto\", "
                      f"got {value!r}") from None


def confidence_parameter(name: str, value: Any) -> float | None:
    """A probability-valued request parameter (min_confidence); absent = None."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not 0.0 <= number <= 1.0:
        raise invalid(f"parameter {name!r} must be a number in [0, 1], got {value!r}")
    return number
