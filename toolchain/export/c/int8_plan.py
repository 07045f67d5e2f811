"""The int8 C plan: a .tflite graph turned into kernel calls with TFLite's numbers.

Every constant the C code needs is computed here exactly as the TFLite Micro
reference kernels compute it in their Prepare step:

- per output channel, ``QuantizeMultiplier(input_scale * weight_scale[c] /
  output_scale)`` in double precision -> (Q31 multiplier, shift); for a
  per-tensor FULLY_CONNECTED the product ``input_scale * weight_scale`` is
  taken in float32 first, as TFLM's ``GetQuantizedConvolutionMultipler`` does;
- the fused activation as a clamp range of the output (``zero_point +
  round(f / scale)``, round half away from zero);
- SAME padding as ``ComputePaddingWithOffset`` (the extra odd pixel goes after).

Tensors are channels-last as in the .tflite file. Buffers: the ops form a
chain; each writes the other of two ping-pong buffers (reshapes are free, they
rename a buffer); the first reads ``input``, the last writes ``output``.

>>> quantize_multiplier(0.5), quantize_multiplier(0.75)
((1073741824, 0), (1610612736, 0))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from toolchain.errors import VstError
from toolchain.export.c.plan import ConvGeom, ping_pong
from toolchain.export.c.tflite_graph import (ALIAS_OPS, FLOAT32, INT8, Graph, Op, Tensor,
                                             activation_names, padding_names)


def tflite_round(x: float) -> int:
    """std::round: half away from zero."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: ``real ~= q * 2**(shift - 31)``, q in [2**30, 2**31)."""
    if real == 0.0:
        return 0, 0
    fraction, shift = math.frexp(real)
    q = tflite_round(fraction * (1 << 31))
    if q == 1 << 31:
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q, shift


@dataclass
class QOp:
    """One int8 kernel call. ``kind``: conv, fc, pad, transpose or copy."""

    kind: str
    index: int                        # operator index in the .tflite file
    name: str                         # its TFLite name
    src_tensor: int
    dst_tensor: int
    n_out: int
    weight: np.ndarray | None = None  # (rows, cols) int8; conv cols = (ky, kx, ic)
    bias: np.ndarray | None = None    # int32 per row
    mult: np.ndarray | None = None
    shift: np.ndarray | None = None
    in_offset: int = 0
    out_offset: int = 0
    act: tuple[int, int] = (-128, 127)
    geom: ConvGeom | None = None      # channels-last geometry for conv
    params: tuple[int, ...] = ()      # pad: in4 + before4 + out4; transpose: out4 + strides4
    pad_value: int = 0
    src: str = "input"
    dst: str = "output"

    def __repr__(self) -> str:
        return f"QOp({self.kind} #{self.index} {self.src}->{self.dst})"


def _act_range(options, out: Tensor) -> tuple[int, int]:
    act = activation_names().get(getattr(options, "fusedActivationFunction", 0), "?")
    def q(real: float) -> int:  # CalculateActivationRangeQuantized: float32 division
        return out.zero_point + tflite_round(float(np.float32(real) / np.float32(out.scale)))

    ranges = {"NONE": (-128, 127), "RELU": (max(-128, q(0.0)), 127),
              "RELU6": (max(-128, q(0.0)), min(127, q(6.0))),
              "RELU_N1_TO_1": (max(-128, q(-1.0)), min(127, q(1.0)))}
    if act not in ranges:
        raise VstError(f"tflite: fused activation {act} is not supported by the C generator")
    return ranges[act]


def _requant(qop: QOp, x: Tensor, w: Tensor, out: Tensor, rows: int, per_tensor_float: bool):
    for t in (x, out):
        if t.dtype != INT8 or t.scales.size != 1:
            raise VstError(f"tflite: {qop.name} #{qop.index} needs per-tensor int8 "
                           f"activations, tensor {t.name!r} is {t.dtype}")
    if w.dtype != INT8 or np.any(w.zero_points != 0):
        raise VstError(f"tflite: {qop.name} #{qop.index} needs symmetric int8 weights")
    scales = np.broadcast_to(w.scales, (rows,))
    if per_tensor_float and w.scales.size == 1:
        reals = [float(np.float32(x.scale) * np.float32(w.scale)) / float(out.scale)] * rows
    else:
        reals = [float(x.scale) * float(s) / float(out.scale) for s in scales]
    pairs = [quantize_multiplier(r) for r in reals]
    qop.mult = np.array([p[0] for p in pairs], np.int64)
    qop.shift = np.array([p[1] for p in pairs], np.int64)
    qop.in_offset, qop.out_offset = -x.zero_point, out.zero_point


def _bias(graph: Graph, op: Op, rows: int) -> np.ndarray:
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return np.zeros(rows, np.int64)
    bias = graph.tensor(op.inputs[2])
    if bias.data is None or bias.dtype != "INT32" or bias.size != rows:
        raise VstError(f"tflite: {op.name} bias must be a constant int32 vector of {rows}")
    return bias.data.astype(np.int64).ravel()


def _same_pad(size: int, kernel: int, stride: int, out: int) -> int:
    return max((out - 1) * stride + kernel - size, 0) // 2


def _out_size(size: int, kernel: int, stride: int, same: bool) -> int:
    return -(-size // stride) if same else (size - kernel) // stride + 1


def _conv(graph: Graph, op: Op, k: int) -> QOp:
    x, w, out = (graph.tensor(i) for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
    o = op.options
    if len(x.shape) != 4 or x.shape[0] != 1 or w.data is None or w.shape[3] != x.shape[3]:
        raise VstError(f"tflite: CONV_2D #{k}: unsupported shapes {x.shape} * {w.shape}")
    if o.dilationHFactor != 1 or o.dilationWFactor != 1:
        raise VstError(f"tflite: CONV_2D #{k}: dilation is not supported")
    (_, h, wd, c), (oc, kh, kw, _), (_, oh, ow, _) = x.shape, w.shape, out.shape
    same = padding_names()[o.padding] == "SAME"
    ph = _same_pad(h, kh, o.strideH, oh) if same else 0
    pw = _same_pad(wd, kw, o.strideW, ow) if same else 0
    if (oh, ow) != (_out_size(h, kh, o.strideH, same), _out_size(wd, kw, o.strideW, same)):
        raise VstError(f"tflite: CONV_2D #{k}: output {oh}x{ow} does not match its options")
    qop = QOp("conv", k, op.name, op.inputs[0], op.outputs[0], out.size,
              weight=w.data.reshape(oc, -1), bias=_bias(graph, op, oc),
              geom=ConvGeom(c, h, wd, oc, oh, ow, kh, kw, o.strideH, o.strideW, ph, pw))
    _requant(qop, x, w, out, oc, per_tensor_float=False)
    qop.act = _act_range(o, out)
    return qop


def _fc(graph: Graph, op: Op, k: int) -> QOp:
    x, w, out = (graph.tensor(i) for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
    if w.data is None or len(w.shape) != 2 or x.size != w.shape[1] or out.size != w.shape[0]:
        raise VstError(f"tflite: FULLY_CONNECTED #{k}: unsupported shapes "
                       f"{x.shape} * {w.shape} -> {out.shape} (batch must be 1)")
    if getattr(op.options, "weightsFormat", 0) != 0:
        raise VstError(f"tflite: FULLY_CONNECTED #{k}: shuffled weights are not supported")
    rows = w.shape[0]
    qop = QOp("fc", k, op.name, op.inputs[0], op.outputs[0], out.size,
              weight=w.data, bias=_bias(graph, op, rows))
    _requant(qop, x, w, out, rows, per_tensor_float=True)
    qop.act = _act_range(op.options, out)
    return qop


def _four(shape) -> list[int]:
    shape = list(shape)
    if len(shape) > 4:
        raise VstError(f"tflite: tensors of rank {len(shape)} are not supported (max 4)")
    return [1] * (4 - len(shape)) + shape


def _pad(graph: Graph, op: Op, k: int) -> QOp:
    x, pads, out = (graph.tensor(i) for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
    _same_quant(x, out, op, k)
    if pads.data is None:
        raise VstError(f"tflite: {op.name} #{k}: paddings must be constant")
    before = [0] * (4 - len(x.shape)) + [int(p) for p in pads.data[:, 0]]
    value = out.zero_point
    if op.name == "PADV2" and len(op.inputs) > 2 and op.inputs[2] >= 0:
        value = int(graph.tensor(op.inputs[2]).data.ravel()[0])
    return QOp("pad", k, op.name, op.inputs[0], op.outputs[0], out.size,
               params=tuple(_four(x.shape) + before + _four(out.shape)), pad_value=value)


def _transpose(graph: Graph, op: Op, k: int) -> QOp:
    x, perm, out = (graph.tensor(i) for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
    _same_quant(x, out, op, k)
    if perm.data is None:
        raise VstError(f"tflite: TRANSPOSE #{k}: the permutation must be constant")
    in4 = _four(x.shape)
    lead = 4 - len(x.shape)
    perm4 = list(range(lead)) + [int(p) + lead for p in perm.data.ravel()]
    strides = [math.prod(in4[d + 1:]) for d in range(4)]
    return QOp("transpose", k, op.name, op.inputs[0], op.outputs[0], out.size,
               params=tuple(_four(out.shape) + [strides[d] for d in perm4]))


def _same_quant(a: Tensor, b: Tensor, op: Op, k: int) -> None:
    if a.dtype != INT8 or b.dtype != INT8 or a.scale != b.scale or a.zero_point != b.zero_point:
        raise VstError(f"tflite: {op.name} #{k} changes the quantization; not supported")


BUILDERS = {"CONV_2D": _conv, "FULLY_CONNECTED": _fc, "PAD": _pad, "PADV2": _pad,
            "TRANSPOSE": _transpose}


def _edges(graph: Graph) -> tuple[int, int, set[int]]:
    """The int8 tensors the C function reads and writes, and the edge ops to skip."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise VstError("tflite: the C generator needs one input and one output tensor")
    io_in, io_out, skip = graph.inputs[0], graph.outputs[0], set()
    for k, op in enumerate(graph.ops):
        if op.name == "QUANTIZE" and op.inputs[0] == io_in and graph.tensor(io_in).dtype == FLOAT32:
            io_in = op.outputs[0]
            skip.add(k)
        elif op.name == "DEQUANTIZE" and op.outputs[0] == io_out:
            io_out = op.inputs[0]
            skip.add(k)
        elif op.name in ("QUANTIZE", "DEQUANTIZE"):
            raise VstError(f"tflite: {op.name} #{k} inside the graph is not supported")
    for t in (io_in, io_out):
        if graph.tensor(t).dtype != INT8:
            raise VstError(f"tflite: model input/output {graph.tensor(t).name!r} is not int8")
    return io_in, io_out, skip


def int8_plan(graph: Graph) -> tuple[list[QOp], dict[str, int], Tensor, Tensor]:
    """The ops, the byte size of each ping-pong buffer, the C input and output tensors."""
    for k, op in enumerate(graph.ops):
        if op.name not in BUILDERS and op.name not in ALIAS_OPS + ("QUANTIZE", "DEQUANTIZE"):
            raise VstError(f"tflite: operator {op.name} #{k} is not supported by the C "
                           "generator yet")
    io_in, io_out, skip = _edges(graph)
    alias = {io_in: io_in}
    resolve = lambda t: alias.get(t, t)  # noqa: E731
    ops, current = [], io_in
    for k, op in enumerate(graph.ops):
        if k in skip:
            continue
        if resolve(op.inputs[0]) != current:
            raise VstError(f"tflite: operator {op.name} #{k} does not continue the chain "
                           "(the C generator supports sequential models only)")
        if op.name in ALIAS_OPS:
            _same_quant(graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0]), op, k)
            alias[op.outputs[0]] = current
            continue
        qop = BUILDERS[op.name](graph, op, k)
        ops.append(qop)
        current = op.outputs[0]
    if resolve(io_out) != current:
        raise VstError("tflite: the model output is not the end of the operator chain")
    n_in = graph.tensor(io_in).size
    if not ops:
        ops.append(QOp("copy", -1, "COPY", io_in, io_out, n_in))
    return ops, ping_pong(ops), graph.tensor(io_in), graph.tensor(io_out)
