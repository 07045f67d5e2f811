"""Read a full-integer .tflite file into the int8 ops the C generator knows.

The flatbuffer is parsed with the schema module that ships with
``ai_edge_litert`` (no interpreter, no TensorFlow import): it gives the
operators with their options (stride, padding, fused activation), every
tensor's shape and quantization parameters, and the constant buffers.

Supported operators (what the converter emits for vst's networks):
CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, AVERAGE_POOL_2D, MAX_POOL_2D,
ADD, PAD / PADV2, TRANSPOSE, and the memory no-ops RESHAPE / EXPAND_DIMS /
SQUEEZE; QUANTIZE / DEQUANTIZE only at the edges (float model input /
output). Anything else is a ``VstError`` naming it, raised before any file is
written.

>>> graph = read_tflite("model_int8.tflite")          # doctest: +SKIP
>>> [op.name for op in graph.ops]                     # doctest: +SKIP
['CONV_2D', 'RESHAPE', 'FULLY_CONNECTED']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolchain.errors import VstError

INT8, INT32, FLOAT32 = "INT8", "INT32", "FLOAT32"
ALIAS_OPS = ("RESHAPE", "EXPAND_DIMS", "SQUEEZE")
EDGE_OPS = ("QUANTIZE", "DEQUANTIZE")
COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "AVERAGE_POOL_2D",
               "MAX_POOL_2D", "ADD", "PAD", "PADV2", "TRANSPOSE")


@dataclass
class Tensor:
    """One tensor of the graph; ``data`` is set for constants."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    scales: np.ndarray           # float32, empty when not quantized
    zero_points: np.ndarray      # int64
    axis: int = 0                # the quantized dimension of per-channel scales
    data: np.ndarray | None = None

    @property
    def scale(self) -> float:
        return float(self.scales[0]) if self.scales.size else 0.0

    @property
    def zero_point(self) -> int:
        return int(self.zero_points[0]) if self.zero_points.size else 0

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass
class Op:
    """One operator: its name, tensor indices and builtin options."""

    name: str
    inputs: list[int]
    outputs: list[int]
    options: object = None


@dataclass
class Graph:
    """The single subgraph of a .tflite model."""

    tensors: list[Tensor]
    ops: list[Op]
    inputs: list[int]
    outputs: list[int]
    raw: bytes = field(repr=False, default=b"")

    def tensor(self, index: int) -> Tensor:
        return self.tensors[index]


def _schema():
    from ai_edge_litert import schema_py_generated as schema
    return schema


def _enum_names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_")}


def _tensor(i: int, t, buffers, type_names) -> Tensor:
    q = t.quantization
    scales = np.asarray(q.scale if q is not None and q.scale is not None else [], np.float32)
    zps = np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None else [], np.int64)
    dtype = type_names.get(t.type, str(t.type))
    shape = tuple(int(s) for s in (t.shape if t.shape is not None else []))
    name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
    axis = int(q.quantizedDimension) if q is not None and scales.size > 1 else 0
    tensor = Tensor(i, name, shape, dtype, scales, zps, axis)
    buf = buffers[t.buffer] if t.buffer < len(buffers) else None
    if buf is not None and buf.data is not None and len(buf.data):
        np_type = {INT8: np.int8, INT32: np.int32, FLOAT32: np.float32}.get(dtype)
        if np_type is None:
            raise VstError(f"tflite: constant tensor {name!r} has unsupported type {dtype}")
        tensor.data = np.frombuffer(bytes(buf.data), dtype=np_type).reshape(shape)
    return tensor


def read_tflite(path) -> Graph:
    """Parse ``path``; raise ``VstError`` on damage, several subgraphs or an unknown op."""
    from toolchain.inputs import read_input

    path = Path(path)
    raw = read_input(path, "tflite model", gunzip=False)
    if raw[4:8] != b"TFL3":
        raise VstError(f"{path}: not a readable .tflite file (no TFL3 identifier)")
    schema = _schema()
    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(raw, 0))
    except Exception as exc:  # flatbuffers raises assorted errors on a damaged file
        raise VstError(f"{path}: not a readable .tflite file ({exc})") from None
    if not model.subgraphs or len(model.subgraphs) != 1:
        raise VstError(f"{path}: expected one subgraph, found {len(model.subgraphs or [])}")
    sub = model.subgraphs[0]
    op_names = _enum_names(schema.BuiltinOperator)
    type_names = _enum_names(schema.TensorType)
    buffers = model.buffers or []
    tensors = [_tensor(i, t, buffers, type_names) for i, t in enumerate(sub.tensors or [])]
    ops = []
    for op in sub.operators or []:
        code = model.operatorCodes[op.opcodeIndex]
        name = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        if name == "CUSTOM" and code.customCode:
            name = f"CUSTOM({code.customCode.decode()})"
        ops.append(Op(name, [int(i) for i in op.inputs], [int(i) for i in op.outputs],
                      op.builtinOptions))
    unsupported = sorted({op.name for op in ops} - set(ALIAS_OPS + EDGE_OPS + COMPUTE_OPS))
    if unsupported:
        raise VstError(f"{path.name}: the C generator does not support the TFLite "
                       f"operator(s) {', '.join(unsupported)}")
    return Graph(tensors, ops, list(sub.inputs), list(sub.outputs), raw)


def activation_names() -> dict[int, str]:
    """Fused activation code -> name (NONE, RELU, RELU6, ...)."""
    return _enum_names(_schema().ActivationFunctionType)


def padding_names() -> dict[int, str]:
    """Padding code -> name (SAME, VALID)."""
    return _enum_names(_schema().Padding)
