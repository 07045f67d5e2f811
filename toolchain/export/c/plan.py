"""The float32 C plan: the network (a DAG of layers) turned into a few kernel calls.

Walking the layers once, in order, the plan

- folds a BatchNorm into the Conv/Linear it reads when nothing else reads that
  layer (``models.fold``; ``w' = w * g / sqrt(var + eps)``,
  ``b' = (b - mean) * g / sqrt(var + eps) + beta``, computed in float64 and
  rounded once to float32),
- fuses a ReLU into the kernel before it (conv, depthwise conv, dense, add)
  when it is that kernel's only reader,
- drops Flatten (NCHW memory order is already PyTorch's flatten order),
- turns Conv1d and 1-D pooling into their 2-D forms of height 1,
- gives every op the tensors it reads and the one it writes; ``memory``
  places them in one arena by liveness (``input`` and ``output`` are the
  caller's buffers).

Tiny example: ``Conv2d(1,4,3) -> BatchNorm(4) -> ReLU -> Flatten -> Linear(..,10)``
gives two ops, ``conv(input -> vst_arena + 0, relu)`` and ``dense(vst_arena + 0 -> output)``.

>>> ops, arena = float_plan(net, state)                    # doctest: +SKIP
>>> [(op.kind, op.srcs, op.dst, op.relu) for op in ops]    # doctest: +SKIP
[('conv', ['input'], 'vst_arena + 0', True), ('dense', ['vst_arena + 0'], 'output', False)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from toolchain.errors import VstError
from toolchain.export import check_exportable
from toolchain.export.c.memory import INPUT, plan_arena
from toolchain.models import graph
from toolchain.models import layers as L
from toolchain.models.fold import batchnorm_folds

# kernels that take a fused ReLU at their store
RELU_FUSES = ("conv", "dwconv", "dense", "add")


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
    """One kernel call. ``kind``: conv, dwconv, dense, normalize, relu, avgpool,
    maxpool, gap (global average pooling), add or copy."""

    kind: str
    layer: int                   # index of the layer in the list that starts it
    n_in: int
    n_out: int
    weight: np.ndarray | None = None   # (rows, cols): conv (oc, c*kh*kw), dwconv (oc, kh*kw),
    #                                    dense (out, in)
    bias: np.ndarray | None = None
    geom: ConvGeom | None = None       # conv, dwconv and pooling (channels-first)
    relu: bool = False
    mean: np.ndarray | None = None     # normalize: per-channel constants
    std: np.ndarray | None = None
    reads: list = field(default_factory=list)   # tensors read: INPUT or a layer index
    writes: object = None                       # the tensor written (the last layer it covers)
    srcs: list[str] = field(default_factory=list)   # where they are: C expressions
    dst: str = "output"

    @property
    def src(self) -> str:
        return self.srcs[0] if self.srcs else "input"

    def __repr__(self) -> str:
        return f"FloatOp({self.kind} L{self.layer} {self.srcs}->{self.dst} relu={self.relu})"


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


def _geom(layer, in_shape: L.Shape, out_shape: L.Shape) -> ConvGeom:
    """A convolution or pooling window as 2-D, channels-first (1-D: height 1)."""
    if len(in_shape) == 2:
        return ConvGeom(in_shape[0], 1, in_shape[1], out_shape[0], 1, out_shape[1],
                        1, layer.kernel, 1, layer.stride, 0, layer.padding)
    return ConvGeom(*in_shape, *out_shape, layer.kernel, layer.kernel,
                    layer.stride, layer.stride, layer.padding, layer.padding)


def _new_op(layer, i: int, in_shape: L.Shape, out_shape: L.Shape, p: dict) -> FloatOp:
    """The op of a layer that is not folded or fused into the op before it."""
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    if isinstance(layer, (L.Conv2d, L.Conv1d)):
        weight = _param(p, f"{i}.weight")
        kind = "dwconv" if layer.groups > 1 else "conv"
        return FloatOp(kind, i, n_in, n_out, weight.reshape(weight.shape[0], -1),
                       _param(p, f"{i}.bias"), _geom(layer, in_shape, out_shape))
    if isinstance(layer, L.Linear):
        return FloatOp("dense", i, n_in, n_out, _param(p, f"{i}.weight"), _param(p, f"{i}.bias"))
    if isinstance(layer, L.POOLS):
        kind = "avgpool" if isinstance(layer, (L.AvgPool2d, L.AvgPool1d)) else "maxpool"
        return FloatOp(kind, i, n_in, n_out, geom=_geom(layer, in_shape, out_shape))
    if isinstance(layer, L.GlobalAvgPool):
        return FloatOp("gap", i, n_in, n_out)
    if isinstance(layer, (L.Add, L.ReLU)):
        return FloatOp(layer.kind, i, n_in, n_out)
    if isinstance(layer, L.Normalize):
        channels = in_shape[0]
        mean = np.broadcast_to(np.asarray(layer.mean, np.float64), (channels,))
        std = np.broadcast_to(np.asarray(layer.std, np.float64), (channels,))
        if np.any(std == 0):
            raise VstError(f"C export: Normalize at layer {i} has std 0")
        return FloatOp("normalize", i, n_in, n_out, mean=mean, std=std)
    if isinstance(layer, L.BatchNorm):
        raise VstError(f"C export: BatchNorm at layer {i} does not follow a Conv/Linear layer "
                       "that nothing else reads, so it cannot be folded")
    raise VstError(f"C export: no C kernel for layer {i} ({layer.kind})")


def _ops(network: L.Network, p: dict) -> tuple[list[FloatOp], object]:
    """The ops and the tensor that holds the network output. A tensor is named
    by the last layer its op covers; a Flatten reads its input's tensor."""
    ops: list[FloatOp] = []
    shapes, in_shapes = network.shapes(), network.in_shapes()
    readers = graph.consumers(network.inputs)
    folds = batchnorm_folds(network)
    value: dict = {graph.INPUT: INPUT}      # layer -> the tensor holding its value
    producer: dict = {}                     # tensor -> the op writing it
    for i, layer in enumerate(network.layers):
        j = network.inputs[i][0]
        op = producer.get(value[j])
        # layer i may join the op that ends at layer j when nothing else reads j
        joins = op is not None and op.writes == j and readers[j] == [i]
        fuse_relu = isinstance(layer, L.ReLU) and joins and op.kind in RELU_FUSES \
            and not op.relu
        if i in folds:
            _fold_batchnorm(op, p, i, layer)
        if i in folds or fuse_relu or (isinstance(layer, L.Flatten) and joins):
            op.relu = op.relu or fuse_relu
            op.writes = value[i] = i
            producer[i] = producer.pop(j)
        elif isinstance(layer, L.Flatten):
            value[i] = value[j]
        else:
            op = _new_op(layer, i, in_shapes[i], shapes[i], p)
            op.reads = [value[r] for r in network.inputs[i]]
            op.writes = value[i] = i
            producer[i] = op
            ops.append(op)
    return ops, value[len(network.layers) - 1]


def op_row(k: int, name: str, kind: str, weight, geom: ConvGeom | None,
           storage: str | None) -> dict:
    """One row of the per-operator table of a generated inference (float or int8):
    its call index ``k``, what it computes, its MACs, its weight storage and the
    fraction of its weights that are nonzero."""
    macs = 0 if weight is None else weight.size * (geom.oh * geom.ow if geom else 1)
    density = None if weight is None else float(np.count_nonzero(weight) / max(weight.size, 1))
    return {"op": k, "name": name, "kind": kind, "macs": int(macs), "storage": storage,
            "density": density}


def float_plan(network: L.Network, state: dict) -> tuple[list[FloatOp], int]:
    """The ops of ``network`` (``srcs`` / ``dst`` placed) and the arena size in floats."""
    check_exportable(network, "C")
    ops, out = _ops(network, _numpy(state))
    for op in ops:
        if op.weight is not None:
            op.weight = op.weight.astype(np.float32)
            op.bias = op.bias.astype(np.float32)
    if out == INPUT:                 # no op (a Flatten alone): the output is the input
        n = math.prod(network.input_shape)
        ops.append(FloatOp("copy", 0, n, n, reads=[INPUT], writes="output"))
        out = "output"
    return ops, plan_arena(ops, {op.writes: op.n_out for op in ops}, output=out)
