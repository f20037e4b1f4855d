"""Predictions of a trained model, plain and with test-time augmentation.

Views come from ``service.imaging.tta_views`` and are combined by ``service.imaging.combine_tta``
- the very functions the service uses - so the TTA accuracy recorded here is what the service
reproduces. All views of a batch go through the model in one forward pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from service.imaging import EvalSpec, TTASpec, combine_tta, decode_side
from training.augment import to_float_nchw
from training.data import Items, make_eval_loader

if TYPE_CHECKING:
    from training.distributed import DistContext

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    targets: np.ndarray  # (N,) int
    probs: np.ndarray  # (N, C) plain (center view)
    tta_probs: np.ndarray | None  # (N, C) combined views, or None
    losses: np.ndarray  # (N,) cross-entropy of the plain prediction

    @property
    def accuracy(self) -> float:
        return float((self.probs.argmax(1) == self.targets).mean())

    @property
    def tta_accuracy(self) -> float | None:
        if self.tta_probs is None:
            return None
        return float((self.tta_probs.argmax(1) == self.targets).mean())


@torch.no_grad()
def predict(model: torch.nn.Module, items: Items, *, eval_spec: EvalSpec, tta: TTASpec | None,
            device: torch.device, batch_size: int = 64, num_workers: int = 0,
            progress: bool = True, dist: DistContext | None = None,
            min_side: int | None = None) -> Predictions:
    """Plain predictions, and TTA ones when ``tta`` is given (one forward pass per batch).

    min_side: ``service.imaging.decode_side`` of the model (its eval spec and *its* TTA spec,
    even for plain predictions), as the servers decode; default: from ``tta``.

    With ``dist`` each rank predicts its unpadded shard and every rank gets all predictions, in
    item order: the same arrays as one process computes.
    """
    model.eval()
    if min_side is None:
        min_side = decode_side(eval_spec, tta)
    plain_from_views = tta is not None and "center" in tta.views
    loader = make_eval_loader(items, eval_spec=eval_spec, tta=tta if plain_from_views else None,
                              batch_size=batch_size, num_workers=num_workers, min_side=min_side)
    if dist is not None:
        loader = dist.shard_eval_loader(loader)
    probs, view_probs, targets = [], [], []
    for xb, yb in tqdm(loader, desc="evaluate" + (" (TTA)" if tta else ""), leave=False,
                       disable=None if progress else True):  # None: off when not a TTY
        n = len(yb)
        out = torch.softmax(model(to_float_nchw(xb.to(device))).float(), dim=1).cpu().numpy()
        if plain_from_views:
            per_view = out.reshape(n, len(tta.views), -1)
            view_probs.append(per_view)
            probs.append(per_view[:, tta.views.index("center")])
        else:
            probs.append(out)
        targets.append(yb.numpy())
    plain = np.concatenate(probs)
    y = np.concatenate(targets)
    tta_probs = None
    if tta is not None:
        if not plain_from_views:  # views without 'center': a second pass over the views alone
            views = predict_views(model, items, eval_spec=eval_spec, tta=tta, device=device,
                                  batch_size=batch_size, num_workers=num_workers, dist=dist,
                                  min_side=min_side)
        else:
            views = np.concatenate(view_probs)
        tta_probs = combine_tta(views, tta)
    losses = -np.log(np.clip(plain[np.arange(len(y)), y], 1e-12, None))
    if dist is not None:
        return Predictions(*(dist.gather_rows(a) for a in (y, plain, tta_probs, losses)))
    return Predictions(y, plain, tta_probs, losses)


@torch.no_grad()
def predict_views(model: torch.nn.Module, items: Items, *, eval_spec: EvalSpec, tta: TTASpec,
                  device: torch.device, batch_size: int = 64, num_workers: int = 0,
                  dist: DistContext | None = None, min_side: int | None = None) -> np.ndarray:
    """Per-view probabilities (N, V, C); with ``dist``, of this rank's shard."""
    loader = make_eval_loader(items, eval_spec=eval_spec, tta=tta, batch_size=batch_size,
                              num_workers=num_workers,
                              min_side=decode_side(eval_spec, tta) if min_side is None
                              else min_side)
    if dist is not None:
        loader = dist.shard_eval_loader(loader)
    chunks = []
    for xb, yb in loader:
        out = torch.softmax(model(to_float_nchw(xb.to(device))).float(), dim=1).cpu().numpy()
        chunks.append(out.reshape(len(yb), len(tta.views), -1))
    return np.concatenate(chunks)
