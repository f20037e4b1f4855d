"""Lookahead (Zhang et al. 2019) as airbench94 schedules it, a callback beside the weight EMA.

Every ``every`` steps the slow weights move towards the fast (trained) ones, ``slow = decay *
slow + (1 - decay) * fast``, and the fast weights restart from the slow ones. ``decay`` grows
with the run's progress as ``base * progress ** power`` (airbench: 0.95**5, cubed), so early
training is plain SGD and the end averages more and more steps; at the run's last step the
model takes the slow weights. BatchNorm's running statistics are averaged too (all floating
tensors of the state). Unlike the EMA (train.ema) it changes the trained weights themselves.

Our own code after airbench94's description (K. Jordan, arXiv 2404.00498). The slow weights are
not in last.pt: a resumed run restarts them from the weights it resumes with.
"""

from __future__ import annotations

import torch
from torch import Tensor

from training.callbacks import RunClock
from training.learner import Callback, Learner

DEFAULT_DECAY = 0.95**5
DEFAULT_POWER = 3.0


class Lookahead(Callback):
    order = 30  # after the optimiser step and the EMA update, before history and checkpoints

    def __init__(self, clock: RunClock, every: int = 5, decay: float = DEFAULT_DECAY,
                 power: float = DEFAULT_POWER) -> None:
        if every < 1 or not 0 <= decay <= 1:
            raise ValueError(f"lookahead needs every >= 1 and decay in [0, 1], got {every}, "
                             f"{decay}")
        self.clock, self.every, self.decay, self.power = clock, every, decay, power
        self.slow: dict[str, Tensor] | None = None

    def before_fit(self, learn: Learner) -> None:
        if self.slow is None:
            self.slow = {k: v.detach().clone() for k, v in learn.model.state_dict().items()
                         if v.is_floating_point()}

    @torch.no_grad()
    def after_batch(self, learn: Learner) -> None:
        last = self.clock.step >= self.clock.total_steps
        if self.slow is None or (self.clock.step % self.every and not last):
            return
        decay = 1.0 if last else self.decay * self.clock.progress**self.power
        fast = learn.model.state_dict()
        names = list(self.slow)
        slow = [self.slow[k] for k in names]
        now = [fast[k] for k in names]
        if decay < 1.0:
            torch._foreach_lerp_(slow, now, 1.0 - decay)
        torch._foreach_copy_(now, slow)
