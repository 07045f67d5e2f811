"""Import an ONNX network into the network IR (a DAG of vst layers).

One handler per ONNX operator (``onnx_ops.py``, as hls4ml's converters do);
the graph is checked first and every operator vst cannot represent is
rejected, by name, before anything is built. Supported (any DAG from the one
input to the one output, e.g. residual blocks):

    Gemm, MatMul (+ Add bias), Conv (1-D / 2-D, any group: depthwise too;
    square kernel, equal strides, symmetric pads, no dilation), Add of two
    tensors (residual), Relu, AveragePool, MaxPool, GlobalAveragePool,
    ReduceMean over all positions, Flatten, Squeeze after a global pooling,
    Reshape to (N, -1), BatchNormalization (inference), Sub / Div by
    per-channel constants (-> Normalize), with Identity and Constant anywhere.

The input is (N, ...) with the batch axis first (or one sample, rank 1:
``(784,)``); unit axes are kept (``(1, 784, 1)`` is a sample of (784, 1)).
Reshapes at the front, before the first layer, that keep the sample's values
(``(1, 784) -> (1, 1, 28, 28)``) set the network's input shape; a Flatten of
data that is already flat is dropped. Data and VNN-LIB boxes of the same size
map onto the input in C order (``verify.resolve_dataset``).

Loading parses protobufs only: no code runs, external data files are refused.

Example: a torch ResNet block exported in eval mode, ``Conv -> Relu -> Conv ->
Add(x, .) -> Relu -> GlobalAveragePool -> Flatten -> Gemm``, becomes
``Conv2d -> ReLU -> Conv2d -> Add -> ReLU -> GlobalAvgPool -> Linear`` with
the Add reading the input and the second conv. Each Conv+BatchNorm is fused
into one Conv by torch's exporter (same function); a BatchNorm it leaves stays.

>>> model = import_onnx("net.onnx")           # doctest: +SKIP
>>> model.network.layers[0]                   # doctest: +SKIP
Conv2d(in_channels=1, out_channels=8, kernel=4, stride=2, padding=1, groups=1)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from toolchain.errors import VstError
from toolchain.inputs import check_input
from toolchain.models import layers as L
from toolchain.models.graph import INPUT
from toolchain.models.modelfile import VstModel, check_state
from toolchain.models.onnx_ops import DROP_UNIT_AXES, HANDLERS, Value, attrs, label

PASS_OPS = ("Identity", "Constant")
SUPPORTED = tuple(HANDLERS) + PASS_OPS


class _Reader:
    """The network being read: layers in ONNX order, their parameters (numpy,
    torch naming) and wiring, and the ``Value`` of every tensor read so far."""

    def __init__(self, input_name: str, input_shape: L.Shape, consts, uses) -> None:
        self.input_shape = input_shape
        self.consts = consts
        self._uses = uses
        self.layers: list = []
        self.params: list[dict[str, np.ndarray]] = []
        self.inputs: list[tuple[int, ...]] = []
        self.shapes: list[L.Shape] = []
        self.values = {input_name: Value(INPUT, input_shape)}

    def uses(self, name: str) -> int:
        """How many nodes (and graph outputs) read the tensor ``name``."""
        return self._uses.get(name, 0)

    def add(self, node, layer, data: list[Value], **params) -> Value:
        """Append ``layer`` reading ``data``; its output's Value."""
        try:
            shape = layer.out_shape(*(v.shape for v in data))
        except VstError as exc:
            raise VstError(f"ONNX node {label(node)}: {exc}") from None
        self.layers.append(layer)
        self.params.append({k: np.asarray(v, dtype=np.float32) for k, v in params.items()})
        self.inputs.append(tuple(v.node for v in data))
        self.shapes.append(shape)
        return Value(len(self.layers) - 1, shape)

    def const(self, node, index: int, optional: bool = False) -> np.ndarray | None:
        """Input ``index`` of ``node``, which must be a constant (initializer or Constant)."""
        if index >= len(node.input) or not node.input[index]:
            if optional:
                return None
            raise VstError(f"ONNX node {label(node)}: missing input {index}")
        name = node.input[index]
        if name not in self.consts:
            raise VstError(f"ONNX node {label(node)}: input {name!r} must be a constant")
        return self.consts[name]


def import_onnx(path) -> VstModel:
    """Read an ONNX network into a ``VstModel`` (no masks).

    Raises ``VstError`` for a missing or corrupt file, unsupported operators
    (named, with their nodes), or a graph vst cannot represent.
    """
    proto = _load(Path(path))
    graph = proto.graph
    _check_operators(graph)
    consts = _constants(graph)
    input_name, input_shape = _graph_input(graph, consts)
    reader = _Reader(input_name, input_shape, consts, _uses(graph, consts))
    _walk(graph, reader)
    out = reader.values.get(graph.output[0].name)
    if not reader.layers:
        raise VstError("ONNX graph has no layers")
    if out is None or out.node != len(reader.layers) - 1 or out.unit_axes:
        raise VstError(f"ONNX graph's output {graph.output[0].name!r} is not the result of "
                       "its last layer as (N, classes)")
    try:
        network = L.Network(reader.input_shape, tuple(reader.layers), reader.inputs)
        network.check_size("network")
    except VstError as exc:
        raise VstError(f"ONNX graph does not form a valid network: {exc}") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    record = {"imported_from": Path(path).name, "onnx_input_shape": list(_input_dims(graph)),
              "onnx_producer":
              f"{proto.producer_name} {proto.producer_version}".strip(),
              "onnx_metadata": meta, "config": _config_from_metadata(meta)}
    state = _state(network, reader.params)
    check_state(path, network, state)          # NaN or infinite weights: refused here
    return VstModel(network, state, {}, record)


def _config_from_metadata(meta: dict[str, str]) -> dict:
    """The test eps and data set that vst's own export writes into the ONNX
    metadata, as the record's config, so `vst verify model.onnx` needs no
    --eps / --data. The eps is kept as written (a number when it parses): it
    is checked by the eps rule where it is used (``verify.default_eps``), so a
    nonsense eps is refused unless --eps replaces it."""
    config: dict = {}
    if meta.get("dataset"):
        config["data"] = {"dataset": meta["dataset"]}
    if "eps" in meta:
        try:
            eps: float | str = float(meta["eps"])
        except ValueError:
            eps = meta["eps"]
        config["verify"] = {"eps": eps}
    return config


def _load(path: Path):
    import onnx

    check_input(path, "ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as exc:  # DecodeError, ValidationError, ... all mean "not a usable file"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VstError(f"{path}: not a readable ONNX model ({first[:200]})") from None
    external = [t.name for t in proto.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise VstError(f"{path}: weights in external data files are not supported "
                       f"({external[0]})")
    return proto


def _check_operators(graph) -> None:
    bad: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in SUPPORTED or node.domain not in ("", "ai.onnx"):
            bad.setdefault(node.op_type, node.name or node.output[0])
    if bad:
        what = ", ".join(f"{op} (node '{name}')" for op, name in bad.items())
        raise VstError(f"unsupported ONNX operator{'s' if len(bad) > 1 else ''} {what}; "
                       f"vst imports {', '.join(SUPPORTED)}")


def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            attr = node.attribute[0]
            value = attrs(node)[attr.name]
            consts[node.output[0]] = (numpy_helper.to_array(value) if attr.name == "value"
                                      else np.asarray(value))
        elif node.op_type == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
    return consts


def _graph_input(graph, consts) -> tuple[str, L.Shape]:
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise VstError(f"ONNX graph must have one input and one output, has "
                       f"{len(inputs)} and {len(graph.output)}")
    dims = inputs[0].type.tensor_type.shape.dim
    # (N, ...) with the batch axis first; a rank-1 input (784,) is one sample
    shape = tuple(d.dim_value for d in (dims if len(dims) == 1 else dims[1:]))
    if not dims or any(d <= 0 for d in shape):
        raise VstError(f"ONNX input {inputs[0].name!r} needs a fixed per-sample shape "
                       f"(N, C, ...), got {[d.dim_value or d.dim_param for d in dims]}")
    return inputs[0].name, shape


def _input_dims(graph) -> list:
    """The ONNX input's dimensions as written (numbers, or names for free axes)."""
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    return [d.dim_value or d.dim_param for d in inputs[0].type.tensor_type.shape.dim]


def _uses(graph, consts) -> dict[str, int]:
    """How many nodes (and graph outputs) read each tensor."""
    out: dict[str, int] = {}
    for name in [n for node in graph.node for n in node.input] + [o.name for o in graph.output]:
        if name and name not in consts:
            out[name] = out.get(name, 0) + 1
    return out


def _walk(graph, reader: _Reader) -> None:
    """Apply each node in order (ONNX graphs are topologically sorted)."""
    for node in graph.node:
        if node.op_type == "Constant" or (node.op_type == "Identity" and
                                          node.input[0] in reader.consts):
            continue
        names = [n for n in node.input if n and n not in reader.consts]
        missing = [n for n in names if n not in reader.values]
        if missing:
            raise VstError(f"ONNX node {label(node)} reads {missing[0]!r}, which no earlier "
                           "node computes")
        if not names:
            raise VstError(f"ONNX node {label(node)} reads only constants")
        two = node.op_type == "Add" and len(names) == 2
        if not two and names != [node.input[0]]:
            raise VstError(f"ONNX node {label(node)}: the data must be its first input and "
                           f"its only one (constant - x and similar are not supported)")
        data = [reader.values[n] for n in names]
        if any(v.unit_axes for v in data) and node.op_type not in DROP_UNIT_AXES + PASS_OPS:
            raise VstError(f"ONNX node {label(node)} reads a global average pooling's "
                           "(N, C, 1, ...) output: only Flatten, Reshape or Squeeze may")
        out = data[0] if node.op_type == "Identity" else HANDLERS[node.op_type](node, reader,
                                                                               data)
        reader.values[node.output[0]] = out


def _state(network: L.Network, params: list[dict]) -> dict:
    """The torch state dict for ``network`` from per-layer parameters, shape-checked."""
    import torch

    from toolchain.models.torch_build import build_torch

    state = build_torch(network).state_dict()
    for i, (layer, values) in enumerate(zip(network.layers, params)):
        for name, value in values.items():
            key = f"{i}.{name}"
            if tuple(value.shape) != tuple(state[key].shape):
                raise VstError(f"ONNX layer {i} ({layer.kind}): {name} has shape "
                               f"{tuple(value.shape)}, expected {tuple(state[key].shape)}")
            with np.errstate(over="ignore", invalid="ignore"):   # check_state names it
                state[key] = torch.from_numpy(np.array(value, dtype=np.float32))  # a copy
    return {k: v.detach().clone() for k, v in state.items()}
