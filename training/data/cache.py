"""Decode each training photo once per run: the presized uint8 set, cached.

fastai's loaders (and ours before this) decode and resize every file again every epoch; on a
CPU that costs as much as a small network's forward pass. Here the whole training split is
presized once into one uint8 (N, P, P, 3) array:

- in memory when it fits (``max_memory_bytes``, a quarter of the machine's RAM by default);
- else in a memory-mapped ``.npy`` under ``cache_dir``, named by a key of every file's path,
  size and mtime plus the presize and interpolation, so the next run with the same data reuses
  it (written to a temporary name and renamed when complete: a killed run leaves no half cache);
- on a GPU, the array moves to the device when it fits, and batches are gathered there: an
  epoch then does no host work at all (``PresizedImages.to``).

Decoding runs on a thread pool (Pillow releases the GIL while decoding and resizing), with a
progress bar, and goes through ``service.imaging.decode_image`` with DCT-domain downscaling,
so a folder of 12 MP phone photos presizes at the speed of small JPEGs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from service.imaging import (
    RESAMPLING,
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    resize_center_crop,
)
from training.data.sources import Items
from training.errors import DataError

log = logging.getLogger(__name__)

CACHE_MODES = ("auto", "memory", "disk", "off")
_FORMAT = "presized/1"  # bump when the cached pixels would change for the same inputs
_DEVICE_FRACTION = 0.5  # of the GPU's free memory the cached set may take


class DecodeCounter:
    """Files decoded by this process's training data path; tests read it to show that the
    second and later epochs decode nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.count += n


DECODES = DecodeCounter()


def default_cache_dir() -> Path:
    """``$TTA_SERVE_CACHE`` or ``~/.cache/tta-serve``, then ``presized/``."""
    root = os.environ.get("TTA_SERVE_CACHE") or Path.home() / ".cache" / "tta-serve"
    return Path(root) / "presized"


def default_memory_budget() -> int:
    """A quarter of physical RAM: the rest is for the model, the batches and the system."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


PRESIZE_FITS = ("crop", "squish", "pad")


def decode_training_image(path: Path, min_side: int | None = None) -> Image.Image:
    """decode_image for the training data path: a DataError naming the file, and counted."""
    try:
        img = decode_image(path, min_side=min_side)
    except (ImageDecodeError, ImageTooLargeError) as e:
        # Only reachable with check_images=False: load_items would have skipped the file.
        raise DataError(f"cannot read training image {path}: {e}") from e
    DECODES.add()
    return img


def presize_one(path: Path, presize: int, interpolation: str, fit: str = "crop") -> np.ndarray:
    """decode (DCT-downscaled to ~presize) -> a (presize, presize, 3) uint8 square.

    fit (fastai's ``ResizeMethod``): "crop" the centre square of the shorter side resized to
    presize (on a 4:3 photo 12.5% of each long side is never trained on); "squish" the whole
    image into the square (every pixel is seen, the aspect ratio is not kept); "pad" the
    whole image, longer side to presize, reflected into the border (fastai's default padding).
    """
    if fit not in PRESIZE_FITS:
        raise ValueError(f"presize fit must be one of {PRESIZE_FITS}, got {fit!r}")
    img = decode_training_image(path, min_side=presize)
    if fit == "crop":
        return resize_center_crop(img, presize, presize, interpolation)
    if fit == "squish":
        return np.asarray(img.resize((presize, presize), RESAMPLING[interpolation]), np.uint8)
    w, h = img.size
    scale = presize / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    arr = np.asarray(img.resize(new, RESAMPLING[interpolation]), np.uint8)
    pad_y, pad_x = presize - arr.shape[0], presize - arr.shape[1]
    return np.pad(arr, ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2),
                        (0, 0)), mode="reflect" if min(arr.shape[:2]) > 1 else "edge")


@dataclass
class PresizedImages:
    """The presized training split: ``images`` uint8 (N, P, P, 3), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    where: str  # "memory", "disk (PATH)" or the device, for the log

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return self.images.numel()

    def to(self, device: torch.device) -> PresizedImages:
        """The set on ``device`` if it fits in half its free memory; else unchanged (batches
        are then gathered on the host and copied, pinned, as before)."""
        if device.type != "cuda" or self.images.device == device:
            return self
        free, _ = torch.cuda.mem_get_info(device)
        if self.nbytes > _DEVICE_FRACTION * free:
            log.info("presized set (%.1f GB) does not fit on %s (%.1f GB free): batches are "
                     "copied from the host", self.nbytes / 1e9, device, free / 1e9)
            return self
        return PresizedImages(self.images.to(device), self.labels.to(device), str(device))


def build_presized(
    items: Items,
    presize: int,
    interpolation: str = "bilinear",
    *,
    mode: str = "auto",
    cache_dir: str | Path | None = None,
    threads: int = 0,
    max_memory_bytes: int | None = None,
    progress: bool = True,
    fit: str = "crop",
) -> PresizedImages:
    """Decode and presize every item once (or load the disk cache a previous run wrote)."""
    if mode not in CACHE_MODES or mode == "off":
        raise ValueError(f"cache mode must be one of {CACHE_MODES[:3]}, got {mode!r}")
    n = len(items.paths)
    shape = (n, presize, presize, 3)
    nbytes = int(np.prod(shape))
    budget = default_memory_budget() if max_memory_bytes is None else max_memory_bytes
    on_disk = mode == "disk" or (mode == "auto" and nbytes > budget)
    labels = torch.as_tensor(items.labels, dtype=torch.int64)
    if not on_disk:
        arr = np.empty(shape, np.uint8)
        _fill(arr, items, presize, interpolation, fit, threads, progress)
        return PresizedImages(torch.from_numpy(arr), labels, "memory")

    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cache_key(items, presize, interpolation, fit)}.npy"
    if path.is_file():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == shape and arr.dtype == np.uint8:
            log.info("presized cache: reusing %s (%d images, %.1f GB)", path, n, nbytes / 1e9)
            return PresizedImages(_readonly_tensor(arr), labels, f"disk ({path})")
        log.warning("presized cache %s has shape %s, expected %s: rebuilding", path, arr.shape,
                    shape)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    try:
        _fill(arr, items, presize, interpolation, fit, threads, progress)
        arr.flush()
        del arr
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("presized cache: wrote %s (%d images, %.1f GB)", path, n, nbytes / 1e9)
    return PresizedImages(_readonly_tensor(np.load(path, mmap_mode="r")), labels,
                          f"disk ({path})")


def cache_key(items: Items, presize: int, interpolation: str, fit: str = "crop") -> str:
    """sha256 over the format, presize, interpolation, fit and every (path, size, mtime)."""
    h = hashlib.sha256(f"{_FORMAT}|{presize}|{interpolation}|{fit}|{len(items.paths)}".encode())
    for p in items.paths:
        st = os.stat(p)
        h.update(f"\n{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def _readonly_tensor(arr: np.ndarray) -> torch.Tensor:
    # torch warns on read-only arrays but only reads them here (gathering copies the batch).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def _fill(out: np.ndarray, items: Items, presize: int, interpolation: str, fit: str,
          threads: int, progress: bool) -> None:
    workers = threads or os.cpu_count() or 1
    job: Callable[[int], None] = lambda i: out.__setitem__(  # noqa: E731
        i, presize_one(items.paths[i], presize, interpolation, fit))
    with ThreadPoolExecutor(workers) as pool, tqdm(
        total=len(items.paths), desc=f"presizing to {presize} px", unit="img",
        disable=None if progress else True, leave=False,  # None: no bar when not a TTY
    ) as bar:
        for _ in pool.map(job, range(len(items.paths)), chunksize=64):
            bar.update()
