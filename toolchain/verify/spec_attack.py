"""PGD on a linear output specification: the falsifier of complete verification.

The unsafe region is a disjunction of conjunctions ``A y <= c`` over the
outputs ``y = f(x)`` for ``x`` in a box. For each disjunct we minimize the
worst row violation ``max_i (A_i y - c_i)`` by projected sign-gradient steps
from seeded random starts; a value <= 0 is a candidate counterexample, which
``unsafe_at`` re-checks on the float32 model before anyone believes it.
"""

from __future__ import annotations

import numpy as np
import torch


def unsafe_at(module, x: np.ndarray, input_shape, lower, upper, disjuncts) -> bool:
    """Does float32 input ``x`` lie in the box and meet some disjunct on ``module``?"""
    x = np.asarray(x, np.float32).reshape(-1)
    if not (np.all(x >= np.asarray(lower, np.float32).reshape(-1))
            and np.all(x <= np.asarray(upper, np.float32).reshape(-1))):
        return False
    with torch.no_grad():
        y = module(torch.from_numpy(x).reshape((1,) + tuple(input_shape))).double().reshape(-1)
    y = y.numpy()
    return any(bool(np.all(a @ y <= c)) for a, c in disjuncts)


def spec_pgd(module, input_shape, lower, upper, disjuncts, *, steps: int = 100,
             restarts: int = 10, seed: int = 0, step_fraction: float = 0.1, starts=None):
    """A re-checked counterexample (float32, input shape) or ``None``.

    All restarts of all disjuncts run as one batch; the step per coordinate is
    ``step_fraction`` of the box's width there, shrinking over the steps.
    ``starts`` (M inputs inside the box): start from these instead, each
    against every disjunct (branch and bound passes its domains' points).
    """
    shape = (1,) + tuple(input_shape)
    lo = torch.as_tensor(np.asarray(lower, np.float32)).reshape(shape)
    hi = torch.as_tensor(np.asarray(upper, np.float32)).reshape(shape)
    gen = torch.Generator().manual_seed(int(seed))
    n_d = len(disjuncts)
    rows = [torch.as_tensor(np.asarray(a, np.float32)) for a, _ in disjuncts]
    offs = [torch.as_tensor(np.asarray(c, np.float32)) for _, c in disjuncts]
    if starts is None:
        starts = torch.rand((restarts * n_d,) + tuple(input_shape), generator=gen)
        starts[0:n_d] = 0.5                        # one start at the box centre per disjunct
        adv = lo + starts * (hi - lo)
    else:
        points = torch.as_tensor(np.asarray(starts, np.float32)).reshape((-1,) + shape[1:])
        restarts = len(points)
        adv = torch.max(torch.min(points.repeat_interleave(n_d, 0), hi), lo)
    width = (hi - lo)
    module.eval()
    for t in range(steps):
        adv.requires_grad_(True)
        y = module(adv)
        loss = _violation(y, rows, offs, restarts)
        grad, = torch.autograd.grad(loss.sum(), adv)
        size = step_fraction * (1.0 - t / steps) + 1e-3
        with torch.no_grad():
            adv = torch.max(torch.min(adv - size * width * grad.sign(), hi), lo)
    with torch.no_grad():
        worst = _violation(module(adv), rows, offs, restarts)
    for k in torch.argsort(worst).tolist():
        if float(worst[k]) > 1e-3 * (1.0 + abs(float(worst[k]))):
            break
        x = adv[k].detach().numpy().astype(np.float32)
        if unsafe_at(module, x, input_shape, lower, upper, disjuncts):
            return x
    return None


def _violation(y: torch.Tensor, rows, offs, restarts: int) -> torch.Tensor:
    """Per batch row: ``max_i (A_i y - c_i)`` for the disjunct that row attacks."""
    n_d = len(rows)
    parts = []
    for d in range(n_d):
        idx = torch.arange(d, len(y), n_d)
        parts.append((idx, (y[idx] @ rows[d].T - offs[d]).max(1).values))
    out = torch.zeros(len(y), dtype=y.dtype)
    for idx, v in parts:
        out = out.index_put((idx,), v)
    return out
