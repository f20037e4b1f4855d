"""One server's drain at shutdown, whatever its wire: refuse new requests, finish those in flight.

Both front ends drain the same way (``service.grpc.server``'s interceptor, ``service.http.drain``'s
middleware): from ``begin()`` on, every new request is refused with ``ShuttingDown`` (UNAVAILABLE /
503 from the one error table), and shutdown waits until nothing is in flight and nothing has
arrived for ``quiet_s``. The quiet period matters: requests already on their way when the drain
begins are then received and refused (a client retries them elsewhere) instead of being cut off
by the transport's own shutdown (a reset, or CANCELLED, which retry policies do not retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator

from service.core.errors import ShuttingDown

POLL_S = 0.01  # how often ``drained`` looks again


class Drain:
    """Whether the drain began, the requests in flight, the latest arrival (one event loop)."""

    def __init__(self, quiet_s: float) -> None:
        self.quiet_s = quiet_s
        self.draining = False
        self.in_flight = 0
        self.last_arrival = 0.0  # time.monotonic() of the latest request counted

    def begin(self) -> None:
        self.draining = True

    def reset(self) -> None:
        """Serve again (a server object started anew in the same process)."""
        self.draining = False

    def arrived(self) -> ShuttingDown | None:
        """Note a request's arrival; the error to refuse it with once draining, else None."""
        self.last_arrival = time.monotonic()
        return ShuttingDown() if self.draining else None

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Count one request in flight while the block runs."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def drained(self, grace_s: float, gone: Callable[[], bool] = lambda: False) -> bool:
        """Wait (at most ``grace_s``) until nothing is in flight and nothing arrived for
        ``quiet_s``, or ``gone()`` (no client left to answer); whether that happened in time."""
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            quiet = time.monotonic() - self.last_arrival >= self.quiet_s
            if gone() or (self.in_flight == 0 and quiet):
                return True
            await asyncio.sleep(POLL_S)
        return False
