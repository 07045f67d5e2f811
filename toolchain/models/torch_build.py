"""Build a torch module from the network IR.

A chain becomes a ``torch.nn.Sequential``; any other graph a ``Graph``
module that evaluates the layers in order, each on the outputs its
``inputs`` name. Either way layer ``i`` is submodule ``"i"``, so parameter
names in the model file equal the torch ``state_dict`` names.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from toolchain.models import layers as L
from toolchain.models.graph import run


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with the constants as buffers."""

    def __init__(self, mean, std, rank: int) -> None:
        super().__init__()
        view = (1, -1) + (1,) * (rank - 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(view))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(view))

    def forward(self, x):
        return (x - self.mean) / self.std


class Add(nn.Module):
    def forward(self, a, b):
        return a + b


class GlobalAvgPool(nn.Module):
    """Mean over all positions: (N, C, H, W) or (N, C, L) -> (N, C). Traced as ONNX
    GlobalAveragePool + Flatten, which auto_LiRPA bounds."""

    def forward(self, x):
        pool = F.adaptive_avg_pool2d if x.dim() == 4 else F.adaptive_avg_pool1d
        return pool(x, 1).flatten(1)


class Graph(nn.Module):
    """Layer ``i`` is submodule ``"i"`` and reads the outputs ``inputs[i]`` names
    (``-1``: the input); the last layer's output is the result.
    """

    def __init__(self, modules, inputs) -> None:
        super().__init__()
        for i, module in enumerate(modules):
            self.add_module(str(i), module)
        self.inputs = tuple(inputs)

    def forward(self, x):
        return run(self.inputs, x, lambda i, *args: self._modules[str(i)](*args))[-1]


_POOLS = {L.AvgPool2d: nn.AvgPool2d, L.MaxPool2d: nn.MaxPool2d, L.AvgPool1d: nn.AvgPool1d,
          L.MaxPool1d: nn.MaxPool1d}


def _module(layer: L.Layer, in_shape: L.Shape) -> nn.Module:
    if isinstance(layer, L.Normalize):
        return Normalize(layer.mean, layer.std, len(in_shape))
    if isinstance(layer, (L.Conv2d, L.Conv1d)):
        cls = nn.Conv2d if isinstance(layer, L.Conv2d) else nn.Conv1d
        return cls(layer.in_channels, layer.out_channels, layer.kernel, layer.stride,
                   layer.padding, groups=layer.groups)
    if isinstance(layer, L.Linear):
        return nn.Linear(layer.in_features, layer.out_features)
    if isinstance(layer, L.BatchNorm):
        cls = nn.BatchNorm2d if len(in_shape) == 3 else nn.BatchNorm1d
        return cls(layer.channels, eps=layer.eps)
    if isinstance(layer, L.ReLU):
        return nn.ReLU()
    if isinstance(layer, L.Flatten):
        return nn.Flatten()
    if type(layer) in _POOLS:
        return _POOLS[type(layer)](layer.kernel, layer.stride, layer.padding)
    if isinstance(layer, L.GlobalAvgPool):
        return GlobalAvgPool()
    if isinstance(layer, L.Add):
        return Add()
    raise TypeError(f"no torch module for {layer!r}")


def build_torch(net: L.Network, state: dict | None = None) -> nn.Module:
    """Return the torch module for ``net``; load ``state`` if given.

    >>> net = L.Network((4,), (L.Linear(4, 3),))
    >>> build_torch(net)(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    """
    modules = [_module(layer, shape) for layer, shape in zip(net.layers, net.in_shapes())]
    module = nn.Sequential(*modules) if net.is_chain else Graph(modules, net.inputs)
    if state is not None:
        module.load_state_dict(state, strict=True)
    return module
