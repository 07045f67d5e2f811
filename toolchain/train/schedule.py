"""Schedules of certified sparse training, each a pure function of the step.

eps: 0 during warm-up, then a smoothed ramp (Shi et al. 2021): polynomial
(x^4, "exponential-like") growth for the first quarter, then linear, the two
pieces meeting with the same slope, to the training eps.
beta (CROWN-IBP share of the bound): 1 -> 0 over the ramp (Zhang et al. 2020).
kappa (natural-loss weight): 1 during warm-up, linear to ``kappa_end``.
lr: step decays late in training. drop fraction: cosine decay to 0 at the
point where the mask freezes.

>>> s = Schedule(total=100, warmup=10, ramp=40, eps_max=0.2)
>>> (s.eps(5), round(s.eps(30), 4), s.eps(50), s.eps(99))
(0.0, 0.0769, 0.2, 0.2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

_MID = 0.25                       # where the polynomial part hands over to linear
_POWER = 4
_A = _MID / (_POWER - (_POWER - 1) * _MID)   # value at _MID that matches the slopes


@dataclass(frozen=True)
class Schedule:
    total: int                    # optimizer steps in the whole run
    warmup: int                   # steps at eps = 0
    ramp: int                     # steps of the eps ramp
    eps_max: float                # final training eps
    kappa_end: float = 0.0
    lr: float = 5e-4
    lr_decay_at: tuple[float, ...] = field(default=(0.75, 0.9))
    lr_decay_factor: float = 0.2
    drop_fraction: float = 0.3
    freeze_fraction: float = 0.25

    def ramp_progress(self, step: int) -> float:
        if step < self.warmup:
            return 0.0
        if self.ramp <= 0:
            return 1.0
        return min(1.0, (step - self.warmup) / self.ramp)

    def eps(self, step: int) -> float:
        if step < self.warmup:
            return 0.0
        p = self.ramp_progress(step)
        f = _A * (p / _MID) ** _POWER if p <= _MID else _A + (1 - _A) * (p - _MID) / (1 - _MID)
        return self.eps_max * f

    def beta(self, step: int) -> float:
        return 1.0 - self.ramp_progress(step) if step >= self.warmup else 1.0

    def kappa(self, step: int) -> float:
        return 1.0 - (1.0 - self.kappa_end) * self.ramp_progress(step)

    def learning_rate(self, step: int) -> float:
        decays = sum(step >= frac * self.total for frac in self.lr_decay_at)
        return self.lr * self.lr_decay_factor ** decays

    def mask_frozen_at(self) -> int:
        return int((1.0 - self.freeze_fraction) * self.total)

    def drop(self, step: int) -> float:
        stop = self.mask_frozen_at()
        if step >= stop or stop <= 0:
            return 0.0
        return self.drop_fraction * 0.5 * (1.0 + math.cos(math.pi * step / stop))
