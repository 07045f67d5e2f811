"""Compaction: physically remove pruned channels, so a structured-sparse network
becomes a smaller dense one with the same function.

Why not torch-pruning (DepGraph)? It discovers dependencies by tracing an
arbitrary torch graph. We already own the graph: the IR says exactly which
parameters each channel owns (``sparsity.groups``: a channel group spans
every layer an Add or a depthwise conv ties together), so slicing them here
is short, exact and needs no tracing; it also keeps the IR the one source of
truth that export and code generation read.

A channel is removed, from every layer of its group, when its weight rows are
all zero in every layer that writes it, so its output is a constant ``k``
after bias, BatchNorm and ReLU:

- ``k == 0``: it contributes nothing; remove it from writers and consumers;
- ``k != 0``, one layer writes it and only Linear layers read it (through
  BatchNorm, ReLU, Flatten or GlobalAvgPool): fold ``W[:, cols] @ k`` into the
  consumers' biases, then remove it (exact);
- ``k != 0`` otherwise (before a convolution, an Add, pooling): keep it (zero
  padding makes its effect position-dependent, so folding would not be exact).

Tiny example: Conv(1->3) -> ReLU -> Flatten -> Linear(3*4 -> 2) whose conv
channel 1 is pruned becomes Conv(1->2) -> ReLU -> Flatten -> Linear(2*4 -> 2).
BatchNorm can then be folded into the preceding Conv/Linear (default on).

The stage's entry, for ``vst compact`` and ``vst build`` alike:
``run_compact(model, data, out)`` (compact, measure, write ``out``).
"""

from __future__ import annotations

import dataclasses

import torch

from toolchain.models import layers as L
from toolchain.models.fold import batchnorm_folds
from toolchain.models.modelfile import VstModel, save_model
from toolchain.models import graph
from toolchain.sparsity.groups import channel_groups, channel_index, is_depthwise


def _channel_values(model: VstModel, group) -> dict[int, torch.Tensor]:
    """Per tensor of the group (by the layer that computes it), per channel: the
    value the channel has at every position when its rows are all 0 in every
    layer that writes it; NaN where that is not one number (live channels, or
    average pooling of a nonzero constant next to zero padding)."""
    s, net = model.state, model.network
    rows_zero = torch.stack([(s[f"{i}.weight"].reshape(group.channels, -1) == 0).all(dim=1)
                             for i in group.rows]).all(dim=0)
    value: dict[int, torch.Tensor] = {}
    for i in sorted(group.rows + group.batchnorms + group.through):
        layer, x = net.layers[i], net.inputs[i][0]
        if i in group.rows:             # weights all 0: the bias
            v = torch.where(rows_zero, s[f"{i}.bias"].double(), float("nan"))
        elif isinstance(layer, L.BatchNorm):
            scale, shift = layer.affine(*(s[f"{i}.{k}"].double() for k in L.BatchNorm.TENSORS))
            v = value[x] * scale + shift
        elif isinstance(layer, L.ReLU):
            v = value[x].clamp(min=0)
        elif isinstance(layer, L.Add):
            v = value[x] + value[net.inputs[i][1]]
        elif isinstance(layer, (L.AvgPool1d, L.AvgPool2d)) and layer.padding > 0:
            v = torch.where(value[x] == 0, value[x], float("nan"))
        else:                           # max pooling, global average, flatten: the same number
            v = value[x]
        value[i] = v
    return value


def _plan(model: VstModel, groups):
    """Channels kept per group and bias corrections for consumers.

    A channel whose writers' rows are all 0 goes when every consumer sees it as 0,
    or as a constant that a Linear consumer folds into its bias (exact); a nonzero
    constant into a convolution stays (zero padding makes its effect depend on
    the position)."""
    keep, bias_fix = {}, {}
    net = model.network
    for g in groups:
        value = _channel_values(model, g)
        seen = [(c, per, value[net.inputs[c][0]]) for c, per in g.consumers]
        dead = torch.ones(g.channels, dtype=torch.bool)
        for c, _, v in seen:
            dead &= (v == 0) | (~torch.isnan(v) & isinstance(net.layers[c], L.Linear))
        if dead.all():                  # keep one channel so every shape stays valid
            dead[0] = False
        for consumer, per, v in seen:
            fold = dead & (v != 0)
            if not fold.any():
                continue
            w = model.state[f"{consumer}.weight"].double()
            for c in fold.nonzero().flatten().tolist():
                cols = list(g.columns(c, per))
                bias_fix[consumer] = bias_fix.get(consumer, 0) + w[:, cols].sum(1) * v[c]
        keep[g.layer] = (~dead).nonzero().flatten()
    return keep, bias_fix


def _in_columns(kept: torch.Tensor, per: int) -> torch.Tensor:
    return torch.tensor([col for c in kept.tolist() for col in range(c * per, (c + 1) * per)],
                        dtype=torch.long)


def remove_channels(model: VstModel) -> VstModel:
    """The same function with dead channels removed from the network and the weights:
    from every layer of their group (rows, depthwise filters, BatchNorms, consumer
    columns)."""
    groups = channel_groups(model.network)
    keep, bias_fix = _plan(model, groups)
    row_group, col_group = channel_index(model.network, groups)
    state = {k: v.clone() for k, v in model.state.items()}
    masks = {k: v.clone() for k, v in model.masks.items()}
    layers = list(model.network.layers)
    for i in bias_fix:
        state[f"{i}.bias"] = (state[f"{i}.bias"].double() + bias_fix[i]).to(state[f"{i}.bias"].dtype)
    for i, layer in enumerate(layers):
        if not isinstance(layer, L.WEIGHTED):
            continue
        rows = keep[row_group[i].layer] if i in row_group else None
        cols = (_in_columns(keep[col_group[i][0].layer], col_group[i][1]) if i in col_group
                else None)
        for store in (state, masks):
            for name in (f"{i}.weight", f"{i}.bias"):
                if name in store:
                    t = store[name]
                    if rows is not None:
                        t = t[rows]
                    if cols is not None and name.endswith("weight"):
                        t = t[:, cols]
                    store[name] = t.contiguous()
        layers[i] = _resized(layer, rows, cols)
    for g in groups:
        for bn in g.batchnorms:
            for name in L.BatchNorm.TENSORS:
                for store in (state, masks):
                    if f"{bn}.{name}" in store:
                        store[f"{bn}.{name}"] = store[f"{bn}.{name}"][keep[g.layer]].contiguous()
            layers[bn] = dataclasses.replace(layers[bn], channels=len(keep[g.layer]))
    net = L.Network(model.network.input_shape, tuple(layers), model.network.inputs)
    masks = {k: v for k, v in masks.items() if not bool((v != 0).all())}
    return VstModel(net, state, masks, dict(model.record))


def _resized(layer, rows, cols):
    out = len(rows) if rows is not None else None
    if isinstance(layer, L.Linear):
        return dataclasses.replace(layer, out_features=out or layer.out_features,
                                   in_features=len(cols) if cols is not None else layer.in_features)
    if is_depthwise(layer):             # one filter per channel: in, out and groups alike
        n = out or layer.out_channels
        return dataclasses.replace(layer, in_channels=n, out_channels=n, groups=n)
    return dataclasses.replace(layer, out_channels=out or layer.out_channels,
                               in_channels=len(cols) if cols is not None else layer.in_channels)


def _copy_layer(src: dict, old: int, new: int, dst: dict) -> None:
    for key, value in src.items():
        idx, name = key.split(".", 1)
        if int(idx) == old:
            dst[f"{new}.{name}"] = value


def fold_batchnorm(model: VstModel) -> VstModel:
    """Fold each BatchNorm into the Conv/Linear it reads, when nothing else reads
    that layer (eval-mode statistics); the graph loses the BatchNorm nodes.

    ``W' = W * g``, ``b' = (b - mean) * g + beta`` with ``g = gamma / sqrt(var + eps)``;
    zeros of W stay zeros, so masks stay valid.
    """
    src, s, inputs = model.network.layers, model.state, model.network.inputs
    into = batchnorm_folds(model.network)
    folded = {i: j for j, i in into.items()}
    index = {graph.INPUT: graph.INPUT}
    layers, wiring, state, masks = [], [], {}, {}
    for i, layer in enumerate(src):
        if i in into:                   # the BatchNorm is gone: its readers read the layer
            index[i] = index[into[i]]
            continue
        new = index[i] = len(layers)
        _copy_layer(s, i, new, state)
        _copy_layer(model.masks, i, new, masks)
        if i in folded:
            b = folded[i]
            w, bias = s[f"{i}.weight"], s[f"{i}.bias"]
            g, shift = src[b].affine(*(s[f"{b}.{k}"].double() for k in L.BatchNorm.TENSORS))
            state[f"{new}.weight"] = (w.double() * g.view((-1,) + (1,) * (w.dim() - 1))).to(w.dtype)
            state[f"{new}.bias"] = (bias.double() * g + shift).to(bias.dtype)
        layers.append(layer)
        wiring.append(tuple(index[j] for j in inputs[i]))
    return VstModel(L.Network(model.network.input_shape, tuple(layers), tuple(wiring)), state,
                    masks, dict(model.record))


def layer_table(network: L.Network, state: dict) -> list[dict]:
    """Per weighted layer: parameters (all and nonzero), MACs, weight bytes (float32, int8)."""
    rows = []
    for i, (layer, macs) in enumerate(zip(network.layers, network.layer_macs())):
        params = L.layer_params(layer)
        if not params:
            continue
        n = sum(state[f"{i}.{k}"].numel() for k in params)
        nz = sum(int(torch.count_nonzero(state[f"{i}.{k}"])) for k in params)
        weights = state[f"{i}.weight"].numel() if f"{i}.weight" in state else 0
        rows.append({"layer": i, "kind": layer.kind, "params": n, "nonzero": nz, "macs": macs,
                     # int8 export: int8 weights, int32 biases (TFLite quantization spec)
                     "bytes_float32": 4 * n, "bytes_int8": weights + 4 * (n - weights)})
    return rows


def totals(rows: list[dict]) -> dict:
    return {k: sum(r[k] for r in rows)
            for k in ("params", "nonzero", "macs", "bytes_float32", "bytes_int8")}


def size_report(model: VstModel, smaller: VstModel) -> dict:
    """Sizes before and after (totals and per layer), and what compaction cannot do."""
    before, after = layer_table(model.network, model.state), layer_table(smaller.network,
                                                                         smaller.state)
    mode = model.record.get("mode", "dense")
    return {"before": totals(before), "after": totals(after), "layers_before": before,
            "layers_after": after, "mode": mode,
            "note": ("unstructured sparsity cannot be removed physically; it is kept as "
                     "zeros and left to sparse storage at export")
            if mode == "unstructured" else ""}


def compact(model: VstModel, *, fold_bn: bool = True) -> tuple[VstModel, dict]:
    """Remove dead channels (then fold BatchNorm); return the model and a size report."""
    smaller = remove_channels(model)
    if fold_bn:
        smaller = fold_batchnorm(smaller)
    report = {**size_report(model, smaller), "fold_batchnorm": fold_bn}
    smaller.record = {**model.record, "compacted_from": model.weights_hash(),
                      "compaction": {k: report[k] for k in ("before", "after", "fold_batchnorm")}}
    return smaller, report


def run_compact(model: VstModel, data, out, *, fold_bn: bool = True) -> tuple[VstModel, dict]:
    """The compaction stage (``vst compact`` and ``vst build``): ``compact`` the model,
    measure the largest output difference on ``data``'s test split, record it in
    the report and the compacted model's record, and write that model to ``out``
    (atomically). Returns ``(compacted model, report)``."""
    smaller, report = compact(model, fold_bn=fold_bn)
    diff = max_abs_diff(model, smaller, torch.from_numpy(data.x_test))
    report["max_abs_diff"] = diff
    smaller.record["compaction"]["max_abs_diff"] = diff
    save_model(out, smaller)
    return smaller, report


@torch.no_grad()
def max_abs_diff(a: VstModel, b: VstModel, x: torch.Tensor, batch: int = 500) -> float:
    """Largest |a(x) - b(x)| over the inputs (eval mode)."""
    ma, mb = a.torch_module().eval(), b.torch_module().eval()
    worst = 0.0
    for i in range(0, len(x), batch):
        worst = max(worst, float((ma(x[i:i + batch]) - mb(x[i:i + batch])).abs().max()))
    return worst
