"""The float32 C plan: the layer list turned into a few kernel calls.

Walking the layer list once, the plan

- folds a BatchNorm into the Conv/Linear right before it
  (``w' = w * g / sqrt(var + eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta``,
  computed in float64 and rounded once to float32),
- fuses a ReLU into the kernel before it,
- drops Flatten (NCHW memory order is already PyTorch's flatten order),
- turns Conv1d into a Conv2d of height 1,
- assigns buffers: every op writes to the other of two ping-pong buffers,
  the first op reads ``input`` and the last writes ``output``.

Tiny example: ``Conv2d(1,4,3) -> BatchNorm(4) -> ReLU -> Flatten -> Linear(..,10)``
gives two ops, ``conv(input -> buf_a, relu)`` and ``dense(buf_a -> output)``.

>>> ops, buffer_sizes = float_plan(net, state)     # doctest: +SKIP
>>> [(op.kind, op.src, op.dst, op.relu) for op in ops]  # doctest: +SKIP
[('conv', 'input', 'buf_a', True), ('dense', 'buf_a', 'output', False)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from toolchain.errors import VstError
from toolchain.export import check_exportable
from toolchain.models import layers as L


@dataclass(frozen=True)
class ConvGeom:
    """A 2-D convolution, channels-first: input (c, h, w) -> output (oc, oh, ow)."""

    c: int
    h: int
    w: int
    oc: int
    oh: int
    ow: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int

    def fields(self) -> tuple[int, ...]:
        return (self.c, self.h, self.w, self.oc, self.oh, self.ow,
                self.kh, self.kw, self.sh, self.sw, self.ph, self.pw)


@dataclass
class FloatOp:
    """One kernel call. ``kind``: conv, dense, normalize, relu or copy."""

    kind: str
    layer: int                   # index of the layer in the list that starts it
    n_in: int
    n_out: int
    weight: np.ndarray | None = None   # (rows, cols): conv (oc, c*kh*kw), dense (out, in)
    bias: np.ndarray | None = None
    geom: ConvGeom | None = None
    relu: bool = False
    mean: np.ndarray | None = None     # normalize: per-channel constants
    std: np.ndarray | None = None
    src: str = "input"
    dst: str = "output"
    layer_end: int = -1          # index after the last layer this op covers (while planning)

    def __repr__(self) -> str:
        return f"FloatOp({self.kind} L{self.layer} {self.src}->{self.dst} relu={self.relu})"


def _numpy(state: dict) -> dict[str, np.ndarray]:
    out = {}
    for name, value in state.items():
        value = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        out[name] = np.asarray(value, dtype=np.float64)
    return out


def _param(p: dict, name: str) -> np.ndarray:
    if name not in p:
        raise VstError(f"C export: the weights have no {name!r}")
    if not np.all(np.isfinite(p[name])):
        raise VstError(f"C export: {name!r} contains NaN or infinity")
    return p[name]


def _fold_batchnorm(op: FloatOp, p: dict, i: int, bn: L.BatchNorm) -> None:
    scale, shift = bn.affine(*(_param(p, f"{i}.{k}") for k in L.BatchNorm.TENSORS))
    op.weight = op.weight * scale[:, None]
    op.bias = op.bias * scale + shift


def _conv_op(layer, i: int, in_shape: L.Shape, out_shape: L.Shape, p: dict) -> FloatOp:
    weight = _param(p, f"{i}.weight")
    if isinstance(layer, L.Conv1d):
        geom = ConvGeom(in_shape[0], 1, in_shape[1], out_shape[0], 1, out_shape[1],
                        1, layer.kernel, 1, layer.stride, 0, layer.padding)
    else:
        geom = ConvGeom(*in_shape, *out_shape, layer.kernel, layer.kernel,
                        layer.stride, layer.stride, layer.padding, layer.padding)
    return FloatOp("conv", i, math.prod(in_shape), math.prod(out_shape),
                   weight.reshape(weight.shape[0], -1), _param(p, f"{i}.bias"), geom)


def _ops(network: L.Network, p: dict) -> list[FloatOp]:
    ops: list[FloatOp] = []
    shapes = [network.input_shape] + network.shapes()
    for i, layer in enumerate(network.layers):
        n = math.prod(shapes[i])
        last = ops[-1] if ops else None
        fusable = last is not None and last.layer_end == i and last.kind in ("conv", "dense")
        if isinstance(layer, (L.Conv2d, L.Conv1d)):
            ops.append(_conv_op(layer, i, shapes[i], shapes[i + 1], p))
        elif isinstance(layer, L.Linear):
            ops.append(FloatOp("dense", i, n, layer.out_features, _param(p, f"{i}.weight"),
                               _param(p, f"{i}.bias")))
        elif isinstance(layer, L.BatchNorm):
            if not fusable or last.relu or last.weight.shape[0] != layer.channels:
                raise VstError(f"C export: BatchNorm at layer {i} does not follow a "
                               "Conv/Linear layer, so it cannot be folded")
            _fold_batchnorm(last, p, i, layer)
        elif isinstance(layer, L.ReLU):
            if fusable and not last.relu:
                last.relu = True
            else:
                ops.append(FloatOp("relu", i, n, n))
        elif isinstance(layer, L.Normalize):
            channels = shapes[i][0]
            mean = np.broadcast_to(np.asarray(layer.mean, np.float64), (channels,))
            std = np.broadcast_to(np.asarray(layer.std, np.float64), (channels,))
            if np.any(std == 0):
                raise VstError(f"C export: Normalize at layer {i} has std 0")
            ops.append(FloatOp("normalize", i, n, n, mean=mean, std=std))
        elif not isinstance(layer, L.Flatten):
            raise VstError(f"C export: no C kernel for layer {i} ({layer.kind})")
        if ops:
            ops[-1].layer_end = i + 1
    return ops


def _assign_buffers(ops: list[FloatOp], n_input: int) -> dict[str, int]:
    if not ops:
        ops.append(FloatOp("copy", 0, n_input, n_input))
    return ping_pong(ops)


def ping_pong(ops) -> dict[str, int]:
    """Each op reads ``src`` and writes the buffer its source is not (the last op
    writes ``output``); sets ``op.src``/``op.dst`` and returns the size of each
    buffer in elements. Shared by the float and int8 plans."""
    sizes = {"buf_a": 0, "buf_b": 0}
    src = "input"
    for k, op in enumerate(ops):
        op.src = src
        op.dst = "output" if k == len(ops) - 1 else ("buf_b" if src == "buf_a" else "buf_a")
        if op.dst in sizes:
            sizes[op.dst] = max(sizes[op.dst], op.n_out)
        src = op.dst
    return sizes


def op_row(k: int, name: str, kind: str, weight, geom: ConvGeom | None,
           storage: str | None) -> dict:
    """One row of the per-operator table of a generated inference (float or int8):
    its call index ``k``, what it computes, its MACs, its weight storage and the
    fraction of its weights that are nonzero."""
    macs = 0 if weight is None else weight.size * (geom.oh * geom.ow if geom else 1)
    density = None if weight is None else float(np.count_nonzero(weight) / max(weight.size, 1))
    return {"op": k, "name": name, "kind": kind, "macs": int(macs), "storage": storage,
            "density": density}


def float_plan(network: L.Network, state: dict) -> tuple[list[FloatOp], dict[str, int]]:
    """The ops of ``network`` and the float count of each ping-pong buffer."""
    check_exportable(network, "C")
    ops = _ops(network, _numpy(state))
    for op in ops:
        if op.weight is not None:
            op.weight = op.weight.astype(np.float32)
            op.bias = op.bias.astype(np.float32)
    return ops, _assign_buffers(ops, math.prod(network.input_shape))
