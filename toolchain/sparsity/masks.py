"""Sparse masks: random sparse initialization, enforcement, and the DST update.

``Sparsifier`` owns the masks of one network. Unstructured: one 0/1 entry per
weight of every Conv/Linear layer. Structured: one entry per channel of each
channel group (``groups.py``: the channels an Add or a depthwise conv ties
together are one unit), expanded to the rows, biases and BatchNorm affine
parameters of every layer of the group, so a pruned channel outputs 0.
Units are keyed by layer index (unstructured) or by the group's first layer.

The number of kept units per layer is fixed at initialization (the budget)
and every update drops and regrows the same number, so density never moves.

>>> import torch; from toolchain.models.zoo import build_network   # doctest: +SKIP
>>> net = build_network("mlp", (1, 4, 4), 3, widths=[8])          # doctest: +SKIP
>>> sp = Sparsifier(net, "unstructured", 0.5, "uniform", torch.Generator())  # doctest: +SKIP
>>> sp.density()                                                   # doctest: +SKIP
0.5
"""

from __future__ import annotations

import math

import torch

from toolchain.models.layers import Network
from toolchain.sparsity.budget import allocate, allocate_channels
from toolchain.sparsity.groups import channel_groups, channel_index, weighted_layers


def _is_weight(sp, name: str) -> bool:
    return name.endswith(".weight") and int(name.split(".")[0]) in sp.layers


def _mask_param(p: torch.Tensor, mask: torch.Tensor, optimizer) -> None:
    """``p *= mask`` in place (mask broadcast, moved to p's device), and p's Adam moments."""
    mask = mask.to(p.device)
    p.mul_(mask)
    if optimizer is not None:
        for value in optimizer.state.get(p, {}).values():
            if torch.is_tensor(value) and value.shape == p.shape:
                value.mul_(mask)


def _random_mask(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[:k]] = True
    return mask


class Sparsifier:
    def __init__(self, network: Network, mode: str, density: float, distribution: str,
                 gen: torch.Generator) -> None:
        self.network, self.mode, self.distribution = network, mode, distribution
        self.layers = weighted_layers(network)
        self.groups = ({g.layer: g for g in channel_groups(network)}
                       if mode == "structured" else {})
        self.row_group, self.col_group = channel_index(network, list(self.groups.values()))
        kept = self.budget(density)
        self.unit_masks = {layer: _random_mask(self._units(layer), kept[layer], gen)
                           for layer in (self.groups or self.layers)}
        self.target_density = density

    def _units(self, layer: int) -> int:
        if self.mode == "structured":
            return self.groups[layer].channels
        return math.prod(self.network.layers[layer].weight_shape())

    def budget(self, density: float) -> dict[int, int]:
        """Units kept per masked layer at ``density`` (channels when structured)."""
        if self.mode == "structured":
            return allocate_channels(self.network, list(self.groups.values()), density)
        shapes = [self.network.layers[i].weight_shape() for i in self.layers]
        sizes = [math.prod(s) for s in shapes]
        kept = allocate(sizes, [1] * len(sizes), density, self.distribution, shapes)
        return dict(zip(self.layers, kept))

    # -- views ------------------------------------------------------------
    def param_masks(self) -> dict[str, torch.Tensor]:
        """Float 0/1 masks by parameter name, in each parameter's shape.

        Structured: a weight is kept when its output channel and the channel
        feeding its input are both alive; bias and BatchNorm follow the output.
        """
        if self.mode == "unstructured":
            return {f"{layer}.weight": m.view(self.network.layers[layer].weight_shape()).float()
                    for layer, m in self.unit_masks.items()}
        out = {}
        for layer in self.layers:
            shape = self.network.layers[layer].weight_shape()
            rows = (self.unit_masks[self.row_group[layer].layer] if layer in self.row_group
                    else torch.ones(shape[0], dtype=torch.bool))
            cols = self.in_columns(layer, torch.ones(shape[1], dtype=torch.bool))
            w = rows.view(-1, 1) & cols.view(1, -1)
            out[f"{layer}.weight"] = w.view(shape[:2] + (1,) * (len(shape) - 2)).expand(shape).float()
        for key, g in self.groups.items():
            for name in g.param_names():
                if not name.endswith(".weight") or int(name.split(".")[0]) in g.batchnorms:
                    out[name] = self.unit_masks[key].float()
        return out

    def in_columns(self, layer: int, default=None):
        """Structured: which of ``layer``'s input columns are alive (``default``
        when no group feeds it)."""
        if layer not in self.col_group:
            return default
        g, per = self.col_group[layer]
        return self.unit_masks[g.layer].repeat_interleave(per)

    def kept_weights(self) -> int:
        """Conv/Linear weights that can be nonzero under the masks."""
        return int(sum(m.sum() for n, m in self.param_masks().items() if _is_weight(self, n)))

    def total_weights(self) -> int:
        return sum(math.prod(self.network.layers[l].weight_shape()) for l in self.layers)

    def density(self) -> float:
        """Kept Conv/Linear weights over all of them (biases and BN not counted)."""
        return self.kept_weights() / self.total_weights()

    def layer_density(self) -> dict[int, float]:
        return {layer: float(m.float().mean()) for layer, m in self.unit_masks.items()}

    def live_inputs(self) -> dict[str, float]:
        """Per layer (by module name), the fraction of its inputs a unit really sums.

        Unstructured: the layer's own density. Structured: the share of the
        producing layer's channels that are alive.
        """
        if self.mode == "unstructured":
            return {str(k): v for k, v in self.layer_density().items()}
        return {str(i): float(self.unit_masks[g.layer].float().mean())
                for i, (g, _) in self.col_group.items()}

    # -- enforcement ------------------------------------------------------
    @torch.no_grad()
    def apply(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero masked parameters in place, and their Adam moments."""
        params = dict(module.named_parameters())
        for name, mask in self.param_masks().items():
            _mask_param(params[name], mask, optimizer)

    @torch.no_grad()
    def zero_pruned_outputs(self, module: torch.nn.Module,
                            optimizer: torch.optim.Optimizer | None = None) -> None:
        """Soft pruning: zero what a pruned unit passes on, keep what it receives.

        Unstructured: the pruned weights. Structured: a pruned channel's
        columns in its consumer layer; its own weights stay, so it still gets
        a gradient once its outgoing weights move again.
        """
        params = dict(module.named_parameters())
        if self.mode == "unstructured":
            masks = {f"{layer}.weight": m.view(self.network.layers[layer].weight_shape())
                     for layer, m in self.unit_masks.items()}
        else:
            masks = {}
            for layer in self.col_group:
                shape = params[f"{layer}.weight"].shape
                masks[f"{layer}.weight"] = self.in_columns(layer).view(1, -1,
                                                                       *(1,) * (len(shape) - 2))
        for name, mask in masks.items():
            _mask_param(params[name], mask.float(), optimizer)

    def load_param_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Restore unit masks from saved parameter masks (resume)."""
        for layer in self.unit_masks:
            if self.mode == "structured":      # the bias mask is the channel mask
                self.unit_masks[layer] = masks[f"{layer}.bias"].bool().clone()
            else:
                self.unit_masks[layer] = masks[f"{layer}.weight"].reshape(-1).bool().clone()

    # -- dynamic sparse training -----------------------------------------
    @torch.no_grad()
    def update(self, module: torch.nn.Module, fraction: float, regrow: str,
               gen: torch.Generator, grow_scores=None) -> int:
        """Drop ``fraction`` of each layer's active units and regrow as many.

        Drop: smallest magnitude (L2 norm of the channel's weights when
        structured). Regrow (``rigl``): largest ``grow_scores[layer]`` among the
        inactive units (the robust-loss gradient magnitude, computed by the
        caller); ``random``: uniformly. Returns the number of units moved.
        """
        params = dict(module.named_parameters())
        moved = 0
        for layer, mask in self.unit_masks.items():
            if self.mode == "structured" and layer not in self.groups:
                continue
            magnitude = (self.row_norm(params, layer) if self.mode == "structured"
                         else params[f"{layer}.weight"].abs().reshape(-1)).cpu()  # masks: CPU
            active = mask.nonzero().flatten()
            inactive = (~mask).nonzero().flatten()
            k = min(int(fraction * len(active)), len(inactive))
            if k == 0:
                continue
            drop = active[magnitude[active].argsort()[:k]]
            if regrow == "rigl" and grow_scores is not None:
                score = grow_scores[layer][inactive]
                grow = inactive[score.argsort(descending=True)[:k]]
            else:
                grow = inactive[torch.randperm(len(inactive), generator=gen)[:k]]
            mask[drop] = False
            mask[grow] = True
            self._reset_grown(params, layer, grow)
            moved += k
        return moved

    @torch.no_grad()
    def prune_to(self, counts: dict[int, int], importance: dict[int, torch.Tensor], *,
                 revive: bool = False) -> int:
        """Keep the ``counts[layer]`` most important units of each layer.

        Without ``revive`` only active units compete (a budget that only
        shrinks); with it every unit does, so a pruned unit whose importance
        has grown back returns (soft pruning). Returns the units whose state
        changed. Ties go to the lower index (deterministic).
        """
        changed = 0
        for layer, mask in self.unit_masks.items():
            k = counts[layer]
            score = importance[layer].detach().to("cpu", torch.float64).clone()
            if not revive:
                score[~mask] = -math.inf
            order = torch.sort(-score, stable=True).indices
            new = torch.zeros_like(mask)
            new[order[:k]] = True
            changed += int((new != mask).sum())
            self.unit_masks[layer] = new
        return changed

    def row_norm(self, tensors: dict, key: int) -> torch.Tensor:
        """Per channel of group ``key``: the L2 norm of its rows in every layer that
        writes it (its incoming weights)."""
        g = self.groups[key]
        return torch.cat([tensors[f"{i}.weight"].reshape(g.channels, -1) for i in g.rows],
                         dim=1).norm(dim=1)

    def _reset_grown(self, params, layer: int, grow: torch.Tensor) -> None:
        """Regrown units start so that the network's function is unchanged.

        Unstructured (RigL): the new weights are 0. Structured: a channel whose
        incoming weights were 0 would stay dead under ReLU (its gradient is 0),
        so the caller gives it fresh incoming weights and here its *outgoing*
        weights in the consumer layer are set to 0 instead.
        """
        if self.mode == "unstructured":
            params[f"{layer}.weight"].view(-1)[grow] = 0.0
            return
        g = self.groups[layer]
        for consumer, per in g.consumers:
            weight = params[f"{consumer}.weight"]
            for c in grow.tolist():
                weight[:, g.columns(c, per)] = 0.0
