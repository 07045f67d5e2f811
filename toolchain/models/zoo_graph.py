"""The zoo's graph models: MLPerf Tiny's reference networks, scaled to the input.

- ``ds_cnn`` (MLPerf Tiny keyword spotting, DS-CNN): a strided convolution,
  four depthwise-separable blocks (3x3 depthwise + 1x1 pointwise, each with
  BatchNorm and ReLU), global average pooling, a linear classifier. MLPerf's
  stem is a 10x4 kernel on 49x10 spectrograms; with square kernels we use 3x3,
  stride 2 (stride 1 below 16 pixels). ``channels``: one width for all, or
  five (stem and the four blocks); MLPerf uses 64.
- ``resnet8`` (MLPerf Tiny image classification): a 3x3 stem, three residual
  stages of two 3x3 convolutions (``channels`` 16/32/64; stride 2 in stages
  2 and 3), an identity shortcut where the shape is kept and a 1x1 projection
  where it changes, global average pooling, a linear classifier.
- ``ds_cnn1d`` / ``resnet1d``: the same on (C, L) signals, kernels 3 in one
  dimension.

All use BatchNorm after every convolution but the shortcut projection
(certified training of deeper nets needs it; compaction folds it away). A
network ends in ``GlobalAvgPool -> Linear``: no large fan-in for the bounds.

>>> net = resnet8((3, 32, 32), 10)
>>> net.shapes()[-2], net.param_count()
((64,), 78042)
"""

from __future__ import annotations

from toolchain.errors import VstError
from toolchain.models.layers import (Add, BatchNorm, Conv1d, Conv2d, GlobalAvgPool, Linear,
                                     Network, ReLU, Shape)


class _Builder:
    """Appends layers, each reading the last one or the given ones; tracks shapes."""

    def __init__(self, input_shape: Shape, conv) -> None:
        self.input_shape, self.conv = tuple(input_shape), conv
        self.layers, self.inputs, self.shapes = [], [], []

    def add(self, layer, *reads: int) -> int:
        reads = reads or (len(self.layers) - 1,)
        self.shapes.append(layer.out_shape(*(self.input_shape if j < 0 else self.shapes[j]
                                             for j in reads)))
        self.layers.append(layer)
        self.inputs.append(reads)
        return len(self.layers) - 1

    def channels(self, i: int) -> int:
        return (self.input_shape if i < 0 else self.shapes[i])[0]

    def conv_bn(self, out: int, kernel: int, stride: int = 1, groups: int = 1, relu=True,
                read: int | None = None) -> int:
        i = len(self.layers) - 1 if read is None else read
        self.add(self.conv(self.channels(i), out, kernel, stride, kernel // 2, groups), i)
        self.add(BatchNorm(out))
        return self.add(ReLU()) if relu else len(self.layers) - 1

    def head(self, num_classes: int) -> Network:
        self.add(GlobalAvgPool())
        self.add(Linear(self.shapes[-1][0], num_classes))
        return Network(self.input_shape, tuple(self.layers), tuple(self.inputs))


def _widths(arch: str, channels, n: int) -> tuple[int, ...]:
    channels = tuple(channels)
    if len(channels) == 1:
        channels *= n
    if len(channels) != n:
        raise VstError(f"model {arch}: channels takes 1 or {n} widths, got {len(channels)}")
    return channels


def _check_rank(arch: str, input_shape: Shape, rank: int) -> None:
    if len(input_shape) != rank + 1:
        need = "image inputs (C, H, W)" if rank == 2 else "signal inputs (C, L)"
        raise VstError(f"{arch} needs {need}, got {tuple(input_shape)}")


def _ds_cnn(arch, conv, rank, input_shape, num_classes, channels) -> Network:
    _check_rank(arch, input_shape, rank)
    widths = _widths(arch, channels, 5)
    b = _Builder(input_shape, conv)
    b.conv_bn(widths[0], 3, 2 if min(input_shape[1:]) >= 16 else 1, read=-1)
    for width in widths[1:]:
        c = b.channels(len(b.layers) - 1)
        b.conv_bn(c, 3, groups=c)                      # depthwise
        b.conv_bn(width, 1)                            # pointwise
    return b.head(num_classes)


def _resnet(arch, conv, rank, input_shape, num_classes, channels) -> Network:
    _check_rank(arch, input_shape, rank)
    widths = _widths(arch, channels, 3)
    b = _Builder(input_shape, conv)
    x = b.conv_bn(widths[0], 3, read=-1)
    for stage, width in enumerate(widths):
        stride = 1 if stage == 0 else 2
        b.conv_bn(width, 3, stride, read=x)
        body = b.conv_bn(width, 3, relu=False)
        if stride == 1 and b.channels(x) == width:
            shortcut = x
        else:
            shortcut = b.add(conv(b.channels(x), width, 1, stride, 0), x)
        b.add(Add(), body, shortcut)
        x = b.add(ReLU())
    return b.head(num_classes)


def ds_cnn(input_shape: Shape, num_classes: int, channels=(64,)) -> Network:
    return _ds_cnn("ds_cnn", Conv2d, 2, input_shape, num_classes, channels)


def ds_cnn1d(input_shape: Shape, num_classes: int, channels=(64,)) -> Network:
    return _ds_cnn("ds_cnn1d", Conv1d, 1, input_shape, num_classes, channels)


def resnet8(input_shape: Shape, num_classes: int, channels=(16, 32, 64)) -> Network:
    return _resnet("resnet8", Conv2d, 2, input_shape, num_classes, channels)


def resnet1d(input_shape: Shape, num_classes: int, channels=(16, 32, 64)) -> Network:
    return _resnet("resnet1d", Conv1d, 1, input_shape, num_classes, channels)
