"""One step of certified training: the loss and the bookkeeping around it.

Robust cross-entropy (Wong & Kolter 2018, CROWN-IBP): the worst-case logits
are bounded by the margin lower bounds ``m_j <= z_y - z_j``; the loss is the
cross-entropy of ``[0, -m_1, ..., -m_{K-1}]`` with target 0, an upper bound on
the worst-case cross-entropy over the eps-box.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def robust_ce(margin_lower: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on worst-case logits implied by margin lower bounds (N, K-1)."""
    zeros = torch.zeros(margin_lower.shape[0], 1, dtype=margin_lower.dtype,
                        device=margin_lower.device)
    logits = torch.cat([zeros, -margin_lower], dim=1)
    target = torch.zeros(margin_lower.shape[0], dtype=torch.long, device=margin_lower.device)
    return F.cross_entropy(logits, target)


def certified_loss(module, bounder, x, y, eps: float, beta: float, kappa: float,
                   use_crown_ibp: bool):
    """``kappa * CE(clean) + (1 - kappa) * robust_CE(bound)``; returns (loss, logits).

    At eps = 0 it is the natural loss alone (no bound is computed).
    """
    logits = module(x)
    natural = F.cross_entropy(logits, y)
    if eps <= 0.0 or kappa >= 1.0:
        return natural, logits
    if use_crown_ibp and beta > 0.0:
        lower = bounder.mixed_margin_lower(x, y, eps, beta)
    else:
        lower = bounder.margin_lower(x, y, eps, "ibp")
    return kappa * natural + (1.0 - kappa) * robust_ce(lower), logits


def ibp_std(n: float) -> float:
    """Standard deviation of IBP initialization for a unit that sums ``n`` inputs."""
    return math.sqrt(2 * math.pi) / n


@torch.no_grad()
def ibp_init(module: torch.nn.Module, live_inputs: dict[str, float] | None = None) -> None:
    """IBP initialization (Shi et al. 2021): w ~ N(0, (sqrt(2 pi) / n)^2), b = 0.

    ``n`` is the number of inputs a unit really sums: the fan-in, times the
    fraction of them left alive by a sparse mask (``live_inputs`` by module
    name). It keeps the interval width roughly constant from layer to layer at
    initialization, so early certified training neither explodes nor vanishes.
    """
    live_inputs = live_inputs or {}
    for name, layer in module.named_modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
            n = max(1.0, layer.weight[0].numel() * live_inputs.get(name, 1.0))
            layer.weight.normal_(0.0, ibp_std(n))
            if layer.bias is not None:
                layer.bias.zero_()


@torch.no_grad()
def evaluate(module, bounder, x, y, eps: float, batch: int = 500) -> tuple[float, float]:
    """Clean accuracy and IBP-verified accuracy at ``eps`` (eval mode)."""
    was_training = module.training
    module.eval()
    clean = sum(int((module(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
                for i in range(0, len(x), batch))
    verified = bounder.count_verified(x, y, eps, "ibp", batch) if eps > 0 else 0
    module.train(was_training)
    n = max(1, len(x))
    return clean / n, (verified / n if eps > 0 else clean / n)
