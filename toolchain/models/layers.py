"""The layer list: vst's one intermediate representation.

A network is a straight sequence of small, frozen layer records. Training
builds a torch module from it, compaction rewrites it, export and C code
generation walk it. Nothing else describes a network's structure.

Tiny example (a Conv -> BatchNorm -> ReLU -> Flatten -> Linear net on 1x8x8):

>>> net = Network((1, 8, 8), (Conv2d(1, 4, 3, 2, 1), BatchNorm(4), ReLU(),
...                           Flatten(), Linear(4 * 4 * 4, 10)))
>>> net.shapes()[-1]
(10,)
>>> net.param_count()          # conv 4*9+4, BN 4+4, linear 64*10+10
698

Parameter names follow ``torch.nn.Sequential``: layer ``i`` owns
``"{i}.weight"``, ``"{i}.bias"`` (and BatchNorm's running statistics).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import ClassVar, Union

from toolchain.errors import VstError

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


@dataclass(frozen=True)
class Conv2d:
    """2-D convolution with square kernel, stride and padding."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    kind: ClassVar[str] = "conv2d"

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise VstError(f"conv2d expects ({self.in_channels}, H, W), got {shape}")
        h, w = (_conv_out(s, self.kernel, self.stride, self.padding) for s in shape[1:])
        if h < 1 or w < 1:
            raise VstError(f"conv2d kernel {self.kernel} does not fit input {shape}")
        return (self.out_channels, h, w)

    def weight_shape(self) -> Shape:
        return (self.out_channels, self.in_channels, self.kernel, self.kernel)


@dataclass(frozen=True)
class Conv1d:
    """1-D convolution over (C, L) signals."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    kind: ClassVar[str] = "conv1d"

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) != 2 or shape[0] != self.in_channels:
            raise VstError(f"conv1d expects ({self.in_channels}, L), got {shape}")
        length = _conv_out(shape[1], self.kernel, self.stride, self.padding)
        if length < 1:
            raise VstError(f"conv1d kernel {self.kernel} does not fit input {shape}")
        return (self.out_channels, length)

    def weight_shape(self) -> Shape:
        return (self.out_channels, self.in_channels, self.kernel)


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


Layer = Union[Normalize, Conv2d, Conv1d, Linear, BatchNorm, ReLU, Flatten]
LAYER_TYPES: dict[str, type] = {
    cls.kind: cls for cls in (Normalize, Conv2d, Conv1d, Linear, BatchNorm, ReLU, Flatten)
}
WEIGHTED = (Conv2d, Conv1d, Linear)


def layer_params(layer: Layer) -> dict[str, Shape]:
    """Learnable parameter shapes of one layer (not BatchNorm's running stats)."""
    if isinstance(layer, WEIGHTED):
        return {"weight": layer.weight_shape(), "bias": (layer.weight_shape()[0],)}
    if isinstance(layer, BatchNorm):
        return {"weight": (layer.channels,), "bias": (layer.channels,)}
    return {}


@dataclass(frozen=True)
class Network:
    """An input shape (C, H, W) or (C, L) and a sequence of layers."""

    input_shape: Shape
    layers: tuple[Layer, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "layers", tuple(self.layers))
        self.shapes()  # validates the chain of shapes

    def __repr__(self) -> str:
        rows = [f"Network(input={self.input_shape})"]
        for i, (layer, shape) in enumerate(zip(self.layers, self.shapes())):
            rows.append(f"  [{i}] {layer!r} -> {shape}")
        return "\n".join(rows)

    def shapes(self) -> list[Shape]:
        """Output shape (per sample, no batch axis) after each layer."""
        out, shape = [], self.input_shape
        for layer in self.layers:
            shape = layer.out_shape(shape)
            out.append(shape)
        return out

    @property
    def num_classes(self) -> int:
        return self.shapes()[-1][0]

    def param_count(self) -> int:
        return sum(math.prod(s) for layer in self.layers for s in layer_params(layer).values())

    def check_size(self, where: str = "model") -> None:
        """VstError unless the shapes chain and the network fits in memory: checked
        on the layer list before any tensor is allocated."""
        for i, layer in enumerate(self.layers):
            for f in dataclasses.fields(layer):
                value = getattr(layer, f.name)
                if f.type == "int" and (not isinstance(value, int) or isinstance(value, bool)
                                        or value < 0):
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
        """Multiply-accumulates per inference, layer by layer (dense count)."""
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
        return {
            "input_shape": list(self.input_shape),
            "layers": [{"kind": l.kind, **dataclasses.asdict(l)} for l in self.layers],
        }

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
            network = cls(shape, tuple(layers))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise VstError(f"invalid architecture description: {exc}") from None
        network.check_size("architecture")
        return network

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
