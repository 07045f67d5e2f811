"""The model zoo: builders that return a network (the graph IR).

``cnn_4layer`` is the network used by the VeriSparse authors and by HYDRA
(conv 16 and conv 32, 4x4 stride 2, FC 100, FC 10). ``cnn_small`` halves its
widths so the default build trains in minutes on two CPU cores.

The graph models are MLPerf Tiny's reference shapes, scaled to the input
(``zoo_graph.py``): ``ds_cnn`` / ``ds_cnn1d`` (keyword spotting: a strided
conv, four depthwise-separable blocks, global average pooling) and
``resnet8`` / ``resnet1d`` (image classification: three residual stages
16/32/64, 1x1 projection shortcuts where the shape changes).
"""

from __future__ import annotations

from toolchain.errors import VstError
from toolchain.models import zoo_graph
from toolchain.models.layers import (BatchNorm, Conv1d, Conv2d, Flatten, Linear,
                                     Network, ReLU, Shape)


def _conv_stack(conv, input_shape: Shape, channels, kernel: int, batchnorm: bool):
    layers, c = [], input_shape[0]
    for out in channels:
        layers.append(conv(c, out, kernel, 2, (kernel - 1) // 2 if kernel % 2 else kernel // 2 - 1))
        if batchnorm:
            layers.append(BatchNorm(out))
        layers.append(ReLU())
        c = out
    return layers


def _head(body, input_shape: Shape, widths, num_classes: int, batchnorm: bool) -> Network:
    layers = list(body) + [Flatten()]
    features = Network(input_shape, tuple(layers)).shapes()[-1][0]
    for width in widths:
        layers.append(Linear(features, width))
        if batchnorm:
            layers.append(BatchNorm(width))
        layers.append(ReLU())
        features = width
    layers.append(Linear(features, num_classes))
    return Network(input_shape, tuple(layers))


def mlp(input_shape: Shape, num_classes: int, widths=(256, 256), batchnorm=False) -> Network:
    return _head([], input_shape, widths, num_classes, batchnorm)


def cnn_4layer(input_shape: Shape, num_classes: int, channels=(16, 32), widths=(100,),
               batchnorm=False) -> Network:
    if len(input_shape) != 3:
        raise VstError(f"cnn_4layer needs image inputs (C, H, W), got {input_shape}")
    return _head(_conv_stack(Conv2d, input_shape, channels, 4, batchnorm),
                 input_shape, widths, num_classes, batchnorm)


def cnn_small(input_shape: Shape, num_classes: int, channels=(8, 16), widths=(64,),
              batchnorm=False) -> Network:
    return cnn_4layer(input_shape, num_classes, channels, widths, batchnorm)


def conv1d(input_shape: Shape, num_classes: int, channels=(16, 32), widths=(64,),
           batchnorm=False) -> Network:
    if len(input_shape) != 2:
        raise VstError(f"conv1d needs signal inputs (C, L), got {input_shape}")
    return _head(_conv_stack(Conv1d, input_shape, channels, 5, batchnorm),
                 input_shape, widths, num_classes, batchnorm)


ZOO = {"mlp": mlp, "cnn_4layer": cnn_4layer, "cnn_small": cnn_small, "conv1d": conv1d,
       "ds_cnn": zoo_graph.ds_cnn, "ds_cnn1d": zoo_graph.ds_cnn1d,
       "resnet8": zoo_graph.resnet8, "resnet1d": zoo_graph.resnet1d}
# architectures without hidden linear layers (no ``widths``), always with BatchNorm
GRAPH_ZOO = ("ds_cnn", "ds_cnn1d", "resnet8", "resnet1d")
# How many counts ``channels`` may list per architecture: the plain conv archs
# are two-conv stacks (cnn_4layer is conv, conv, FC, FC); an mlp has none, so
# ``channels`` given to it is a mistake, not a no-op; the graph archs take one
# width for all blocks or one per block (ds_cnn: stem + 4 blocks; resnets: 3
# stages). The graph archs have no hidden linear layers, so no ``widths``.
CHANNEL_COUNTS = {"mlp": (), "cnn_4layer": (2,), "cnn_small": (2,), "conv1d": (2,),
                  "ds_cnn": (1, 5), "ds_cnn1d": (1, 5), "resnet8": (1, 3), "resnet1d": (1, 3)}


def check_options(arch: str, channels, widths=None, where: str = "model") -> None:
    """``channels`` and ``widths`` (``None``: the arch's own) must fit ``arch``.

    >>> check_options("mlp", [8, 16])           # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    toolchain.errors.VstError: model.channels does not apply to arch mlp ...
    """
    if arch not in ZOO:
        raise VstError(f"unknown model {arch!r}; choose one of {', '.join(ZOO)}")
    counts = CHANNEL_COUNTS[arch]
    if channels is not None and not counts:
        raise VstError(f"{where}.channels does not apply to arch {arch} (it has no conv "
                       "layers); remove it")
    if channels is not None and len(channels) not in counts:
        need = " or ".join(map(str, counts))
        raise VstError(f"{where}.channels must list {need} channel counts for arch {arch}, "
                       f"got {len(channels)}: {list(channels)}")
    if widths is not None and arch in GRAPH_ZOO:
        raise VstError(f"model {arch} has no hidden linear layers: {where}.widths does not "
                       "apply")


def build_network(arch: str, input_shape: Shape, num_classes: int, *, channels=None,
                  widths=None, batchnorm: bool = False) -> Network:
    """Build a zoo architecture by name; ``None`` options keep its defaults."""
    check_options(arch, channels, widths)
    kwargs = {} if arch in GRAPH_ZOO else {"batchnorm": batchnorm}
    if widths is not None:
        kwargs["widths"] = tuple(widths)
    if channels is not None:
        kwargs["channels"] = tuple(channels)
    network = ZOO[arch](tuple(input_shape), num_classes, **kwargs)
    network.check_size(f"model {arch}")
    return network


def network_for(model, input_shape: Shape, num_classes: int) -> Network:
    """The network a ``[model]`` config section describes: a zoo architecture, or
    the ``[[model.layers]]`` graph when ``arch`` is ``custom``."""
    if model.arch == "custom":
        from toolchain.models.custom import build_custom
        return build_custom(model.layers, input_shape, num_classes)
    return build_network(model.arch, input_shape, num_classes, channels=model.channels or None,
                         widths=model.widths or None, batchnorm=model.batchnorm)
