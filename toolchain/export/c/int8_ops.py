"""The int8 operators of a .tflite graph, with the numbers TFLite's kernels compute.

Every constant the C code needs is computed here exactly as the TFLite Micro
reference kernels compute it in their Prepare step:

- per output channel, ``QuantizeMultiplier(input_scale * weight_scale[c] /
  output_scale)`` in double precision -> (Q31 multiplier, shift); for a
  per-tensor FULLY_CONNECTED the product ``input_scale * weight_scale`` is
  taken in float32 first, as TFLM's ``GetQuantizedConvolutionMultipler`` does;
- the fused activation as a clamp range of the output (``zero_point +
  round(f / scale)``, round half away from zero);
- SAME padding as ``ComputePaddingWithOffset`` (the extra odd pixel goes after);
- ADD as TFLite's int8 ADD (``left_shift`` 20, each input scaled by
  ``s_i / (2 max(s_1, s_2))``, the sum by ``2 max(s_1, s_2) / (2^20 s_out)``,
  each multiplier below one, as ``QuantizeMultiplierSmallerThanOneExp``);
- AVERAGE_POOL_2D / MAX_POOL_2D need no constants: TFLite averages and takes
  the maximum of the stored int8 values (input and output share their scale).

One builder per TFLite operator (``BUILDERS``) turns it into a ``QOp``.

>>> quantize_multiplier(0.5), quantize_multiplier(0.75)
((1073741824, 0), (1610612736, 0))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from toolchain.errors import VstError
from toolchain.export.c.plan import ConvGeom
from toolchain.export.c.tflite_graph import (INT8, Graph, Op, Tensor, activation_names,
                                             padding_names)

ADD_LEFT_SHIFT = 20   # TFLite's int8 ADD: inputs are scaled up by 2^20 before summing


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


def mul_q31(x, mult, shift):
    """TFLite's MultiplyByQuantizedMultiplier (gemmlowp's SaturatingRoundingDoublingHighMul,
    then RoundingDivideByPOT) on int64 numpy values that fit int32 after the left
    shift; ``mult`` / ``shift`` broadcast (per channel along the last axis).

    >>> mul_q31(np.array([100, -100, 7]), 1 << 30, -1).tolist()   # x * 0.25, half away
    [25, -25, 2]
    """
    x = np.asarray(x, np.int64)
    mult, shift = np.asarray(mult, np.int64), np.asarray(shift, np.int64)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    # with a positive multiplier the high multiply is (x*m + 2^30) >> 31 for either sign
    high = ((x << left) * mult + (1 << 30)) >> 31
    mask = (np.int64(1) << right) - 1
    threshold = (mask >> 1) + (high < 0)
    return (high >> right) + ((high & mask) > threshold)


@dataclass
class QOp:
    """One int8 kernel call. ``kind``: conv, dwconv, fc, avgpool, maxpool, add,
    pad, transpose or copy."""

    kind: str
    index: int                        # operator index in the .tflite file
    name: str                         # its TFLite name
    src_tensor: int
    dst_tensor: int
    n_out: int
    weight: np.ndarray | None = None  # (rows, cols) int8; conv cols = (ky, kx, ic),
    #                                   dwconv: row = output channel, cols = (ky, kx)
    bias: np.ndarray | None = None    # int32 per row
    mult: np.ndarray | None = None
    shift: np.ndarray | None = None
    in_offset: int = 0
    out_offset: int = 0
    act: tuple[int, int] = (-128, 127)
    geom: ConvGeom | None = None      # channels-last geometry of conv, dwconv and pooling
    params: tuple[int, ...] = ()      # pad: in4 + before4 + out4; transpose: out4 + strides4;
    #                                   add: (offset, multiplier, shift) of input 1, input 2,
    #                                   then output multiplier, shift (after the 2^20 shift)
    pad_value: int = 0
    reads: list = field(default_factory=list)   # tensors read (resolved: INPUT, or an index)
    writes: object = None                       # the tensor written
    srcs: list[str] = field(default_factory=list)   # where they are: C expressions
    dst: str = "output"

    @property
    def arity(self) -> int:
        """How many tensors it reads (2 for add)."""
        return 2 if self.kind == "add" else 1

    @property
    def src(self) -> str:
        return self.srcs[0] if self.srcs else "input"

    def __repr__(self) -> str:
        return f"QOp({self.kind} #{self.index} {self.srcs}->{self.dst})"


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


def _window(x: Tensor, out: Tensor, kh: int, kw: int, op: Op, k: int) -> ConvGeom:
    """The channels-last geometry of a sliding window (conv, depthwise, pooling):
    strides and SAME / VALID padding from the options, checked against the shapes."""
    o = op.options
    if len(x.shape) != 4 or x.shape[0] != 1 or len(out.shape) != 4:
        raise VstError(f"tflite: {op.name} #{k}: unsupported shapes {x.shape} -> {out.shape}")
    if getattr(o, "dilationHFactor", 1) != 1 or getattr(o, "dilationWFactor", 1) != 1:
        raise VstError(f"tflite: {op.name} #{k}: dilation is not supported")
    (_, h, wd, c), (_, oh, ow, oc) = x.shape, out.shape
    same = padding_names()[o.padding] == "SAME"
    if (oh, ow) != (_out_size(h, kh, o.strideH, same), _out_size(wd, kw, o.strideW, same)):
        raise VstError(f"tflite: {op.name} #{k}: output {oh}x{ow} does not match its options")
    ph = _same_pad(h, kh, o.strideH, oh) if same else 0
    pw = _same_pad(wd, kw, o.strideW, ow) if same else 0
    return ConvGeom(c, h, wd, oc, oh, ow, kh, kw, o.strideH, o.strideW, ph, pw)


def _conv(graph: Graph, op: Op, k: int) -> QOp:
    x, w, out = (graph.tensor(i) for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
    if len(x.shape) != 4 or w.data is None or w.shape[3] != x.shape[3] or w.axis != 0:
        raise VstError(f"tflite: CONV_2D #{k}: unsupported shapes {x.shape} * {w.shape} "
                       "(a grouped convolution, or weights quantized along another axis)")
    oc, kh, kw, _ = w.shape
    qop = QOp("conv", k, op.name, op.inputs[0], op.outputs[0], out.size,
              weight=w.data.reshape(oc, -1), bias=_bias(graph, op, oc),
              geom=_window(x, out, kh, kw, op, k))
    _requant(qop, x, w, out, oc, per_tensor_float=False)
    qop.act = _act_range(op.options, out)
    return qop


def _dwconv(graph: Graph, op: Op, k: int) -> QOp:
    """DEPTHWISE_CONV_2D: filter (1, kh, kw, oc), output channel c * m + j reads input
    channel c (m = oc / c, the depth multiplier); per-channel scales on axis 3."""
    x, w, out = (graph.tensor(i) for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
    if w.data is None or len(w.shape) != 4 or w.shape[0] != 1 or len(x.shape) != 4 \
            or w.shape[3] % x.shape[3] or (w.scales.size > 1 and w.axis != 3):
        raise VstError(f"tflite: DEPTHWISE_CONV_2D #{k}: unsupported shapes "
                       f"{x.shape} * {w.shape}")
    _, kh, kw, oc = w.shape
    mult = getattr(op.options, "depthMultiplier", 0)
    if mult and mult * x.shape[3] != oc:
        raise VstError(f"tflite: DEPTHWISE_CONV_2D #{k}: depth multiplier {mult} does not "
                       f"match {x.shape[3]} -> {oc} channels")
    qop = QOp("dwconv", k, op.name, op.inputs[0], op.outputs[0], out.size,
              weight=np.ascontiguousarray(w.data.reshape(kh * kw, oc).T),
              bias=_bias(graph, op, oc), geom=_window(x, out, kh, kw, op, k))
    _requant(qop, x, w, out, oc, per_tensor_float=False)
    qop.act = _act_range(op.options, out)
    return qop


def _pool(graph: Graph, op: Op, k: int) -> QOp:
    """AVERAGE_POOL_2D / MAX_POOL_2D over the stored int8 values."""
    x, out = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
    if x.dtype != INT8 or out.dtype != INT8:
        raise VstError(f"tflite: {op.name} #{k} needs int8 tensors")
    o = op.options
    geom = _window(x, out, o.filterHeight, o.filterWidth, op, k)
    if geom.oc != geom.c:
        raise VstError(f"tflite: {op.name} #{k}: {geom.c} channels in, {geom.oc} out")
    kind = "avgpool" if op.name == "AVERAGE_POOL_2D" else "maxpool"
    qop = QOp(kind, k, op.name, op.inputs[0], op.outputs[0], out.size, geom=geom)
    qop.act = _act_range(o, out)
    return qop


def add_params(a: Tensor, b: Tensor, out: Tensor) -> tuple[int, ...]:
    """TFLite's int8 ADD constants: (offset, multiplier, shift) of each input, then
    the output multiplier and shift (every shift <= 0: multipliers below one)."""
    twice_max = 2.0 * max(float(a.scale), float(b.scale))
    params: list[int] = []
    for t in (a, b):
        params += [-t.zero_point, *quantize_multiplier(float(t.scale) / twice_max)]
    params += quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * float(out.scale)))
    return tuple(params)


def add_scaled(op: QOp, x, which: int) -> np.ndarray:
    """ADD's first step for input ``which`` (0 or 1): ``(x - zero point) * 2^20``
    scaled by the input's multiplier, for int8 values ``x`` (any shape)."""
    offset, mult, shift = op.params[3 * which: 3 * which + 3]
    return mul_q31((np.asarray(x, np.int64) + offset) << ADD_LEFT_SHIFT, mult, shift)


def add_outputs(op: QOp, a, b, clamp: bool = True) -> np.ndarray:
    """TFLite's int8 ADD of int8 values ``a`` and ``b``: the reference the tables of
    the C kernel come from, and the int8 bounds' rule for ADD."""
    raw = add_scaled(op, a, 0) + add_scaled(op, b, 1)
    v = mul_q31(raw, op.params[6], op.params[7]) + op.out_offset
    return np.clip(v, *op.act) if clamp else v


def _add(graph: Graph, op: Op, k: int) -> QOp:
    a, b, out = (graph.tensor(i) for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
    for t in (a, b):
        if t.data is not None or t.shape != out.shape:
            raise VstError(f"tflite: ADD #{k}: only the sum of two computed tensors of one "
                           f"shape is supported ({a.shape} + {b.shape} -> {out.shape})")
    for t in (a, b, out):
        if t.dtype != INT8 or t.scales.size != 1:
            raise VstError(f"tflite: ADD #{k} needs per-tensor int8 tensors, "
                           f"{t.name!r} is {t.dtype}")
    qop = QOp("add", k, op.name, op.inputs[0], op.outputs[0], out.size,
              params=add_params(a, b, out))
    if qop.params[-1] > 0:
        raise VstError(f"tflite: ADD #{k}: output multiplier above one "
                       "(TFLite requires it below one)")
    qop.out_offset, qop.act = out.zero_point, _act_range(op.options, out)
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


BUILDERS = {"CONV_2D": _conv, "DEPTHWISE_CONV_2D": _dwconv, "FULLY_CONNECTED": _fc,
            "AVERAGE_POOL_2D": _pool, "MAX_POOL_2D": _pool, "ADD": _add, "PAD": _pad,
            "PADV2": _pad, "TRANSPOSE": _transpose}
