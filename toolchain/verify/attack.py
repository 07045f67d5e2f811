"""PGD attack in the eps-box: the falsifier of the verification cascade.

Projected gradient descent (Madry et al. 2018) on the worst margin
``max_{j != y} z_j - z_y``, from random starts in the box
``[max(x - eps, 0), min(x + eps, 1)]`` (``epsbox.eps_box``). A sample is falsified only by a
concrete input that lies in the box and really changes the prediction; the
caller re-checks both before believing it.

>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))  # doctest: +SKIP
>>> pgd(net, torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0]), eps=0.5)   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from toolchain.epsbox import INPUT_RANGE, eps_box


@dataclass(frozen=True)
class AttackConfig:
    steps: int = 50            # enough for small MNIST nets; PGD-50 is the usual yardstick
    restarts: int = 5          # random restarts find what one start misses
    step_fraction: float = 0.25  # step size as a fraction of eps
    seed: int = 0


def _worst_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{j != y} z_j - z_y`` per sample; > 0 means misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.max(1).values - true


def _starts(shape, sample_ids, seed: int, restarts: int) -> torch.Tensor:
    """Uniform [0, 1) random starts (restarts, N, ...) drawn per sample from a
    generator seeded by (seed, the sample's id): a sample gets the same starts
    whichever other samples share its batch (so shards agree with one run)."""
    out = torch.empty((restarts,) + tuple(shape))
    for k, sid in enumerate(sample_ids):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + int(sid))
        out[:, k] = torch.rand((restarts,) + tuple(shape[1:]), generator=gen)
    return out


def pgd(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
        cfg: AttackConfig | None = None, x_min: float = INPUT_RANGE[0],
        x_max: float = INPUT_RANGE[1], sample_ids=None):
    """Return ``(found, adversarial)``: per-sample bool and the input that broke it.

    Where nothing was found, ``adversarial`` holds the strongest input tried.
    ``sample_ids`` (default 0..N-1) seed each sample's random starts.
    """
    cfg = cfg or AttackConfig()
    module.eval()
    lower, upper = eps_box(x, eps, x_min, x_max)
    ids = range(len(x)) if sample_ids is None else sample_ids
    starts = _starts(x.shape, ids, cfg.seed, cfg.restarts)
    best = x.clone()
    best_margin = torch.full((len(x),), float("-inf"))
    step = cfg.step_fraction * eps
    for r in range(cfg.restarts):
        adv = (starts[r] * (upper - lower) + lower).requires_grad_(True)
        for _ in range(cfg.steps):
            margin = _worst_margin(module(adv), y)
            grad, = torch.autograd.grad(margin.sum(), adv)
            with torch.no_grad():
                adv = torch.max(torch.min(adv + step * grad.sign(), upper), lower)
            adv.requires_grad_(True)
        with torch.no_grad():
            margin = _worst_margin(module(adv), y)
            better = margin > best_margin
            best[better] = adv.detach()[better]
            best_margin = torch.where(better, margin, best_margin)
    with torch.no_grad():
        found = module(best).argmax(1) != y
    return found, best.detach()


def in_box(adv: torch.Tensor, x: torch.Tensor, eps: float, x_min: float = INPUT_RANGE[0],
           x_max: float = INPUT_RANGE[1], tol: float = 1e-6) -> torch.Tensor:
    """Per sample: does ``adv`` lie inside the clipped eps-box around ``x``?"""
    lower, upper = eps_box(x, eps, x_min, x_max)
    lower, upper = lower - tol, upper + tol
    flat = lambda t: t.reshape(len(t), -1)  # noqa: E731
    return ((flat(adv) >= flat(lower)) & (flat(adv) <= flat(upper))).all(1)
