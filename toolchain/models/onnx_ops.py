"""One handler per ONNX operator, each adding what it means to the network being read.

``onnx_import.py`` walks the graph and calls ``HANDLERS[op](node, reader,
data)`` with the node's data inputs (``Value``: the IR node that computes
the tensor and its per-sample shape); the handler returns the ``Value`` of
the node's output, a new layer or an existing one (a node that changes
nothing, e.g. a Flatten of flat data). Constants come from
``reader.const(node, i)``.

Mapping: Gemm, MatMul (+ Add of a constant: its bias) -> Linear; Conv (1-D /
2-D, any ``group``) -> Conv1d / Conv2d; Add of two tensors -> Add; Relu;
AveragePool / MaxPool -> AvgPool / MaxPool (1-D / 2-D); GlobalAveragePool
and ReduceMean over all positions -> GlobalAvgPool (whose unit axes the next
Flatten, Reshape (N, -1) or Squeeze drops); Flatten; Reshape;
BatchNormalization (inference); Sub / Div by per-channel constants -> Normalize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from toolchain.errors import VstError
from toolchain.models import layers as L
from toolchain.models.graph import INPUT


@dataclass(frozen=True)
class Value:
    """An ONNX tensor as the network sees it: the IR node computing it (-1: the
    input) and its per-sample shape. ``unit_axes``: trailing 1s the ONNX tensor
    still has (GlobalAveragePool's (N, C, 1, 1) is the IR's (C,)).
    ``bias_of``: a MatMul's output, whose bias a following Add may be."""

    node: int
    shape: L.Shape
    unit_axes: int = 0
    bias_of: bool = False


def label(node) -> str:
    return f"{node.op_type} ('{node.name or node.output[0]}')"


def attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def short(value) -> float:
    """The shortest decimal that is the same float32 (ONNX stores float32: 1e-5, not 9.99e-6)."""
    return float(str(np.float32(value)))


def _flat(node, v: Value) -> None:
    if len(v.shape) != 1:
        raise VstError(f"ONNX node {label(node)}: needs flat data (N, features), got "
                       f"(N, {', '.join(map(str, v.shape))}); flatten it first")


def _gemm(node, r, data):
    a = attrs(node)
    if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
        raise VstError(f"ONNX node {label(node)}: only alpha=beta=1, transA=0 is supported")
    _flat(node, data[0])
    b = r.const(node, 1)
    weight = b if a.get("transB", 0) else b.T
    bias = r.const(node, 2, optional=True)
    bias = np.zeros(weight.shape[0]) if bias is None else np.broadcast_to(bias, weight.shape[:1])
    return r.add(node, L.Linear(weight.shape[1], weight.shape[0]), data, weight=weight,
                 bias=bias)


def _matmul(node, r, data):
    weight = r.const(node, 1).T
    if weight.ndim != 2:
        raise VstError(f"ONNX node {label(node)}: MatMul needs a 2-D weight")
    _flat(node, data[0])
    out = r.add(node, L.Linear(weight.shape[1], weight.shape[0]), data, weight=weight,
                bias=np.zeros(weight.shape[0]))
    return Value(out.node, out.shape, bias_of=True)


def _add(node, r, data):
    if len(data) == 2:
        return r.add(node, L.Add(), data)
    v = data[0]
    if not v.bias_of or r.uses(node.input[0]) != 1:
        raise VstError(f"ONNX node {label(node)}: Add of a constant is supported only as a "
                       "MatMul's bias")
    params = r.params[v.node]
    params["bias"] = params["bias"] + np.broadcast_to(r.const(node, 1), params["bias"].shape)
    return Value(v.node, v.shape)


def window(node, rank: int, kernel=None) -> tuple[int, int, int]:
    """``(kernel, stride, padding)`` of a Conv / pooling node, one number each
    (vst's layers are square with equal strides and symmetric padding)."""
    a = attrs(node)
    kernel = list(a.get("kernel_shape", kernel or []))
    strides, pads = a.get("strides", [1] * rank), a.get("pads", [0] * 2 * rank)
    problems = [msg for bad, msg in (
        (any(d != 1 for d in a.get("dilations", [1])), "dilation"),
        (a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"), "auto_pad"),
        (len(set(kernel)) != 1, "non-square kernel"), (len(set(strides)) != 1, "unequal strides"),
        (len(set(pads)) != 1, "asymmetric pads"), (rank not in (1, 2), f"{rank}-D window"))
        if bad]
    if problems:
        raise VstError(f"ONNX node {label(node)}: unsupported {', '.join(problems)}")
    return int(kernel[0]), int(strides[0]), int(pads[0])


def _conv(node, r, data):
    weight = r.const(node, 1)
    rank = weight.ndim - 2
    kernel, stride, pad = window(node, rank, weight.shape[2:])
    groups = int(attrs(node).get("group", 1))
    bias = r.const(node, 2, optional=True)
    bias = np.zeros(weight.shape[0]) if bias is None else bias
    cls = L.Conv2d if rank == 2 else L.Conv1d
    layer = cls(weight.shape[1] * groups, weight.shape[0], kernel, stride, pad, groups=groups)
    return r.add(node, layer, data, weight=weight, bias=bias)


def _relu(node, r, data):
    return r.add(node, L.ReLU(), data)


def _pool(node, r, data):
    v = data[0]
    rank = len(v.shape) - 1
    kernel, stride, pad = window(node, rank)
    a = attrs(node)
    if a.get("ceil_mode", 0) and any((n + 2 * pad - kernel) % stride for n in v.shape[1:]):
        raise VstError(f"ONNX node {label(node)}: ceil_mode that changes the output size is "
                       "not supported")
    if node.op_type == "AveragePool":
        if pad and not a.get("count_include_pad", 0):
            raise VstError(f"ONNX node {label(node)}: AveragePool with padding must count "
                           "it (count_include_pad=1)")
        cls = L.AvgPool2d if rank == 2 else L.AvgPool1d
    else:
        if len([o for o in node.output if o]) > 1:
            raise VstError(f"ONNX node {label(node)}: MaxPool indices are not supported")
        cls = L.MaxPool2d if rank == 2 else L.MaxPool1d
    return r.add(node, cls(kernel, stride, pad), data)


def _global_pool(node, r, data):
    out = r.add(node, L.GlobalAvgPool(), data)
    return Value(out.node, out.shape, unit_axes=len(data[0].shape) - 1)


def _reduce_mean(node, r, data):
    v = data[0]
    rank = len(v.shape) + 1
    axes = sorted(int(x) % rank for x in attrs(node).get("axes", []))
    if len(v.shape) < 2 or axes != list(range(2, rank)):
        raise VstError(f"ONNX node {label(node)}: ReduceMean is supported over all positions "
                       f"(axes {list(range(2, rank))}) only, got axes {axes}")
    out = r.add(node, L.GlobalAvgPool(), data)
    return Value(out.node, out.shape, unit_axes=rank - 2 if attrs(node).get("keepdims", 1) else 0)


def _flatten(node, r, data):
    if attrs(node).get("axis", 1) != 1:
        raise VstError(f"ONNX node {label(node)}: only Flatten(axis=1) is supported")
    return to_flat(node, r, data[0])


def to_flat(node, r, v: Value) -> Value:
    """A Flatten layer, unless the data is flat already (then the node changes nothing)."""
    if len(v.shape) == 1:
        return Value(v.node, v.shape)
    return r.add(node, L.Flatten(), [v])


def _squeeze(node, r, data):
    v = data[0]
    axes = r.const(node, 1, optional=True)
    axes = attrs(node).get("axes") if axes is None else axes.tolist()
    rank = len(v.shape) + 1 + v.unit_axes
    unit = set(range(rank - v.unit_axes, rank))
    if not v.unit_axes or axes is None or {int(a) % rank for a in axes} != unit:
        raise VstError(f"ONNX node {label(node)}: Squeeze is supported only of the unit axes "
                       "after a global average pooling")
    return Value(v.node, v.shape)


def _reshape(node, r, data):
    """Reshape to (N, -1) is a Flatten anywhere; any other reshape that keeps
    the sample's values only of the network input, before the first layer,
    where it becomes the network's input shape (C order is kept, so a flat
    VNN-LIB box or data of the same size map onto it unchanged)."""
    v = data[0]
    shape = [int(s) for s in r.const(node, 1)]
    target = reshape_target(shape, v.shape + (1,) * v.unit_axes)
    if target is None:
        raise VstError(f"ONNX node {label(node)}: Reshape to {shape} does not keep the "
                       f"{math.prod(v.shape)} values of a sample "
                       f"(data (N, {', '.join(map(str, v.shape))}))")
    if len(target) == 1:
        return to_flat(node, r, v)
    if v.node == INPUT and not r.layers and r.uses(node.input[0]) == 1:
        r.input_shape = target
        return Value(v.node, target)
    raise VstError(f"ONNX node {label(node)}: after the first layer only Reshape to "
                   f"(N, -1) is supported, got {shape}")


def reshape_target(shape: list[int], current: L.Shape) -> L.Shape | None:
    """The per-sample shape after ONNX ``Reshape(shape)`` of data (N, *current), or None.

    The batch axis is kept when the target's first entry is 0 (copy), -1 or 1
    (the batch-1 graphs of VNN-COMP); a target without one (``[784]``) reads
    as one sample. ``(0, -1)`` on (N, 1, 28, 28) gives (784,); ``(1, 1, 28, 28)``
    on (N, 784) gives (1, 28, 28).
    """
    count = math.prod(current)
    full = (1,) + tuple(current)
    dims = [full[i] if s == 0 and i < len(full) else s for i, s in enumerate(shape)]
    if not dims or dims.count(-1) > 1 or any(d == 0 or d < -1 for d in dims):
        return None
    if len(dims) >= 2 and (shape[0] in (0, -1) or dims[0] == 1):
        dims = dims[1:]          # the batch axis
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        if count % known:
            return None
        dims = [count // known if d == -1 else d for d in dims]
    return tuple(dims) if math.prod(dims) == count else None


def _batchnorm(node, r, data):
    a = attrs(node)
    if a.get("training_mode", 0):
        raise VstError(f"ONNX node {label(node)}: BatchNormalization in training mode")
    scale, bias, mean, var = (r.const(node, k) for k in (1, 2, 3, 4))
    return r.add(node, L.BatchNorm(scale.size, short(a.get("epsilon", 1e-5))), data,
                 weight=scale, bias=bias, running_mean=mean, running_var=var)


def _per_channel(node, shape: L.Shape, value: np.ndarray) -> tuple[float, ...]:
    """A constant broadcast against (N, C, ...) that varies only along C (or is scalar)."""
    value = np.asarray(value, dtype=np.float32)
    rank = len(shape) + 1
    if value.ndim > rank:
        raise VstError(f"ONNX node {label(node)}: constant of shape {value.shape} "
                       f"for data of rank {rank}")
    value = value.reshape((1,) * (rank - value.ndim) + value.shape)
    others = value.shape[:1] + value.shape[2:]
    if any(d != 1 for d in others) or value.shape[1] not in (1, shape[0]):
        raise VstError(f"ONNX node {label(node)}: constant of shape {value.shape} is not "
                       f"per-channel for data (N, {', '.join(map(str, shape))})")
    return tuple(short(v) for v in value.reshape(-1))


def _sub(node, r, data):
    mean = _per_channel(node, data[0].shape, r.const(node, 1))
    return r.add(node, L.Normalize(mean, (1.0,) * len(mean)), data)


def _div(node, r, data):
    v = data[0]
    std = _per_channel(node, v.shape, r.const(node, 1))
    last = r.layers[v.node] if v.node >= 0 else None
    if (isinstance(last, L.Normalize) and set(last.std) == {1.0} and len(last.mean) == len(std)
            and r.uses(node.input[0]) == 1):
        r.layers[v.node] = L.Normalize(last.mean, std)   # Sub then Div: one Normalize
        return Value(v.node, v.shape)
    return r.add(node, L.Normalize((0.0,) * len(std), std), data)


HANDLERS = {"Gemm": _gemm, "MatMul": _matmul, "Add": _add, "Conv": _conv, "Relu": _relu,
            "AveragePool": _pool, "MaxPool": _pool, "GlobalAveragePool": _global_pool,
            "ReduceMean": _reduce_mean, "Flatten": _flatten, "Squeeze": _squeeze,
            "Reshape": _reshape, "BatchNormalization": _batchnorm, "Sub": _sub, "Div": _div}
# what may read a GlobalAveragePool's (N, C, 1, 1) output: these drop the unit axes
DROP_UNIT_AXES = ("Flatten", "Reshape", "Squeeze")
