"""Rebuild a network (any DAG of vst's layers) in Keras 3, channels-last, for TFLite.

PyTorch is channels-first, TFLite channels-last. The Keras model takes one
sample batch ``(1, H, W, C)`` (or ``(1, L, C)``, or ``(1, F)``) and computes
exactly the PyTorch function on the transposed input. It is a functional
model wired as the network (``Network.inputs``); the layers become:

- Conv2d / Conv1d -> Conv2D / Conv1D with kernels transposed to HWIO / WIO,
  depthwise ones (``groups == in_channels``) -> DepthwiseConv2D / 1D
  (``depth_multiplier = out / in``). PyTorch's symmetric padding becomes
  ``padding="same"`` when TF's "same" pads identically (true for k3/s1/p1 and
  cnn_small's k4/s2/p1), else an explicit ZeroPadding layer (one PAD op);
- a BatchNorm that reads a Conv/Linear nothing else reads is folded into its
  weights (``models.fold``: no op on the MCU); elsewhere it becomes a Keras
  BatchNormalization with our statistics;
- AvgPool -> ZeroPadding (when padded) + AveragePooling "valid", so the zero
  padding counts in the divisor as in PyTorch (TF's "same" would not count
  it); MaxPool -> MaxPooling ("same" where PyTorch pads: TF pads max pooling
  with -inf, as PyTorch does; other paddings are refused by
  ``check_exportable``); GlobalAvgPool -> AveragePooling over the whole
  image + Flatten (one AVERAGE_POOL_2D, TFLite's integer average); Add -> Add;
- Normalize -> ``Rescaling(1/std, -mean/std)`` per channel;
- Flatten keeps PyTorch's (C, H, W) feature order by permuting the *rows of
  the Linear layers that read it* (no Transpose op); a Flatten whose value
  reaches anything but a Linear (through ReLU / BatchNorm / Normalize) gets a
  Permute to channels-first first.

The TFLite converter then writes 1-D layers as 2-D operators on a (1, 1, L, C)
view (RESHAPE before and after), and fuses a ReLU into the CONV_2D,
DEPTHWISE_CONV_2D, FULLY_CONNECTED or ADD before it.

Example: ``Conv2d(1,4,4,2,1) -> BatchNorm(4) -> ReLU -> Flatten -> Linear(196,10)``
on (1, 28, 28) becomes ``Input(1,28,28,1) -> Conv2D(same, BN folded) -> ReLU
-> Flatten -> Dense(rows permuted)``.

>>> keras_model = build_keras(model.network, model.state)      # doctest: +SKIP
>>> keras_model(to_channels_last(x_nchw))                      # == torch logits
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys

import numpy as np

from toolchain.errors import VstError
from toolchain.export import check_exportable, same_padding_matches
from toolchain.models import graph
from toolchain.scratch import scratch_file
from toolchain.models import layers as L
from toolchain.models.fold import batchnorm_folds

log = logging.getLogger("vst.export")


def to_channels_last(x: np.ndarray) -> np.ndarray:
    """NCHW -> NHWC and NCL -> NLC (a no-op for (N, F)), as float32."""
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)) if x.ndim > 2 else x


def channels_last_shape(shape: L.Shape) -> L.Shape:
    """Per-sample shape (C, H, W) -> (H, W, C); (C, L) -> (L, C); (F,) unchanged."""
    shape = tuple(shape)
    return shape[1:] + shape[:1] if len(shape) > 1 else shape


def flatten_order(shape: L.Shape) -> np.ndarray:
    """For channels-last flattening of ``shape`` (C, ...): the PyTorch feature index at
    each Keras position. (2, 1, 2) -> [0, 2, 1, 3]."""
    index = np.arange(math.prod(shape)).reshape(shape)
    return np.moveaxis(index, 0, -1).ravel() if len(shape) > 1 else index.ravel()


def _numpy(state: dict) -> dict[str, np.ndarray]:
    out = {}
    for name, value in state.items():
        value = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        out[name] = value.astype(np.float64)  # fold in float64, round once to float32
    return out


def _fold_bn(weight, bias, p: dict, i: int, bn: L.BatchNorm):
    scale, shift = bn.affine(*(p[f"{i}.{k}"] for k in L.BatchNorm.TENSORS))
    scale_w = scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    return weight * scale_w, bias * scale + shift


@contextlib.contextmanager
def native_stderr():
    """Capture what native code writes to the process's stderr (fd 2) in the
    block; yields a list that holds the text once the block has ended."""
    text: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with scratch_file() as captured:            # needs no writable temporary folder
        os.dup2(captured.fileno(), 2)
        try:
            yield text
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text.append(captured.read().decode(errors="replace"))


@contextlib.contextmanager
def tensorflow_quiet():
    """Send TensorFlow's native stderr chatter (absl INFO lines at import and
    conversion, which no environment variable silences) to the debug log.
    If the block fails, the captured text is replayed on stderr."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ok, text = False, []
    try:
        with native_stderr() as text:
            yield
        ok = True
    finally:
        captured = "".join(text)
        if not ok:
            sys.stderr.write(captured)
        elif captured.strip():
            log.debug("tensorflow: %s", captured.strip())


def _keras():
    with tensorflow_quiet():
        import keras

    if keras.backend.backend() != "tensorflow":
        raise VstError(f"TFLite export needs the TensorFlow Keras backend, "
                       f"not {keras.backend.backend()!r} (unset KERAS_BACKEND)")
    return keras


def build_keras(network: L.Network, state: dict):
    """The Keras model (batch 1, channels-last) computing ``network`` with ``state``."""
    check_exportable(network, "TFLite")
    keras = _keras()
    p = _numpy(state)
    in_shapes = network.in_shapes()
    folds = batchnorm_folds(network)
    bn_of = {i: j for j, i in folds.items()}
    inputs = keras.Input(channels_last_shape(network.input_shape), batch_size=1, name="input")
    # per layer: its Keras tensor and, after a Flatten, the pending PyTorch feature order
    values: dict[int, tuple] = {graph.INPUT: (inputs, None)}
    for i, layer in enumerate(network.layers):
        reads = network.inputs[i]
        h, order = values[reads[0]]
        in_shape = in_shapes[i]
        if i in folds:                       # folded into the layer it reads
            pass
        elif isinstance(layer, L.Flatten):
            h, order = _flatten(keras, h, in_shape, _defer_order(network, i))
        elif isinstance(layer, L.ReLU):
            h = keras.layers.ReLU(name=f"relu_{i}")(h)
        elif isinstance(layer, L.Linear):
            h, order = _dense(keras, h, layer, p, i, order, bn_of.get(i), network), None
        elif isinstance(layer, (L.Conv2d, L.Conv1d)):
            h = _conv(keras, h, layer, in_shape, p, i, bn_of.get(i), network)
        elif isinstance(layer, L.POOLS):
            h = _pool(keras, h, layer, in_shape, i)
        elif isinstance(layer, L.GlobalAvgPool):
            pool = keras.layers.AveragePooling2D if len(in_shape) == 3 else \
                keras.layers.AveragePooling1D
            h = pool(tuple(in_shape[1:]), name=f"globalavgpool_{i}")(h)
            h = keras.layers.Flatten(name=f"globalavgpool_{i}_flat")(h)
        elif isinstance(layer, L.Add):
            h = keras.layers.Add(name=f"add_{i}")([h, values[reads[1]][0]])
        else:
            h = _per_channel(keras, h, layer, p, i, order)
        values[i] = (h, order)
    return keras.Model(inputs, values[len(network.layers) - 1][0], name="vst")


def _defer_order(network: L.Network, i: int) -> bool:
    """Whether the value of Flatten ``i`` reaches only Linear layers (through
    ReLU, BatchNorm and Normalize, which follow the order per feature), so they
    can take PyTorch's feature order in their rows; else it is permuted."""
    readers = graph.consumers(network.inputs)
    todo, seen = [i], set()
    while todo:
        j = todo.pop()
        if not readers[j]:
            return False                      # the network output
        for k in readers[j]:
            layer = network.layers[k]
            if isinstance(layer, (L.ReLU, L.BatchNorm, L.Normalize)):
                if k not in seen:
                    seen.add(k)
                    todo.append(k)
            elif not isinstance(layer, L.Linear):
                return False
    return True


def _flatten(keras, h, in_shape: L.Shape, defer: bool):
    """Flatten; returns the pending feature order for the Linear layers (or None)."""
    order = flatten_order(in_shape)
    if np.array_equal(order, np.arange(order.size)):
        return keras.layers.Flatten()(h), None
    if defer:
        return keras.layers.Flatten()(h), order
    to_channels_first = (len(in_shape),) + tuple(range(1, len(in_shape)))  # NHWC: (3, 1, 2)
    return keras.layers.Flatten()(keras.layers.Permute(to_channels_first)(h)), None


def _weights(p: dict, i: int, bn: int | None, network: L.Network):
    """The layer's weight and bias, with the BatchNorm that folds into it."""
    weight, bias = p[f"{i}.weight"], p[f"{i}.bias"]
    if bn is not None:
        weight, bias = _fold_bn(weight, bias, p, bn, network.layers[bn])
    return weight, bias


def _dense(keras, h, layer: L.Linear, p: dict, i: int, order, bn, network):
    weight, bias = _weights(p, i, bn, network)
    if order is not None:
        weight = weight[:, order]
    dense = keras.layers.Dense(layer.out_features, name=f"dense_{i}")
    h = dense(h)
    dense.set_weights([weight.T.astype(np.float32), bias.astype(np.float32)])
    return h


def _padding(keras, h, layer, spatial, two_d: bool, same_ok: bool = True):
    """ZeroPadding where TF's "same" does not pad as PyTorch; the Keras padding mode."""
    if not layer.padding:
        return h, "valid"
    if same_ok and all(same_padding_matches(s, layer.kernel, layer.stride, layer.padding)
                       for s in spatial):
        return h, "same"
    pad = keras.layers.ZeroPadding2D if two_d else keras.layers.ZeroPadding1D
    return pad(layer.padding)(h), "valid"


def _conv(keras, h, layer, in_shape: L.Shape, p: dict, i: int, bn, network):
    weight, bias = _weights(p, i, bn, network)
    two_d = isinstance(layer, L.Conv2d)
    h, padding = _padding(keras, h, layer, in_shape[1:], two_d)
    if layer.groups > 1:                                 # depthwise (check_exportable)
        mult = layer.out_channels // layer.in_channels
        cls = keras.layers.DepthwiseConv2D if two_d else keras.layers.DepthwiseConv1D
        conv = cls(layer.kernel, strides=layer.stride, padding=padding, depth_multiplier=mult,
                   name=f"dwconv_{i}")
        h = conv(h)
        # torch (in * mult, 1, k[, k]) -> Keras (k[, k], in, mult): output c * mult + m
        kernel = weight.reshape((layer.in_channels, mult) + weight.shape[2:])
        kernel = kernel.transpose(2, 3, 0, 1) if two_d else kernel.transpose(2, 0, 1)
    else:
        cls = keras.layers.Conv2D if two_d else keras.layers.Conv1D
        conv = cls(layer.out_channels, layer.kernel, strides=layer.stride, padding=padding,
                   name=f"conv_{i}")
        h = conv(h)
        kernel = weight.transpose(2, 3, 1, 0) if two_d else weight.transpose(2, 1, 0)
    conv.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return h


def _pool(keras, h, layer, in_shape: L.Shape, i: int):
    two_d = layer.rank == 2
    average = isinstance(layer, (L.AvgPool2d, L.AvgPool1d))
    # average pooling counts PyTorch's zero padding: explicit zeros, never TF's "same"
    h, padding = _padding(keras, h, layer, in_shape[1:], two_d, same_ok=not average)
    kind = ("AveragePooling" if average else "MaxPooling") + ("2D" if two_d else "1D")
    return getattr(keras.layers, kind)(layer.kernel, strides=layer.stride, padding=padding,
                                       name=f"{layer.kind}_{i}")(h)


def _per_channel(keras, h, layer, p: dict, i: int, order):
    """Normalize or a BatchNorm that does not follow a Conv/Linear (acts on the last axis)."""
    def features(values):  # per-feature values after a Flatten follow the Keras order
        values = np.asarray(values, dtype=np.float64).ravel()
        return values[order] if order is not None and values.size > 1 else values

    if isinstance(layer, L.Normalize):
        mean, std = features(layer.mean), features(layer.std)
        return keras.layers.Rescaling((1.0 / std).astype(np.float32),
                                      (-mean / std).astype(np.float32), name=f"normalize_{i}")(h)
    bn = keras.layers.BatchNormalization(axis=-1, epsilon=layer.eps, name=f"batchnorm_{i}")
    h = bn(h)
    bn.set_weights([features(p[f"{i}.{k}"]).astype(np.float32)
                    for k in L.BatchNorm.TENSORS])
    return h
