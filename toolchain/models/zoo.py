"""The model zoo: builders that return a layer list.

``cnn_4layer`` is the network used by the VeriSparse authors and by HYDRA
(conv 16 and conv 32, 4x4 stride 2, FC 100, FC 10). ``cnn_small`` halves its
widths so the default build trains in minutes on two CPU cores.
"""

from __future__ import annotations

from toolchain.errors import VstError
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


ZOO = {"mlp": mlp, "cnn_4layer": cnn_4layer, "cnn_small": cnn_small, "conv1d": conv1d}
# Conv layers per architecture: ``channels`` must name exactly that many (the
# conv archs are two-conv stacks: cnn_4layer is conv, conv, FC, FC); an mlp has
# none, so ``channels`` given to it is a mistake, not a no-op. Every arch takes
# ``widths``: its hidden fully connected layers, as many as listed.
CONV_LAYERS = {"mlp": 0, "cnn_4layer": 2, "cnn_small": 2, "conv1d": 2}


def check_options(arch: str, channels, where: str = "model") -> None:
    """``channels`` (``None``: the arch's own) must fit ``arch``.

    >>> check_options("mlp", [8, 16])           # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    toolchain.errors.VstError: model.channels does not apply to arch mlp ...
    """
    if arch not in ZOO:
        raise VstError(f"unknown model {arch!r}; choose one of {', '.join(ZOO)}")
    convs = CONV_LAYERS[arch]
    if channels is not None and not convs:
        raise VstError(f"{where}.channels does not apply to arch {arch} (it has no conv "
                       "layers); remove it")
    if channels is not None and len(channels) != convs:
        raise VstError(f"{where}.channels must list {convs} channel counts (one per conv "
                       f"layer) for arch {arch}, got {len(channels)}: {list(channels)}")


def build_network(arch: str, input_shape: Shape, num_classes: int, *, channels=None,
                  widths=None, batchnorm: bool = False) -> Network:
    """Build a zoo architecture by name; ``None`` options keep its defaults."""
    check_options(arch, channels)
    kwargs = {"batchnorm": batchnorm}
    if widths is not None:
        kwargs["widths"] = tuple(widths)
    if channels is not None:
        kwargs["channels"] = tuple(channels)
    network = ZOO[arch](tuple(input_shape), num_classes, **kwargs)
    network.check_size(f"model {arch}")
    return network
