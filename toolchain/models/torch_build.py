"""Build a ``torch.nn.Sequential`` from the layer list.

Layer ``i`` of the list is module ``i`` of the Sequential, so parameter
names in the model file equal the torch ``state_dict`` names.
"""

from __future__ import annotations

import torch
from torch import nn

from toolchain.models import layers as L


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with the constants as buffers."""

    def __init__(self, mean, std, rank: int) -> None:
        super().__init__()
        view = (1, -1) + (1,) * (rank - 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(view))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(view))

    def forward(self, x):
        return (x - self.mean) / self.std


def _module(layer: L.Layer, in_shape: L.Shape) -> nn.Module:
    if isinstance(layer, L.Normalize):
        return Normalize(layer.mean, layer.std, len(in_shape))
    if isinstance(layer, L.Conv2d):
        return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel,
                         layer.stride, layer.padding)
    if isinstance(layer, L.Conv1d):
        return nn.Conv1d(layer.in_channels, layer.out_channels, layer.kernel,
                         layer.stride, layer.padding)
    if isinstance(layer, L.Linear):
        return nn.Linear(layer.in_features, layer.out_features)
    if isinstance(layer, L.BatchNorm):
        cls = nn.BatchNorm2d if len(in_shape) == 3 else nn.BatchNorm1d
        return cls(layer.channels, eps=layer.eps)
    if isinstance(layer, L.ReLU):
        return nn.ReLU()
    if isinstance(layer, L.Flatten):
        return nn.Flatten()
    raise TypeError(f"no torch module for {layer!r}")


def build_torch(net: L.Network, state: dict | None = None) -> nn.Sequential:
    """Return the torch module for ``net``; load ``state`` if given.

    >>> net = L.Network((4,), (L.Linear(4, 3),))
    >>> build_torch(net)(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    """
    shapes = [net.input_shape] + net.shapes()[:-1]
    module = nn.Sequential(*(_module(l, s) for l, s in zip(net.layers, shapes)))
    if state is not None:
        module.load_state_dict(state, strict=True)
    return module
