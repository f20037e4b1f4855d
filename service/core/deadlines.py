"""A request's deadline, carried from the front end to the batcher by a context variable.

Why a context variable: every wire has its own way to say "answer within T" (a gRPC deadline,
HTTP's ``X-Request-Timeout`` header or ``timeout`` query parameter, the Open Inference
Protocol's ``timeout`` parameter), and the deadline must reach the batcher's queue through every
core method (predict, predict_batch, predict_pixels, evaluate) and the tasks they start. A front
end opens ``within(timeout_s)`` around its call into the core, as Go's ``context.WithTimeout``;
asyncio copies the variable into every task started inside, and the core reads it once per
request (``current``) and hands the absolute time to the batcher with the request's rows.

A request whose deadline has passed before its turn is never computed: the core refuses it on
arrival, before decoding it (in the decode pool) and before queueing it, and the batcher drops
it from its queue instead of running it; each raises ``DeadlineExceeded``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TypeVar

from service.core.errors import DeadlineExceeded, InvalidRequest

T = TypeVar("T")

_DEADLINE: ContextVar[float | None] = ContextVar("tta_serve_deadline", default=None)


@contextlib.contextmanager
def within(timeout_s: float | None) -> Iterator[None]:
    """Requests the core serves inside this block give up ``timeout_s`` seconds from now
    (None: no deadline; an enclosing, earlier deadline still holds)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    outer = _DEADLINE.get()
    if outer is not None and (deadline is None or outer < deadline):
        deadline = outer
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def current() -> float | None:
    """The current request's deadline in ``time.monotonic()`` seconds, None when it has none."""
    return _DEADLINE.get()


def expired(deadline: float | None, now: float | None = None) -> bool:
    return deadline is not None and (time.monotonic() if now is None else now) >= deadline


def check(deadline: float | None, stage: str) -> None:
    """Raise DeadlineExceeded when ``deadline`` has passed; ``stage`` says where it was noticed."""
    if expired(deadline):
        raise DeadlineExceeded(f"the request's deadline passed {stage}; it was not computed "
                               "(send a longer timeout, or retry when the server is less busy)")


def unless_expired(deadline: float | None, work: Callable[..., T],
                   on_drop: Callable[[str], None]) -> Callable[..., T]:
    """``work`` as a worker pool runs it: not at all once ``deadline`` has passed (the request
    waited its turn in the pool's queue too long); ``on_drop("deadline")`` counts it."""
    if deadline is None:
        return work

    def checked(*args: object) -> T:
        if expired(deadline):
            on_drop("deadline")
            check(deadline, "while it waited to be decoded")
        return work(*args)

    return checked


def parse_timeout_s(text: str, *, name: str, scale: float = 1.0) -> float:
    """A timeout as a client wrote it (``name`` is the header or parameter, for the message):
    a positive finite number, times ``scale`` to give seconds; InvalidRequest otherwise."""
    try:
        value = float(text) * scale
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise InvalidRequest(f"{name} must be a positive number of "
                             f"{'seconds' if scale == 1.0 else 'microseconds'}; got {text!r:.40}")
    return value
