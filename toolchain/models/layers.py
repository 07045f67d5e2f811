"""The network IR: layer records wired into a DAG. vst's one description of a network.

A network is an input shape, a tuple of small frozen layer records in
topological order and, per layer, the layers it reads (``inputs``; see
``graph.py``). Training builds a torch module from it, compaction rewrites
it, export and C code generation walk it. Nothing else describes a
network's structure.

A chain (each layer reads the one before) needs no ``inputs``:

>>> net = Network((1, 8, 8), (Conv2d(1, 4, 3, 2, 1), BatchNorm(4), ReLU(),
...                           Flatten(), Linear(4 * 4 * 4, 10)))
>>> net.shapes()[-1]
(10,)
>>> net.param_count()          # conv 4*9+4, BN 4+4, linear 64*10+10
698

A residual block reads the network input twice (``-1`` is the input):

>>> res = Network((4, 8, 8), (Conv2d(4, 4, 3, 1, 1), ReLU(), Conv2d(4, 4, 3, 1, 1),
...                           Add(), GlobalAvgPool(), Linear(4, 2)),
...               inputs=((-1,), (0,), (1,), (-1, 2), (3,), (4,)))
>>> res.shapes()[3], res.shapes()[4]
((4, 8, 8), (4,))

Parameter names follow ``torch.nn.Sequential``: layer ``i`` owns
``"{i}.weight"``, ``"{i}.bias"`` (and BatchNorm's running statistics), for
chains and graphs alike. A chain's ``to_dict()`` is what vst 0.1 wrote
(no ``inputs``, no ``groups`` when 1), so its weights hash is unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import ClassVar, Union

from toolchain.errors import VstError
from toolchain.models import graph

# What vst will build (checked on the layer list, before allocating): about
# 200 MB of float32 weights, and a per-sample activation tensor of 64 MB.
MAX_PARAMS = 50_000_000
MAX_ACTIVATIONS = 16_000_000

Shape = tuple[int, ...]


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    if kernel < 1 or stride < 1 or padding < 0:
        raise VstError(f"convolution needs kernel >= 1, stride >= 1, padding >= 0; got "
                       f"kernel {kernel}, stride {stride}, padding {padding}")
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class Normalize:
    """Per-channel ``(x - mean) / std``; lets a model take inputs in [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    kind: ClassVar[str] = "normalize"

    def out_shape(self, shape: Shape) -> Shape:
        if len(self.mean) not in (1, shape[0]) or len(self.std) != len(self.mean):
            raise VstError(f"normalize: {len(self.mean)} channels for input {shape}")
        return shape


def _check_groups(layer) -> None:
    g = layer.groups
    if not isinstance(g, int) or g < 1 or layer.in_channels % g or layer.out_channels % g:
        raise VstError(f"{layer.kind}: groups {g!r} must divide in_channels "
                       f"{layer.in_channels} and out_channels {layer.out_channels}")


@dataclass(frozen=True)
class Conv2d:
    """2-D convolution with square kernel, stride and padding.

    ``groups``: input and output channels split into that many groups, each
    convolved on its own; ``groups == in_channels == out_channels`` is a
    depthwise convolution (``out_channels = k * in_channels``: multiplier k).
    """

    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    kind: ClassVar[str] = "conv2d"

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise VstError(f"conv2d expects ({self.in_channels}, H, W), got {shape}")
        _check_groups(self)
        h, w = (_conv_out(s, self.kernel, self.stride, self.padding) for s in shape[1:])
        if h < 1 or w < 1:
            raise VstError(f"conv2d kernel {self.kernel} does not fit input {shape}")
        return (self.out_channels, h, w)

    def weight_shape(self) -> Shape:
        return (self.out_channels, self.in_channels // self.groups, self.kernel, self.kernel)


@dataclass(frozen=True)
class Conv1d:
    """1-D convolution over (C, L) signals; ``groups`` as for ``Conv2d``."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    kind: ClassVar[str] = "conv1d"

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) != 2 or shape[0] != self.in_channels:
            raise VstError(f"conv1d expects ({self.in_channels}, L), got {shape}")
        _check_groups(self)
        length = _conv_out(shape[1], self.kernel, self.stride, self.padding)
        if length < 1:
            raise VstError(f"conv1d kernel {self.kernel} does not fit input {shape}")
        return (self.out_channels, length)

    def weight_shape(self) -> Shape:
        return (self.out_channels, self.in_channels // self.groups, self.kernel)


@dataclass(frozen=True)
class Linear:
    """Fully connected layer ``y = W x + b``."""

    in_features: int
    out_features: int
    kind: ClassVar[str] = "linear"

    def out_shape(self, shape: Shape) -> Shape:
        if shape != (self.in_features,):
            raise VstError(f"linear expects ({self.in_features},), got {shape}")
        return (self.out_features,)

    def weight_shape(self) -> Shape:
        return (self.out_features, self.in_features)


@dataclass(frozen=True)
class BatchNorm:
    """BatchNorm over the channel axis (axis 0 of the per-sample shape)."""

    channels: int
    eps: float = 1e-5
    kind: ClassVar[str] = "batchnorm"
    # its tensors, in the order of ``affine``'s arguments (and Keras' set_weights)
    TENSORS: ClassVar[tuple[str, ...]] = ("weight", "bias", "running_mean", "running_var")

    def affine(self, gamma, beta, mean, var):
        """Eval-mode BatchNorm as ``y = scale * x + shift`` per channel.

        Works on torch tensors and numpy arrays alike; the one place the
        folding formula lives (compaction, Keras export and C generation use it).
        """
        scale = gamma / (var + self.eps) ** 0.5
        return scale, beta - mean * scale

    def out_shape(self, shape: Shape) -> Shape:
        if shape[0] != self.channels:
            raise VstError(f"batchnorm over {self.channels} channels, got {shape}")
        return shape


@dataclass(frozen=True)
class ReLU:
    kind: ClassVar[str] = "relu"

    def out_shape(self, shape: Shape) -> Shape:
        return shape


@dataclass(frozen=True)
class Flatten:
    kind: ClassVar[str] = "flatten"

    def out_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)


@dataclass(frozen=True)
class _Pool:
    """Pooling over each channel: ``kernel``, ``stride`` (default: the kernel) and
    ``padding`` per spatial axis. Average pooling counts the zero padding in
    its divisor (torch's ``count_include_pad=True``); max pooling ignores it."""

    kernel: int
    stride: int | None = None
    padding: int = 0
    rank: ClassVar[int] = 2
    kind: ClassVar[str] = "pool"

    def __post_init__(self) -> None:
        if self.stride is None:
            object.__setattr__(self, "stride", self.kernel)

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) != self.rank + 1:
            axes = "H, W" if self.rank == 2 else "L"
            raise VstError(f"{self.kind} expects (C, {axes}), got {shape}")
        if 2 * self.padding > self.kernel:
            raise VstError(f"{self.kind}: padding {self.padding} is more than half the kernel "
                           f"{self.kernel}")
        sizes = tuple(_conv_out(s, self.kernel, self.stride, self.padding) for s in shape[1:])
        if min(sizes) < 1:
            raise VstError(f"{self.kind} kernel {self.kernel} does not fit input {shape}")
        return (shape[0],) + sizes


@dataclass(frozen=True)
class AvgPool2d(_Pool):
    kind: ClassVar[str] = "avgpool2d"


@dataclass(frozen=True)
class MaxPool2d(_Pool):
    kind: ClassVar[str] = "maxpool2d"


@dataclass(frozen=True)
class AvgPool1d(_Pool):
    rank: ClassVar[int] = 1
    kind: ClassVar[str] = "avgpool1d"


@dataclass(frozen=True)
class MaxPool1d(_Pool):
    rank: ClassVar[int] = 1
    kind: ClassVar[str] = "maxpool1d"


@dataclass(frozen=True)
class GlobalAvgPool:
    """The mean of each channel over all positions: (C, H, W) or (C, L) -> (C,),
    ready for a Linear layer (no Flatten needed)."""

    kind: ClassVar[str] = "globalavgpool"

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) not in (2, 3):
            raise VstError(f"globalavgpool expects (C, H, W) or (C, L), got {shape}")
        return (shape[0],)


@dataclass(frozen=True)
class Add:
    """Elementwise sum of two inputs of the same shape (a residual connection)."""

    kind: ClassVar[str] = "add"
    arity: ClassVar[int] = 2

    def out_shape(self, a: Shape, b: Shape) -> Shape:
        if a != b:
            raise VstError(f"add of shapes {a} and {b}: they must be equal")
        return a


Layer = Union[Normalize, Conv2d, Conv1d, Linear, BatchNorm, ReLU, Flatten, AvgPool2d, MaxPool2d,
              AvgPool1d, MaxPool1d, GlobalAvgPool, Add]
LAYER_TYPES: dict[str, type] = {
    cls.kind: cls for cls in (Normalize, Conv2d, Conv1d, Linear, BatchNorm, ReLU, Flatten,
                              AvgPool2d, MaxPool2d, AvgPool1d, MaxPool1d, GlobalAvgPool, Add)
}
WEIGHTED = (Conv2d, Conv1d, Linear)
POOLS = (AvgPool2d, MaxPool2d, AvgPool1d, MaxPool1d)
# fields added after vst 0.1, written to a model file only when not at their default
# (so a vst 0.1 network serializes byte for byte as before: same weights hash)
_NEW_FIELDS = {"groups": 1}


def arity(layer: Layer) -> int:
    """How many inputs the layer takes (2 for Add, else 1)."""
    return getattr(layer, "arity", 1)


def layer_dict(layer: Layer) -> dict:
    """The layer as a JSON-ready dict: ``kind`` and its fields."""
    fields = {k: v for k, v in dataclasses.asdict(layer).items()
              if not (k in _NEW_FIELDS and v == _NEW_FIELDS[k])}
    return {"kind": layer.kind, **fields}


def layer_params(layer: Layer) -> dict[str, Shape]:
    """Learnable parameter shapes of one layer (not BatchNorm's running stats)."""
    if isinstance(layer, WEIGHTED):
        return {"weight": layer.weight_shape(), "bias": (layer.weight_shape()[0],)}
    if isinstance(layer, BatchNorm):
        return {"weight": (layer.channels,), "bias": (layer.channels,)}
    return {}


@dataclass(frozen=True)
class Network:
    """An input shape (C, H, W), (C, L) or (F,) and layers in topological order.

    ``inputs[i]``: the layers layer ``i`` reads (``-1``: the network input);
    ``None`` (the default) is the chain, layer ``i`` reading layer ``i - 1``.
    Stored normalized, so a chain equals its explicit wiring.
    """

    input_shape: Shape
    layers: tuple[Layer, ...]
    inputs: graph.Inputs | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "inputs", graph.normalize_inputs(
            self.inputs, [arity(layer) for layer in self.layers]))
        self.shapes()  # validates the shapes along the wiring

    @property
    def is_chain(self) -> bool:
        return self.inputs == graph.chain(len(self.layers))

    def __repr__(self) -> str:
        rows = [f"Network(input={self.input_shape})"]
        for i, (layer, shape) in enumerate(zip(self.layers, self.shapes())):
            reads = "" if self.inputs[i] == (i - 1,) else f" <- {list(self.inputs[i])}"
            rows.append(f"  [{i}] {layer!r}{reads} -> {shape}")
        return "\n".join(rows)

    def shapes(self) -> list[Shape]:
        """Output shape (per sample, no batch axis) of each layer."""
        def step(i, *shapes):
            try:
                return self.layers[i].out_shape(*shapes)
            except VstError as exc:
                raise VstError(f"layer {i} ({self.layers[i].kind}): {exc}") from None
        return graph.run(self.inputs, self.input_shape, step)

    def in_shapes(self) -> list[Shape]:
        """Shape of each layer's (first) input."""
        shapes = self.shapes()
        return [self.input_shape if row[0] == graph.INPUT else shapes[row[0]]
                for row in self.inputs]

    @property
    def num_classes(self) -> int:
        return self.shapes()[-1][0]

    def param_count(self) -> int:
        return sum(math.prod(s) for layer in self.layers for s in layer_params(layer).values())

    def check_size(self, where: str = "model") -> None:
        """VstError unless the shapes fit and the network fits in memory: checked
        on the IR before any tensor is allocated."""
        for i, layer in enumerate(self.layers):
            for f in dataclasses.fields(layer):
                value = getattr(layer, f.name)
                if f.type in ("int", "int | None") and (
                        not isinstance(value, int) or isinstance(value, bool) or value < 0):
                    raise VstError(f"{where}: layer {i} ({layer.kind}) {f.name} must be an "
                                   f"integer >= 0, got {value!r}")
                numbers = value if isinstance(value, tuple) else (value,)
                if f.type != "int" and not all(isinstance(v, (int, float)) and
                                               math.isfinite(v) for v in numbers):
                    raise VstError(f"{where}: layer {i} ({layer.kind}) {f.name} must be finite "
                                   f"numbers, got {value!r}")
            if (isinstance(layer, Normalize) and 0 in layer.std) or \
                    (isinstance(layer, BatchNorm) and layer.eps <= 0):
                raise VstError(f"{where}: layer {i} ({layer.kind}) would divide by zero")
        try:
            shapes = self.shapes()
        except (ValueError, TypeError, ZeroDivisionError) as exc:
            raise VstError(f"{where}: the layers do not fit the input {self.input_shape} "
                           f"({exc})") from None
        if any(d <= 0 for s in shapes for d in s):
            raise VstError(f"{where}: a layer's output is empty for input {self.input_shape}")
        params = self.param_count()
        activations = max((math.prod(s) for s in shapes), default=0)
        if params > MAX_PARAMS or activations > MAX_ACTIVATIONS:
            raise VstError(f"{where}: {params:,} parameters / {activations:,} activations per "
                           f"sample is beyond what vst trains (at most {MAX_PARAMS:,} / "
                           f"{MAX_ACTIVATIONS:,}); check channels and widths")

    def layer_macs(self) -> list[int]:
        """Multiply-accumulates per inference, layer by layer (dense count).

        Conv/Linear only (a grouped convolution: each output sums
        in_channels / groups channels); pooling and Add are additions, not counted.
        """
        macs = []
        for layer, shape in zip(self.layers, self.shapes()):
            if isinstance(layer, WEIGHTED):
                w = layer.weight_shape()
                macs.append(math.prod(shape[1:]) * math.prod(w) if len(shape) > 1 else math.prod(w))
            else:
                macs.append(0)
        return macs

    def macs(self) -> int:
        return sum(self.layer_macs())

    def to_dict(self) -> dict:
        """JSON-ready; a chain writes no ``inputs`` (vst 0.1's layout, same hash)."""
        out = {"input_shape": list(self.input_shape),
               "layers": [layer_dict(layer) for layer in self.layers]}
        if not self.is_chain:
            out["inputs"] = [list(row) for row in self.inputs]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Network":
        try:
            layers = []
            for spec in data["layers"]:
                spec = dict(spec)
                kind = spec.pop("kind")
                if kind not in LAYER_TYPES:
                    raise VstError(f"unknown layer kind {kind!r}")
                fields = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
                layers.append(LAYER_TYPES[kind](**fields))
            shape = tuple(data["input_shape"])
            if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                    for d in shape):
                raise VstError(f"input_shape must be positive integers, got {list(shape)}")
            network = cls(shape, tuple(layers), data.get("inputs"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise VstError(f"invalid architecture description: {exc}") from None
        network.check_size("architecture")
        return network

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
