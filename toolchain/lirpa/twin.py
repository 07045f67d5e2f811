"""The bounding twin: an exact rewrite of a network into operators auto_LiRPA bounds soundly.

auto_LiRPA 0.3 bounds only 2-D convolution and pooling, and its CROWN pass
through ``AveragePool`` is wrong unless stride == kernel and padding == 0 (a
unit test of ours found bounds that sampled outputs break). Rather than mend
those operators, :func:`bounding_twin` rewrites the module before it is
traced, sharing the original's parameters (so gradients and in-place mask
updates reach them):

- a signal network, input ``(N, C, L)``, is seen as ``(N, C, 1, L)``: every
  layer that sees ``(N, C, L)`` becomes its 2-D equivalent (a 1xk Conv2d,
  BatchNorm, per-channel Normalize, 1xk pooling); ``Flatten`` and
  ``GlobalAvgPool`` of ``(N, C, 1, L)`` equal those of ``(N, C, L)``, so what
  comes after them is reused as it is;
- average pooling (zero padding counted, torch's default) becomes the
  depthwise convolution with constant weight ``1/k`` per tap, which the
  (mended, ``compat.py`` #9) grouped convolution bounds exactly.

Max pooling stays auto_LiRPA's ``BoundMaxPool``: sound under IBP for any
kernel, stride and padding, and under CROWN / CROWN-IBP for 2-D pooling with
stride == kernel and no padding; its alpha-CROWN and its CROWN on 1-D
pooling fail inside auto_LiRPA 0.3. :func:`refusals` names those cases, and
``Bounder`` refuses them with one line instead of a traceback.

What each layer sees is read off one forward pass on zeros (forward
pre-hooks), so chains (``nn.Sequential``) and graphs (``torch_build.Graph``)
are handled alike. A module that needs no rewrite is returned as it is.

>>> from toolchain.models import layers as L
>>> from toolchain.models.torch_build import build_torch
>>> net = L.Network((2, 8), (L.Conv1d(2, 3, 3), L.ReLU(), L.AvgPool1d(2), L.Flatten()))
>>> twin = bounding_twin(build_torch(net), (2, 8))
>>> [type(m).__name__ for m in twin]
['_ConvAs2d', 'ReLU', '_AvgPoolAsConv', 'Flatten']
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from toolchain.models import torch_build as T


class _ConvAs2d(nn.Module):
    """A Conv1d applied to ``(N, C, 1, L)`` as a 1xk Conv2d, same parameters."""

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("conv1d twin: only numeric zero padding is supported")
        self.conv = conv

    def forward(self, x):
        # With height 1, kernel height 1 and no vertical padding, the vertical
        # stride and dilation do not matter; we make them equal to the
        # horizontal ones because auto_LiRPA's conv patches mishandle
        # non-square strides (compute_patches_stride_padding returns a 4-tuple).
        c = self.conv
        return F.conv2d(x, c.weight.unsqueeze(2), c.bias, c.stride[0],
                        (0, c.padding[0]), c.dilation[0], c.groups)


class _AvgPoolAsConv(nn.Module):
    """Average pooling as a depthwise convolution with constant weights 1/k."""

    def __init__(self, pool: nn.Module, channels: int, lift: bool, device=None) -> None:
        super().__init__()
        k, s, p = (v[0] if isinstance(v, tuple) else v
                   for v in (pool.kernel_size, pool.stride, pool.padding))
        if not pool.count_include_pad or pool.ceil_mode:
            raise ValueError("average pooling twin: needs count_include_pad and no ceil_mode")
        taps = (1, k) if lift or isinstance(pool, nn.AvgPool1d) else (k, k)
        weight = torch.full((channels, 1) + taps, 1.0 / (taps[0] * taps[1]), device=device)
        self.register_buffer("weight", weight)
        self.stride, self.padding, self.groups = s, ((0, p) if taps[0] == 1 else p), channels

    def forward(self, x):
        return F.conv2d(x, self.weight, None, self.stride, self.padding, 1, self.groups)


class _MaxPoolAs2d(nn.Module):
    """A MaxPool1d applied to ``(N, C, 1, L)`` as a 1xk 2-D max pool."""

    def __init__(self, pool: nn.MaxPool1d) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x):
        p = self.pool
        k, s, pad = (v[0] if isinstance(v, tuple) else v
                     for v in (p.kernel_size, p.stride, p.padding))
        return F.max_pool2d(x, (1, k), (1, s), (0, pad))


class _BatchNormAnyRank(nn.Module):
    """A BatchNorm1d applied to ``(N, C, 1, L)``, same parameters and statistics."""

    def __init__(self, bn: nn.BatchNorm1d) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x):
        # Running statistics updated here are auto_LiRPA's copies, which
        # Bounder.sync overwrites from the module before every bound.
        bn = self.bn
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                            bn.training or bn.running_mean is None,
                            bn.momentum or 0.0, bn.eps)


class _ChannelAffine2d(nn.Module):
    """``(x - mean) / std`` with per-channel constants viewed as (1, C, 1, 1)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.register_buffer("mean", norm.mean.reshape(1, -1, 1, 1))
        self.register_buffer("std", norm.std.reshape(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


_SAME_ON_2D = (nn.ReLU, nn.Flatten, T.Add, T.GlobalAvgPool)


def _twin_layer(layer: nn.Module, shape: tuple, device) -> nn.Module:
    """The twin of one layer whose input (batch axis included) has ``shape``."""
    lift = len(shape) == 3                     # (N, C, L), seen as (N, C, 1, L)
    if isinstance(layer, (nn.AvgPool1d, nn.AvgPool2d)):
        return _AvgPoolAsConv(layer, shape[1], lift, device)
    if not lift or isinstance(layer, _SAME_ON_2D):
        return layer
    if isinstance(layer, nn.Conv1d):
        return _ConvAs2d(layer)
    if isinstance(layer, nn.BatchNorm1d):
        return _BatchNormAnyRank(layer)
    if isinstance(layer, nn.MaxPool1d):
        return _MaxPoolAs2d(layer)
    if isinstance(layer, T.Normalize):
        return _ChannelAffine2d(layer)
    raise ValueError(f"cannot bound {type(layer).__name__} in a signal network")


def _input_shapes(module: nn.Module, input_shape) -> list[tuple]:
    """The shape of the (first) input each child module sees, from one pass on zeros."""
    seen: list[tuple] = []
    hooks = [child.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
             for child in module.children()]
    try:
        training = module.training
        module.eval()
        first = next(module.parameters(), torch.zeros(()))
        with torch.no_grad():
            module(torch.zeros((1,) + tuple(input_shape), dtype=first.dtype, device=first.device))
        module.train(training)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def refusals(traced: nn.Module) -> dict[str, str]:
    """Bound methods this (twin) module cannot be bounded with, and why (one line)."""
    out: dict[str, str] = {}
    for layer in traced.modules():
        if isinstance(layer, _MaxPoolAs2d):
            refused, what, instead = ("crown-ibp", "crown", "alpha-crown"), "1-D max pooling", "ibp"
        elif isinstance(layer, nn.MaxPool2d):
            k, s, p = (v if isinstance(v, int) else v[0]
                       for v in (layer.kernel_size, layer.stride, layer.padding))
            if k == s and p == 0:
                refused, what, instead = ("alpha-crown",), "max pooling", "crown"
            else:
                refused, what, instead = (("crown-ibp", "crown", "alpha-crown"),
                                          "max pooling with stride != kernel or padding", "ibp")
        else:
            continue
        for method in refused:
            out.setdefault(method, f"{method} cannot bound {what} (auto_LiRPA 0.3 fails on "
                                   f"it); use {instead}")
    return out


def needs_lift(input_shape) -> bool:
    """Signal networks, (C, L) inputs, are bounded on ``x.unsqueeze(2)``."""
    return len(tuple(input_shape)) == 2


def bounding_twin(module: nn.Module, input_shape) -> nn.Module:
    """``module`` rewritten for auto_LiRPA (see the module docstring), or ``module``
    itself when nothing needs rewriting. Feed it ``x.unsqueeze(2)`` when
    :func:`needs_lift`."""
    if not isinstance(module, (nn.Sequential, T.Graph)):
        return module
    children = list(module.children())
    shapes = _input_shapes(module, input_shape)
    if len(shapes) != len(children):
        raise ValueError("bounding twin: a layer ran more than once or not at all")
    device = next(module.parameters(), torch.zeros(())).device
    twins = [_twin_layer(layer, shape, device) for layer, shape in zip(children, shapes)]
    if all(t is layer for t, layer in zip(twins, children)):
        return module
    twin = (nn.Sequential(*twins) if isinstance(module, nn.Sequential)
            else T.Graph(twins, module.inputs))
    twin.train(module.training)
    return twin
