"""Layer-wise density budget: ERK (default) or uniform.

ERK (Erdős–Rényi-kernel, Evci et al. 2020, used by RigL and VeriSparse) gives
a layer density proportional to ``sum(weight.shape) / prod(weight.shape)``:
small layers stay dense, wide ones get sparse. First and last layers keep at
least the average density, and up to ``FIRST_LAST_FLOOR`` while that takes no
more than half the budget (every input pixel and every class needs a path; in
an MLP the first layer is the biggest, and a fixed floor would eat the budget). Counts are integers and add up to the global budget exactly
(unstructured) or as closely as whole channels allow (structured).

>>> allocate([100, 10_000, 100], [1, 1, 1], 0.1, "uniform")
[30, 943, 30]
"""

from __future__ import annotations

import math

from toolchain.sparsity.groups import channel_index

FIRST_LAST_FLOOR = 0.3


def _solve(sizes, scales, target, fixed):
    """Densities ``min(1, e*scale)`` (or fixed ones) whose weighted sum hits ``target``."""
    dense = set()
    while True:
        free = [i for i in range(len(sizes)) if i not in fixed and i not in dense]
        budget = target - sum(sizes[i] for i in dense) - sum(fixed[i] * sizes[i] for i in fixed)
        mass = sum(scales[i] * sizes[i] for i in free)
        e = budget / mass if mass > 0 else 0.0
        over = [i for i in free if e * scales[i] > 1.0]
        if not over:
            out = [fixed.get(i, 1.0 if i in dense else e * scales[i]) for i in range(len(sizes))]
            return [min(1.0, max(0.0, d)) for d in out]
        dense.update(over)


def allocate(sizes: list[int], unit: list[int], density: float, distribution: str,
             shapes: list[tuple[int, ...]] | None = None, dense_layers=()) -> list[int]:
    """Units kept per layer.

    ``sizes``: weights per layer; ``unit``: weights per unit (1 for single
    weights, fan-in for a channel); ``dense_layers``: indices kept whole
    (e.g. the classifier in structured mode).
    """
    n = len(sizes)
    target = density * sum(sizes)
    if distribution == "erk":
        scales = [sum(s) / math.prod(s) for s in shapes]
    else:
        scales = [1.0] * n
    fixed = {i: 1.0 for i in dense_layers}
    dens = _solve(sizes, scales, target, fixed)
    if density < 1.0:
        # First and last layers are never sparser than the average, nor than
        # FIRST_LAST_FLOOR when the budget allows it (at most half the budget).
        floor = max(density, min(FIRST_LAST_FLOOR, 0.5 * target / (sizes[0] + sizes[-1])))
        for i in {0, n - 1} - set(fixed):
            if dens[i] < floor:
                fixed[i] = min(1.0, floor)
        dens = _solve(sizes, scales, target, fixed)
    units = [sizes[i] // unit[i] for i in range(n)]
    kept = [min(units[i], max(1, round(dens[i] * units[i]))) for i in range(n)]
    _fix_total(kept, units, unit, round(target), frozen=set(dense_layers))
    return kept


def _fix_total(kept, units, unit, target, frozen) -> None:
    """Move single units so the kept weight count is as close to ``target`` as possible."""
    flexible = [i for i in range(len(kept)) if i not in frozen]
    if not flexible:
        return
    while True:
        total = sum(k * u for k, u in zip(kept, unit))
        gap = target - total
        if gap > 0:
            cand = [i for i in flexible if kept[i] < units[i] and unit[i] < 2 * gap]
            step = 1
        elif gap < 0:
            cand = [i for i in flexible if kept[i] > 1 and unit[i] < -2 * gap]
            step = -1
        else:
            return
        if not cand:
            return
        # the layer whose unit fits the gap best
        i = min(cand, key=lambda j: abs(abs(gap) - unit[j]))
        kept[i] += step


def live_weights(network, groups, alive: dict[int, int]) -> int:
    """Weights between live channels, with ``alive[group.layer]`` channels kept per group
    (a layer's rows counted on the group that owns them, its columns on the group
    that feeds them)."""
    rows, cols = channel_index(network, groups)
    total = 0
    for i, layer in enumerate(network.layers):
        if not hasattr(layer, "weight_shape"):
            continue
        shape = layer.weight_shape()
        n_rows = alive.get(rows[i].layer, shape[0]) if i in rows else shape[0]
        n_cols = shape[1]
        if i in cols:
            g, per = cols[i]
            n_cols = alive.get(g.layer, g.channels) * per
        total += n_rows * n_cols * math.prod(shape[2:])
    return total


def allocate_channels(network, groups, density: float) -> dict[int, int]:
    """Channels kept per group for structured sparsity.

    Removing a channel removes it from every layer of its group (rows of the
    layers writing it, depthwise filters, consumer inputs), so the budget is
    the share of weights between live channels, counted on the groups. Every layer keeps
    the same fraction ``r`` of its channels (at least one), with ``r`` chosen
    so that share is as close to ``density`` as possible, then single channels
    are moved while that brings it closer still.
    (ERK is for single weights: it would starve the narrow conv layers whose
    channels feed everything after them.)
    """
    total = live_weights(network, groups, {})
    target = density * total
    best = None
    for step in range(1, 1001):
        r = step / 1000
        alive = {g.layer: min(g.channels, max(1, round(r * g.channels))) for g in groups}
        gap = abs(live_weights(network, groups, alive) - target)
        if best is None or gap < best[0]:
            best = (gap, alive)
    gap, alive = best
    improved = True
    while improved:           # then single channels up or down, while that gets closer
        improved = False
        for g in groups:
            for step in (1, -1):
                trial = dict(alive)
                trial[g.layer] += step
                if not 1 <= trial[g.layer] <= g.channels:
                    continue
                t_gap = abs(live_weights(network, groups, trial) - target)
                if t_gap < gap:
                    gap, alive, improved = t_gap, trial, True
    return alive
