"""Which parameters a channel owns, read off the layer list.

A *channel group* is one weighted layer's output channels together with the
BatchNorm that follows it and the next weighted layer that consumes them.
Structured masks zero a channel's weights, bias and BatchNorm affine
parameters, so the channel outputs exactly 0; compaction then removes it from
the producer and the matching input columns from the consumer.

Tiny example: Conv(1->4) -> BN(4) -> ReLU -> Flatten -> Linear(4*2*2 -> 3).
Channel 1 of the conv owns conv weight row 1, bias 1, BN entries 1 and the
linear layer's input columns 4..7 (one per spatial position, H*W = 4):

>>> from toolchain.models.layers import *
>>> net = Network((1, 4, 4), (Conv2d(1, 4, 3, 2, 1), BatchNorm(4), ReLU(), Flatten(),
...                           Linear(16, 3)))
>>> g = channel_groups(net)[0]
>>> (g.layer, g.batchnorm, g.consumer, g.columns(1))
(0, 1, 4, range(4, 8))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from toolchain.models.layers import WEIGHTED, BatchNorm, Flatten, Network, ReLU


@dataclass(frozen=True)
class ChannelGroup:
    layer: int                 # index of the producing Conv/Linear
    channels: int
    batchnorm: int | None      # index of the BatchNorm right after it, if any
    consumer: int              # index of the next Conv/Linear
    per_channel: int           # consumer input columns per channel (H*W after a flatten)

    def columns(self, channel: int) -> range:
        """The consumer's input-axis indices fed by ``channel``."""
        start = channel * self.per_channel
        return range(start, start + self.per_channel)

    def param_names(self) -> list[str]:
        """Parameters whose entry ``c`` belongs to channel ``c`` (axis 0)."""
        names = [f"{self.layer}.weight", f"{self.layer}.bias"]
        if self.batchnorm is not None:
            names += [f"{self.batchnorm}.weight", f"{self.batchnorm}.bias"]
        return names


def weighted_layers(net: Network) -> list[int]:
    return [i for i, layer in enumerate(net.layers) if isinstance(layer, WEIGHTED)]


def channel_groups(net: Network) -> list[ChannelGroup]:
    """One group per weighted layer except the last (its outputs are the classes).

    Raises ``ValueError`` for a layer between producer and consumer that would
    mix channels (only BatchNorm, ReLU and Flatten may stand between).
    """
    shapes = [net.input_shape] + net.shapes()
    weighted = weighted_layers(net)
    groups = []
    for producer, consumer in zip(weighted, weighted[1:]):
        bn, per_channel = None, 1
        for k in range(producer + 1, consumer):
            layer = net.layers[k]
            if isinstance(layer, BatchNorm):
                bn = k if bn is None else bn
            elif isinstance(layer, Flatten):
                per_channel = math.prod(shapes[k][1:])
            elif not isinstance(layer, ReLU):
                raise ValueError(f"layer {k} ({layer.kind}) between {producer} and {consumer} "
                                 "is not channel-wise")
        out_channels = net.layers[producer].weight_shape()[0]
        groups.append(ChannelGroup(producer, out_channels, bn, consumer, per_channel))
    return groups
