"""Regrowth scores for dynamic sparse training (RigL on the robust loss).

Unstructured: the score of an inactive weight is ``|dL/dw|`` of the robust
loss at w = 0, read from the gradient of the current batch (masked weights are
held at 0 but still receive a dense gradient).

Structured: an inactive channel with zero weights has zero gradient everywhere
(ReLU'(0) = 0 in the bound and the forward pass), so ``dL/dw`` cannot rank
channels. Instead each inactive channel gets fresh incoming weights and zero
outgoing weights, which leaves the loss unchanged, and is scored by the
gradient norm of its outgoing weights: the first-order gain of switching it on.
The channels that win keep those fresh weights (their outgoing weights start
at 0, so growth does not change the network's function, as in RigL).
"""

from __future__ import annotations

import torch

from toolchain.train.certified import certified_loss, ibp_std


def grow_scores(run, xb, yb, eps: float, gen: torch.Generator) -> dict[int, torch.Tensor]:
    sp = run.sparsifier
    params = dict(run.module.named_parameters())
    if sp.mode == "unstructured":
        return {layer: params[f"{layer}.weight"].grad.abs().reshape(-1).cpu()
                for layer in sp.unit_masks}
    _fill_inactive(params, sp, gen)
    run.module.zero_grad(set_to_none=True)
    step_beta = 0.0   # IBP only: the score needs a gradient, not the tightest bound
    kappa = 1.0 if eps <= 0 else 0.0
    loss, _ = certified_loss(run.module, run.bounder, xb, yb, eps, step_beta, kappa, False)
    loss.backward()
    scores = {}
    for layer, group in sp.groups.items():
        square = 0
        for consumer, _ in group.consumers:          # every layer the channel feeds
            grad = params[f"{consumer}.weight"].grad
            square = square + grad.reshape(grad.shape[0], group.channels, -1).pow(2).sum(dim=(0, 2))
        scores[layer] = square.sqrt().cpu()
    return scores


@torch.no_grad()
def _fill_inactive(params, sp, gen: torch.Generator) -> None:
    """Fresh incoming weights (IBP-init scale), zero outgoing weights, neutral BN."""
    for layer, group in sp.groups.items():
        off = (~sp.unit_masks[layer]).nonzero().flatten()
        if len(off) == 0:
            continue
        for row in group.rows:                      # the layers that write the channel
            w = params[f"{row}.weight"]
            fresh = torch.randn((len(off),) + tuple(w.shape[1:]), generator=gen)
            w[off] = (fresh * ibp_std(w[0].numel())).to(w.device)
            params[f"{row}.bias"][off] = 0.0
        for bn in group.batchnorms:
            params[f"{bn}.weight"][off] = 1.0
            params[f"{bn}.bias"][off] = 0.0
        for consumer, per in group.consumers:
            weight = params[f"{consumer}.weight"]
            for c in off.tolist():
                weight[:, group.columns(c, per)] = 0.0
