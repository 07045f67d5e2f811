"""Channel groups: the channels that must be kept or pruned together, read off the graph IR.

A *channel space* is the channel axis of a tensor, followed through the
layers that keep channels apart (BatchNorm, ReLU, pooling, GlobalAvgPool,
Flatten, a depthwise convolution) and merged where channels meet (both
operands of an ``Add`` and its output are one space). Channel ``c`` of a
space owns:

- *rows*: weight row ``c`` and bias ``c`` of every layer writing into the
  space (a Conv/Linear producer, and a depthwise conv, whose one filter per
  channel keeps the channel);
- *batchnorms*: entry ``c`` of every BatchNorm on the space;
- *consumers*: the input columns of every Conv/Linear reading the space,
  ``per`` of them per channel (H*W after a Flatten).

A structured mask zeroes a pruned channel's rows, biases and BatchNorm
affine parameters, so the channel is exactly 0 in every tensor of the space
(zero plus zero at an Add, ReLU(0) = 0, the mean or max of zeros is 0);
compaction then removes it from rows, BatchNorms and consumer columns alike.
A *group* is a space that some layer writes and that may be pruned: not the
network input or output, and no Normalize, no grouped convolution other than
depthwise with multiplier 1, no BatchNorm after a Flatten (those spaces are
kept whole: *frozen*).

Why our own grouping rather than Torch-Pruning's dependency graph: the IR is
tiny and already is the source of truth (nodes, inputs, shapes), so the
grouping is a short union-find over it, exact, with no tracing of a torch
module and no dependency on a torch graph that may differ from what export
and C generation read; Torch-Pruning would need a traced module and would
hand back torch modules, not the IR we compact and ship.

Residual example: conv0 -> BN -> ReLU, then conv3 -> BN, added to the ReLU's
output, then a linear layer. conv0 and conv3 write one space (the Add ties
them): channel c owns both convs' rows c, both BNs' entries c, and conv3's
and the linear layer's input columns c:

>>> from toolchain.models.layers import *
>>> net = Network((1, 4, 4), (Conv2d(1, 3, 3, 1, 1), BatchNorm(3), ReLU(),
...                           Conv2d(3, 3, 3, 1, 1), BatchNorm(3), Add(), GlobalAvgPool(),
...                           Linear(3, 2)),
...               inputs=((-1,), (0,), (1,), (2,), (3,), (2, 4), (5,), (6,)))
>>> g, = channel_groups(net)
>>> (g.layer, g.rows, g.batchnorms, g.consumers)
(0, (0, 3), (1, 4), ((3, 1), (7, 1)))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from toolchain.models.layers import WEIGHTED, Add, BatchNorm, Flatten, Network, Normalize


@dataclass(frozen=True)
class ChannelGroup:
    layer: int                               # its key: the first layer that writes it
    channels: int
    rows: tuple[int, ...]                    # layers whose weight row / bias c is channel c's
    batchnorms: tuple[int, ...]
    consumers: tuple[tuple[int, int], ...]   # (layer, input columns per channel)
    through: tuple[int, ...] = ()            # the other layers on it: ReLU, pooling, Flatten, Add

    @staticmethod
    def columns(channel: int, per: int) -> range:
        """A consumer's input-axis indices fed by ``channel`` (``per`` per channel)."""
        return range(channel * per, (channel + 1) * per)

    def param_names(self) -> list[str]:
        """Parameters whose entry ``c`` (axis 0) belongs to channel ``c``."""
        return ([f"{i}.{k}" for i in self.rows for k in ("weight", "bias")]
                + [f"{i}.{k}" for i in self.batchnorms for k in ("weight", "bias")])


def weighted_layers(net: Network) -> list[int]:
    return [i for i, layer in enumerate(net.layers) if isinstance(layer, WEIGHTED)]


def is_depthwise(layer) -> bool:
    """A depthwise convolution with multiplier 1: channel c in, channel c out."""
    return (isinstance(layer, WEIGHTED) and getattr(layer, "groups", 1) > 1
            and layer.groups == layer.in_channels == layer.out_channels)


class _Spaces:
    """Union-find over channel spaces, with what each space owns."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.frozen: set[int] = set()
        self.rows: dict[int, list[int]] = {}
        self.bns: dict[int, list[int]] = {}
        self.consumers: dict[int, list[tuple[int, int]]] = {}
        self.through: dict[int, list[int]] = {}

    def new(self, frozen: bool = False) -> int:
        self.parent.append(len(self.parent))
        if frozen:
            self.frozen.add(len(self.parent) - 1)
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)
            if max(a, b) in self.frozen:
                self.frozen.add(min(a, b))
        return min(a, b)

    def freeze(self, s: int) -> None:
        self.frozen.add(self.find(s))


def _spaces(net: Network):
    """Each tensor's (space, columns per channel), and the spaces' members."""
    sp = _Spaces()
    tensor = {-1: (sp.new(frozen=True), 1)}          # the network input is never pruned
    in_shapes = net.in_shapes()
    for i, layer in enumerate(net.layers):
        s, per = tensor[net.inputs[i][0]]
        if is_depthwise(layer):
            sp.rows.setdefault(s, []).append(i)
            tensor[i] = (s, per)
        elif isinstance(layer, WEIGHTED):
            if getattr(layer, "groups", 1) > 1:      # other grouped convs keep channels whole
                sp.freeze(s)
            sp.consumers.setdefault(s, []).append((i, per))
            out = sp.new(frozen=getattr(layer, "groups", 1) > 1)
            sp.rows[out] = [i]
            tensor[i] = (out, 1)
        elif isinstance(layer, BatchNorm):
            if per != 1:
                sp.freeze(s)
            sp.bns.setdefault(s, []).append(i)
            tensor[i] = (s, per)
        elif isinstance(layer, Normalize):
            sp.freeze(s)
            tensor[i] = (sp.new(frozen=True), 1)
        elif isinstance(layer, Flatten):
            tensor[i] = (s, per * math.prod(in_shapes[i][1:]))
            sp.through.setdefault(s, []).append(i)
        elif isinstance(layer, Add):
            s2, per2 = tensor[net.inputs[i][1]]
            s = sp.union(s, s2)
            if per != per2:
                sp.freeze(s)
            tensor[i] = (s, per)
            sp.through.setdefault(s, []).append(i)
        else:                                        # ReLU, pooling, GlobalAvgPool
            tensor[i] = (s, per)
            sp.through.setdefault(s, []).append(i)
    sp.freeze(tensor[len(net.layers) - 1][0])         # the classes
    return sp


def channel_groups(net: Network) -> list[ChannelGroup]:
    """The prunable channel groups, by their first writing layer."""
    sp = _spaces(net)
    members: dict[int, tuple[list, list, list, list]] = {}
    for table, slot in ((sp.rows, 0), (sp.bns, 1), (sp.consumers, 2), (sp.through, 3)):
        for s, items in table.items():
            members.setdefault(sp.find(s), ([], [], [], []))[slot].extend(items)
    groups = []
    for root, (rows, bns, consumers, through) in members.items():
        if root in sp.frozen or not rows or not consumers:
            continue
        rows = sorted(rows)
        groups.append(ChannelGroup(rows[0], net.layers[rows[0]].weight_shape()[0], tuple(rows),
                                   tuple(sorted(bns)), tuple(sorted(consumers)),
                                   tuple(sorted(through))))
    return sorted(groups, key=lambda g: g.layer)


def channel_index(net: Network, groups=None) -> tuple[dict, dict]:
    """Which group owns each layer's rows, and which feeds each layer's columns:
    ``({layer: group}, {layer: (group, per)})``."""
    groups = channel_groups(net) if groups is None else groups
    rows = {i: g for g in groups for i in g.rows}
    cols = {i: (g, per) for g in groups for i, per in g.consumers}
    return rows, cols
