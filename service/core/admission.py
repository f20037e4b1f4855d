"""Back-pressure and the batchers' company signal, counted in one place for the core.

At most ``max_pending`` requests are admitted at once (a request of many images, or a pixel
tensor, is one); beyond that Overloaded. ``images`` counts images being decoded or batched: a
batcher waits for company only while more of them are on their way than it has gathered.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from service.core.errors import Overloaded


class Admission:
    """Counters of admitted requests and images on their way; safe from any thread."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.pending = 0  # admitted requests
        self.images = 0  # images being decoded or batched
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Admit one request for the block, or raise Overloaded."""
        with self._lock:
            if self.pending >= self.max_pending:
                raise Overloaded(
                    f"the server is overloaded: {self.pending} requests are in flight (limit "
                    f"{self.max_pending}, --max-pending); retry with backoff")
            self.pending += 1
        try:
            yield
        finally:
            with self._lock:
                self.pending -= 1

    @contextlib.contextmanager
    def on_the_way(self, images: int) -> Iterator[None]:
        """``images`` are being decoded or batched for the block."""
        with self._lock:
            self.images += images
        try:
            yield
        finally:
            with self._lock:
                self.images -= images
