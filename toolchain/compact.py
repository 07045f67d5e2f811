"""Compaction: physically remove pruned channels, so a structured-sparse network
becomes a smaller dense one with the same function.

Why not torch-pruning (DepGraph)? It discovers dependencies by tracing an
arbitrary torch graph. We already own the graph: the layer list says exactly
which parameters each channel owns (``sparsity.groups``), so slicing them here
is short, exact and needs no tracing; it also keeps the layer list the one
source of truth that export and code generation read.

A channel is removed when its weight row is all zero, so its output is a
constant ``k`` after bias, BatchNorm and ReLU:

- ``k == 0``: it contributes nothing; remove it from producer and consumer;
- ``k != 0`` and the consumer is a Linear layer: fold ``W[:, cols] @ k`` into
  the consumer's bias, then remove it (exact);
- ``k != 0`` before a convolution: keep it (zero padding makes its effect
  position-dependent, so folding would not be exact).

Tiny example: Conv(1->3) -> ReLU -> Flatten -> Linear(3*4 -> 2) whose conv
channel 1 is pruned becomes Conv(1->2) -> ReLU -> Flatten -> Linear(2*4 -> 2).
BatchNorm can then be folded into the preceding Conv/Linear (default on).
"""

from __future__ import annotations

import dataclasses

import torch

from toolchain.models import layers as L
from toolchain.models.modelfile import VstModel
from toolchain.sparsity.groups import channel_groups


def _channel_constants(model: VstModel, group) -> torch.Tensor:
    """Per channel: the constant output (after bias, BN, ReLU) if its weights are all 0, else NaN."""
    s, p = model.state, group.layer
    w = s[f"{p}.weight"].reshape(group.channels, -1)
    out = s[f"{p}.bias"].clone().double()
    if group.batchnorm is not None:
        b = group.batchnorm
        scale, shift = model.network.layers[b].affine(
            *(s[f"{b}.{k}"].double() for k in L.BatchNorm.TENSORS))
        out = out * scale + shift
    between = model.network.layers[p + 1:group.consumer]
    if any(isinstance(layer, L.ReLU) for layer in between):
        out = out.clamp(min=0)
    out[(w != 0).any(dim=1)] = float("nan")
    return out


def _plan(model: VstModel):
    """Channels kept per producer and bias corrections for consumers."""
    keep, bias_fix = {}, {}
    for g in channel_groups(model.network):
        const = _channel_constants(model, g)
        consumer = model.network.layers[g.consumer]
        dead = ~torch.isnan(const)
        if not isinstance(consumer, L.Linear):
            dead &= const == 0          # only exact zeros can leave a convolution
        if dead.all():                  # keep one channel so every shape stays valid
            dead[0] = False
        fold = dead & (const != 0)
        if fold.any():
            w = model.state[f"{g.consumer}.weight"].double()
            for c in fold.nonzero().flatten().tolist():
                cols = list(g.columns(c))
                bias_fix[g.consumer] = bias_fix.get(g.consumer, 0) + w[:, cols].sum(1) * const[c]
        keep[g.layer] = (~dead).nonzero().flatten()
    return keep, bias_fix


def _in_columns(group, kept: torch.Tensor) -> torch.Tensor:
    return torch.tensor([col for c in kept.tolist() for col in group.columns(c)], dtype=torch.long)


def remove_channels(model: VstModel) -> VstModel:
    """The same function with dead channels removed from the layer list and the weights."""
    keep, bias_fix = _plan(model)
    groups = {g.layer: g for g in channel_groups(model.network)}
    fed_by = {g.consumer: g for g in groups.values()}
    state = {k: v.clone() for k, v in model.state.items()}
    masks = {k: v.clone() for k, v in model.masks.items()}
    layers = list(model.network.layers)
    for i in bias_fix:
        state[f"{i}.bias"] = (state[f"{i}.bias"].double() + bias_fix[i]).to(state[f"{i}.bias"].dtype)
    for i, layer in enumerate(layers):
        if not isinstance(layer, L.WEIGHTED):
            continue
        rows = keep.get(i)
        cols = _in_columns(fed_by[i], keep[fed_by[i].layer]) if i in fed_by else None
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
        bn = groups[i].batchnorm if i in groups else None
        if bn is not None:
            for name in L.BatchNorm.TENSORS:
                for store in (state, masks):
                    if f"{bn}.{name}" in store:
                        store[f"{bn}.{name}"] = store[f"{bn}.{name}"][rows].contiguous()
            layers[bn] = dataclasses.replace(layers[bn], channels=len(rows))
    net = L.Network(model.network.input_shape, tuple(layers))
    masks = {k: v for k, v in masks.items() if not bool((v != 0).all())}
    return VstModel(net, state, masks, dict(model.record))


def _resized(layer, rows, cols):
    out = len(rows) if rows is not None else None
    if isinstance(layer, L.Linear):
        return dataclasses.replace(layer, out_features=out or layer.out_features,
                                   in_features=len(cols) if cols is not None else layer.in_features)
    return dataclasses.replace(layer, out_channels=out or layer.out_channels,
                               in_channels=len(cols) if cols is not None else layer.in_channels)


def _copy_layer(src: dict, old: int, new: int, dst: dict) -> None:
    for key, value in src.items():
        idx, name = key.split(".", 1)
        if int(idx) == old:
            dst[f"{new}.{name}"] = value


def fold_batchnorm(model: VstModel) -> VstModel:
    """Fold each BatchNorm into the Conv/Linear right before it (eval-mode statistics).

    ``W' = W * g``, ``b' = (b - mean) * g + beta`` with ``g = gamma / sqrt(var + eps)``;
    zeros of W stay zeros, so masks stay valid.
    """
    src, s = model.network.layers, model.state
    layers, state, masks = [], {}, {}
    i = 0
    while i < len(src):
        layer, new = src[i], len(layers)
        _copy_layer(s, i, new, state)
        _copy_layer(model.masks, i, new, masks)
        if isinstance(layer, L.WEIGHTED) and i + 1 < len(src) and isinstance(src[i + 1], L.BatchNorm):
            w, b = s[f"{i}.weight"], s[f"{i}.bias"]
            g, shift = src[i + 1].affine(*(s[f"{i+1}.{k}"].double() for k in L.BatchNorm.TENSORS))
            state[f"{new}.weight"] = (w.double() * g.view((-1,) + (1,) * (w.dim() - 1))).to(w.dtype)
            state[f"{new}.bias"] = (b.double() * g + shift).to(b.dtype)
            i += 1                      # the BatchNorm is gone
        layers.append(layer)
        i += 1
    return VstModel(L.Network(model.network.input_shape, tuple(layers)), state, masks,
                    dict(model.record))


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


def compact(model: VstModel, *, fold_bn: bool = True) -> tuple[VstModel, dict]:
    """Remove dead channels (then fold BatchNorm); return the model and a size report."""
    smaller = remove_channels(model)
    if fold_bn:
        smaller = fold_batchnorm(smaller)
    before, after = layer_table(model.network, model.state), layer_table(smaller.network,
                                                                         smaller.state)
    mode = model.record.get("mode", "dense")
    report = {"before": totals(before), "after": totals(after), "layers_before": before,
              "layers_after": after, "fold_batchnorm": fold_bn, "mode": mode,
              "note": ("unstructured sparsity cannot be removed physically; it is kept as "
                       "zeros and left to sparse storage at export")
              if mode == "unstructured" else ""}
    smaller.record = {**model.record, "compacted_from": model.weights_hash(),
                      "compaction": {k: report[k] for k in ("before", "after", "fold_batchnorm")}}
    return smaller, report


@torch.no_grad()
def max_abs_diff(a: VstModel, b: VstModel, x: torch.Tensor, batch: int = 500) -> float:
    """Largest |a(x) - b(x)| over the inputs (eval mode)."""
    ma, mb = a.torch_module().eval(), b.torch_module().eval()
    worst = 0.0
    for i in range(0, len(x), batch):
        worst = max(worst, float((ma(x[i:i + batch]) - mb(x[i:i + batch])).abs().max()))
    return worst
