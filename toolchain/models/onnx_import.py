"""Import a sequential ONNX network into the layer list.

One handler per ONNX operator (as hls4ml's converters do); the graph is
checked first and any operator vst cannot represent is rejected, by name,
before anything is built. Supported: a single chain from the one input to the
one output made of

    Gemm, MatMul (+ Add bias), Conv (1-D / 2-D, square kernel, equal strides,
    symmetric pads, no groups or dilation), Relu, Flatten, Reshape to (N, -1),
    BatchNormalization (inference), Sub / Div by per-channel constants
    (-> Normalize), with Identity and Constant anywhere.

The input is (N, ...) with the batch axis first (or one sample, rank 1:
``(784,)``); unit axes are kept (``(1, 784, 1)`` is a sample of (784, 1)).
Reshapes at the front, before the first layer, that keep the sample's values
(``(1, 784) -> (1, 1, 28, 28)``) set the network's input shape; a Flatten of
data that is already flat is dropped. Data and VNN-LIB boxes of the same size
map onto the input in C order (``verify.resolve_dataset``).

Loading parses protobufs only: no code runs, external data files are refused.

Example: the graph ``Sub -> Div -> Conv -> Relu -> Flatten -> Gemm`` becomes
``Normalize -> Conv2d -> ReLU -> Flatten -> Linear``. A torch model exported in
eval mode has each Conv+BatchNorm fused into one Conv, so its import has no
BatchNorm after convs (same function); a BatchNorm after a Linear stays.

>>> model = import_onnx("net.onnx")           # doctest: +SKIP
>>> model.network.layers[0]                   # doctest: +SKIP
Conv2d(in_channels=1, out_channels=8, kernel=4, stride=2, padding=1)
"""

from __future__ import annotations

import math

from pathlib import Path

import numpy as np

from toolchain.errors import VstError
from toolchain.inputs import check_input
from toolchain.models import layers as L
from toolchain.models.modelfile import VstModel, check_state

DATA_OPS = ("Gemm", "MatMul", "Add", "Conv", "Relu", "Flatten", "Reshape",
            "BatchNormalization", "Sub", "Div")
PASS_OPS = ("Identity", "Constant")
SUPPORTED = DATA_OPS + PASS_OPS


class _Chain:
    """The layer list being read, with each layer's parameters (numpy, torch naming)."""

    def __init__(self, input_shape: L.Shape, consts: dict[str, np.ndarray]) -> None:
        self.input_shape = input_shape
        self.consts = consts
        self.layers: list = []
        self.params: list[dict[str, np.ndarray]] = []
        self.bias_pending = False  # the last Linear came from a MatMul; an Add may follow

    def add(self, layer, **params) -> None:
        self.layers.append(layer)
        self.params.append({k: np.asarray(v, dtype=np.float32) for k, v in params.items()})
        self.bias_pending = False

    def shape(self) -> L.Shape:
        """Per-sample shape of the chain's current output."""
        shapes = L.Network(self.input_shape, tuple(self.layers)).shapes()
        return shapes[-1] if shapes else self.input_shape

    def const(self, node, index: int, optional: bool = False) -> np.ndarray | None:
        """Input ``index`` of ``node``, which must be a constant (initializer or Constant)."""
        if index >= len(node.input) or not node.input[index]:
            if optional:
                return None
            raise VstError(f"ONNX node {_label(node)}: missing input {index}")
        name = node.input[index]
        if name not in self.consts:
            raise VstError(f"ONNX node {_label(node)}: input {name!r} must be a constant")
        return self.consts[name]


def _short(value) -> float:
    """The shortest decimal that is the same float32 (ONNX stores float32: 1e-5, not 9.99e-6)."""
    return float(str(np.float32(value)))


def _label(node) -> str:
    return f"{node.op_type} ('{node.name or node.output[0]}')"


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _gemm(node, chain: _Chain) -> None:
    a = _attrs(node)
    if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
        raise VstError(f"ONNX node {_label(node)}: only alpha=beta=1, transA=0 is supported")
    b = chain.const(node, 1)
    weight = b if a.get("transB", 0) else b.T
    bias = chain.const(node, 2, optional=True)
    bias = np.zeros(weight.shape[0]) if bias is None else np.broadcast_to(bias, weight.shape[:1])
    chain.add(L.Linear(weight.shape[1], weight.shape[0]), weight=weight, bias=bias)


def _matmul(node, chain: _Chain) -> None:
    weight = chain.const(node, 1).T
    if weight.ndim != 2:
        raise VstError(f"ONNX node {_label(node)}: MatMul needs a 2-D weight")
    chain.add(L.Linear(weight.shape[1], weight.shape[0]), weight=weight,
              bias=np.zeros(weight.shape[0]))
    chain.bias_pending = True


def _add(node, chain: _Chain) -> None:
    if not chain.bias_pending:
        raise VstError(f"ONNX node {_label(node)}: Add is supported only as a MatMul's bias")
    params = chain.params[-1]
    params["bias"] = params["bias"] + np.broadcast_to(chain.const(node, 1), params["bias"].shape)
    chain.bias_pending = False


def _conv(node, chain: _Chain) -> None:
    a = _attrs(node)
    weight = chain.const(node, 1)
    rank = weight.ndim - 2
    kernel, strides = a.get("kernel_shape", weight.shape[2:]), a.get("strides", [1] * rank)
    pads = a.get("pads", [0] * 2 * rank)
    problems = [msg for bad, msg in (
        (a.get("group", 1) != 1, "groups"),
        (any(d != 1 for d in a.get("dilations", [1])), "dilation"),
        (a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"), "auto_pad"),
        (len(set(kernel)) != 1, "non-square kernel"), (len(set(strides)) != 1, "unequal strides"),
        (len(set(pads)) != 1, "asymmetric pads"), (rank not in (1, 2), f"{rank}-D conv"))
        if bad]
    if problems:
        raise VstError(f"ONNX node {_label(node)}: unsupported {', '.join(problems)}")
    bias = chain.const(node, 2, optional=True)
    bias = np.zeros(weight.shape[0]) if bias is None else bias
    cls = L.Conv2d if rank == 2 else L.Conv1d
    chain.add(cls(weight.shape[1], weight.shape[0], kernel[0], strides[0], pads[0]),
              weight=weight, bias=bias)


def _relu(node, chain: _Chain) -> None:
    chain.add(L.ReLU())


def _flatten(node, chain: _Chain) -> None:
    if _attrs(node).get("axis", 1) != 1:
        raise VstError(f"ONNX node {_label(node)}: only Flatten(axis=1) is supported")
    _to_flat(chain)


def _to_flat(chain: _Chain) -> None:
    """A Flatten layer, unless the data is flat already (then the node changes nothing)."""
    if len(chain.shape()) > 1:
        chain.add(L.Flatten())


def _reshape(node, chain: _Chain) -> None:
    """Reshape to (N, -1) is a Flatten anywhere; any other reshape that keeps
    the sample's values only at the front, before the first layer, where it
    becomes the network's input shape (C order is kept, so a flat VNN-LIB box
    or data of the same size map onto it unchanged)."""
    shape = [int(s) for s in chain.const(node, 1)]
    target = _reshape_target(shape, chain.shape())
    if target is None:
        raise VstError(f"ONNX node {_label(node)}: Reshape to {shape} does not keep the "
                       f"{math.prod(chain.shape())} values of a sample "
                       f"(data (N, {', '.join(map(str, chain.shape()))}))")
    if len(target) == 1:
        _to_flat(chain)
    elif not chain.layers:
        chain.input_shape = target
    else:
        raise VstError(f"ONNX node {_label(node)}: after the first layer only Reshape to "
                       f"(N, -1) is supported, got {shape}")


def _reshape_target(shape: list[int], current: L.Shape) -> L.Shape | None:
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


def _batchnorm(node, chain: _Chain) -> None:
    a = _attrs(node)
    if a.get("training_mode", 0):
        raise VstError(f"ONNX node {_label(node)}: BatchNormalization in training mode")
    scale, bias, mean, var = (chain.const(node, k) for k in (1, 2, 3, 4))
    chain.add(L.BatchNorm(scale.size, _short(a.get("epsilon", 1e-5))),
              weight=scale, bias=bias, running_mean=mean, running_var=var)


def _per_channel(node, chain: _Chain, value: np.ndarray) -> tuple[float, ...]:
    """A constant broadcast against (N, C, ...) that varies only along C (or is scalar)."""
    shape = chain.shape()
    value = np.asarray(value, dtype=np.float32)
    rank = len(shape) + 1
    if value.ndim > rank:
        raise VstError(f"ONNX node {_label(node)}: constant of shape {value.shape} "
                       f"for data of rank {rank}")
    value = value.reshape((1,) * (rank - value.ndim) + value.shape)
    others = value.shape[:1] + value.shape[2:]
    if any(d != 1 for d in others) or value.shape[1] not in (1, shape[0]):
        raise VstError(f"ONNX node {_label(node)}: constant of shape {value.shape} is not "
                       f"per-channel for data (N, {', '.join(map(str, shape))})")
    return tuple(_short(v) for v in value.reshape(-1))


def _sub(node, chain: _Chain) -> None:
    mean = _per_channel(node, chain, chain.const(node, 1))
    chain.add(L.Normalize(mean, (1.0,) * len(mean)))


def _div(node, chain: _Chain) -> None:
    std = _per_channel(node, chain, chain.const(node, 1))
    last = chain.layers[-1] if chain.layers else None
    if isinstance(last, L.Normalize) and set(last.std) == {1.0} and len(last.mean) == len(std):
        chain.layers[-1] = L.Normalize(last.mean, std)  # Sub then Div: one Normalize
    else:
        chain.add(L.Normalize((0.0,) * len(std), std))


HANDLERS = {"Gemm": _gemm, "MatMul": _matmul, "Add": _add, "Conv": _conv, "Relu": _relu,
            "Flatten": _flatten, "Reshape": _reshape, "BatchNormalization": _batchnorm,
            "Sub": _sub, "Div": _div}


def import_onnx(path) -> VstModel:
    """Read a sequential ONNX network into a ``VstModel`` (no masks).

    Raises ``VstError`` for a missing or corrupt file, an unsupported operator
    (named, with its node), or a graph that is not one chain.
    """
    proto = _load(Path(path))
    graph = proto.graph
    _check_operators(graph)
    consts = _constants(graph)
    input_name, input_shape = _graph_input(graph, consts)
    chain = _Chain(input_shape, consts)
    current = _walk(graph, chain, input_name)
    input_shape = chain.input_shape            # a Reshape at the front may change it
    if [o.name for o in graph.output] != [current]:
        raise VstError(f"ONNX graph is not one chain: its output is not the end of the chain "
                       f"(ends at {current!r})")
    if not chain.layers:
        raise VstError("ONNX graph has no layers")
    try:
        network = L.Network(input_shape, tuple(chain.layers))
        network.check_size("network")
    except VstError as exc:
        raise VstError(f"ONNX graph does not form a valid network: {exc}") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    record = {"imported_from": Path(path).name, "onnx_input_shape": list(_input_dims(graph)),
              "onnx_producer":
              f"{proto.producer_name} {proto.producer_version}".strip(),
              "onnx_metadata": meta, "config": _config_from_metadata(meta)}
    state = _state(network, chain.params)
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
    for node in graph.node:
        if node.op_type not in SUPPORTED or node.domain not in ("", "ai.onnx"):
            raise VstError(f"unsupported ONNX operator {node.op_type} "
                           f"(node '{node.name or node.output[0]}'); "
                           f"vst imports {', '.join(SUPPORTED)}")


def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            attr = node.attribute[0]
            value = _attrs(node)[attr.name]
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


def _walk(graph, chain: _Chain, current: str) -> str:
    """Apply each data node in order; every one must consume the chain's current tensor."""
    for node in graph.node:
        if node.op_type == "Constant" or (node.op_type == "Identity" and
                                          node.input[0] in chain.consts):
            continue
        data = [name for name in node.input if name and name not in chain.consts]
        if data != [current] or len(node.output) != 1:
            raise VstError(f"ONNX graph is not one chain: node {_label(node)} reads "
                           f"{data or 'only constants'}, expected the output of the "
                           f"previous layer {current!r}")
        if node.input[0] != current:
            raise VstError(f"ONNX node {_label(node)}: the data must be its first input "
                           f"(constant - x and similar are not supported)")
        if node.op_type != "Identity":
            HANDLERS[node.op_type](node, chain)
        current = node.output[0]
    return current


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
