"""Model-input rows between processes through shared memory: a front-end worker writes a pass's
float32 rows into a segment, the inference process reads them in place (no pickled pixels).

Why segments on demand instead of one slab: models differ in input size (16 px digits, 224 px
xresnet50) and a hot reload can add a larger one; each worker keeps a few segments, grown to
the largest pass it has sent, and reuses them. A segment is in use from ``write`` until the
inference process's answer for that pass has come back (``release``).
"""

from __future__ import annotations

import contextlib
import threading
from multiprocessing import shared_memory

import numpy as np


class RowSegments:
    """The worker's side: shared-memory segments to write passes into, reused."""

    def __init__(self) -> None:
        self._free: list[shared_memory.SharedMemory] = []
        self._all: list[shared_memory.SharedMemory] = []
        self._lock = threading.Lock()

    def write(self, rows: np.ndarray) -> tuple[shared_memory.SharedMemory, tuple[int, ...]]:
        """A segment holding ``rows`` (float32, C order) from its first byte, and their shape."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        with self._lock:
            fits = [s for s in self._free if s.size >= rows.nbytes]
            if fits:
                segment = min(fits, key=lambda s: s.size)
                self._free.remove(segment)
            else:
                segment = shared_memory.SharedMemory(create=True, size=max(rows.nbytes, 1))
                self._all.append(segment)
        np.ndarray(rows.shape, np.float32, buffer=segment.buf)[...] = rows
        return segment, rows.shape

    def release(self, segment: shared_memory.SharedMemory) -> None:
        with self._lock:
            self._free.append(segment)

    def close(self) -> None:
        """Unlink every segment (the inference process has already stopped reading)."""
        with self._lock:
            for segment in self._all:
                segment.close()
                segment.unlink()
            self._all.clear()
            self._free.clear()


class AttachedSegments:
    """The inference process's side: segments by name, attached once, read in place."""

    def __init__(self) -> None:
        self._by_name: dict[str, shared_memory.SharedMemory] = {}
        self._lock = threading.Lock()

    def rows(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        with self._lock:
            segment = self._by_name.get(name)
            if segment is None:
                # Attaching registers the name with the resource tracker again: workers are
                # spawned from this process and share its tracker, so the name is already
                # there; the worker's unlink removes it (a killed worker's, the tracker at exit).
                segment = shared_memory.SharedMemory(name=name)
                self._by_name[name] = segment
        return np.ndarray(shape, np.float32, buffer=segment.buf)

    def close(self) -> None:
        with self._lock:
            for segment in self._by_name.values():
                # BufferError: a view is still alive somewhere; the OS frees it at exit
                with contextlib.suppress(BufferError):
                    segment.close()
            self._by_name.clear()
