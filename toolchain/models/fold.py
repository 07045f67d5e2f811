"""Which BatchNorm folds into which layer: one rule for compaction, Keras and C.

A BatchNorm folds into the Conv/Linear it reads when nothing else reads that
layer (eval mode: ``y = scale * x + shift`` per output channel, so the
weights and bias absorb it exactly). The rule lives here so that compaction,
the Keras rebuild for TFLite and the float C plan fold the same BatchNorms.

>>> from toolchain.models.layers import Add, BatchNorm, Conv2d, Network, ReLU
>>> net = Network((2, 4, 4), (Conv2d(2, 2, 3, 1, 1), BatchNorm(2), ReLU(), Add()),
...               ((-1,), (0,), (1,), (-1, 2)))
>>> batchnorm_folds(net)
{1: 0}
"""

from __future__ import annotations

from toolchain.models import graph
from toolchain.models import layers as L


def batchnorm_folds(network: L.Network) -> dict[int, int]:
    """BatchNorm layer index -> the index of the Conv/Linear it folds into."""
    readers = graph.consumers(network.inputs)
    out = {}
    for j, layer in enumerate(network.layers):
        i = network.inputs[j][0]
        if isinstance(layer, L.BatchNorm) and i >= 0 \
                and isinstance(network.layers[i], L.WEIGHTED) and readers[i] == [j]:
            out[j] = i
    return out
