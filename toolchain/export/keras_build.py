"""Rebuild a layer list in Keras 3, channels-last (NHWC / NLC), for TFLite.

PyTorch is channels-first, TFLite channels-last. The Keras model takes one
sample batch ``(1, H, W, C)`` (or ``(1, L, C)``, or ``(1, F)``) and computes
exactly the PyTorch function on the transposed input:

- Conv2d / Conv1d -> Conv2D / Conv1D with kernels transposed to HWIO / WIO;
  PyTorch's symmetric padding becomes ``padding="same"`` when TF's "same"
  pads identically (true for cnn_small's k4/s2/p1), else an explicit
  ZeroPadding layer (one PAD op);
- a BatchNorm right after a Conv/Linear is folded into its weights (no op on
  the MCU); elsewhere it becomes a Keras BatchNormalization with our stats;
- Normalize -> ``Rescaling(1/std, -mean/std)`` per channel;
- Flatten keeps PyTorch's (C, H, W) feature order by permuting the *rows of
  the next Linear* (no Transpose op); only a Flatten with no Linear after it
  gets a Permute to channels-first first.

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
from toolchain.export import check_exportable
from toolchain.scratch import scratch_file
from toolchain.models import layers as L

log = logging.getLogger("vst.export")


def to_channels_last(x: np.ndarray) -> np.ndarray:
    """NCHW -> NHWC and NCL -> NLC (a no-op for (N, F)), as float32."""
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)) if x.ndim > 2 else x


def channels_last_shape(shape: L.Shape) -> L.Shape:
    """Per-sample shape (C, H, W) -> (H, W, C); (C, L) -> (L, C); (F,) unchanged."""
    shape = tuple(shape)
    return shape[1:] + shape[:1] if len(shape) > 1 else shape


def same_padding_matches(size: int, kernel: int, stride: int, padding: int) -> bool:
    """True when TF's ``padding="same"`` equals PyTorch's symmetric ``padding``."""
    torch_out = (size + 2 * padding - kernel) // stride + 1
    same_out = -(-size // stride)
    total = max((same_out - 1) * stride + kernel - size, 0)
    return torch_out == same_out and total // 2 == padding


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
def tensorflow_quiet():
    """Send TensorFlow's native stderr chatter (absl INFO lines at import and
    conversion, which no environment variable silences) to the debug log.
    If the block fails, the captured text is replayed on stderr."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with scratch_file() as captured:            # needs no writable temporary folder
        os.dup2(captured.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            if failed:
                sys.stderr.write(text)
            elif text.strip():
                log.debug("tensorflow: %s", text.strip())


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
    shapes = [network.input_shape] + network.shapes()
    inputs = keras.Input(channels_last_shape(network.input_shape), batch_size=1, name="input")
    h, order, i = inputs, None, 0
    while i < len(network.layers):
        layer, in_shape = network.layers[i], shapes[i]
        bn = network.layers[i + 1] if i + 1 < len(network.layers) else None
        bn = bn if isinstance(layer, L.WEIGHTED) and isinstance(bn, L.BatchNorm) else None
        if isinstance(layer, L.Flatten):
            h, order = _flatten(keras, h, in_shape, network.layers[i + 1:])
        elif isinstance(layer, L.ReLU):
            h = keras.layers.ReLU()(h)
        elif isinstance(layer, L.Linear):
            h = _dense(keras, h, layer, p, i, order, bn)
            order = None
        elif isinstance(layer, (L.Conv2d, L.Conv1d)):
            h = _conv(keras, h, layer, in_shape, p, i, bn)
        else:
            h = _per_channel(keras, h, layer, p, i, order)
        i += 2 if bn is not None else 1
    return keras.Model(inputs, h, name="vst")


def _flatten(keras, h, in_shape: L.Shape, rest):
    """Flatten; returns the pending feature order for the next Linear (or None)."""
    order = flatten_order(in_shape)
    if np.array_equal(order, np.arange(order.size)):
        return keras.layers.Flatten()(h), None
    if any(isinstance(layer, L.Linear) for layer in rest):
        return keras.layers.Flatten()(h), order
    to_channels_first = (len(in_shape),) + tuple(range(1, len(in_shape)))  # NHWC: (3, 1, 2)
    return keras.layers.Flatten()(keras.layers.Permute(to_channels_first)(h)), None


def _dense(keras, h, layer: L.Linear, p: dict, i: int, order, bn):
    weight, bias = p[f"{i}.weight"], p[f"{i}.bias"]
    if bn is not None:
        weight, bias = _fold_bn(weight, bias, p, i + 1, bn)
    if order is not None:
        weight = weight[:, order]
    dense = keras.layers.Dense(layer.out_features, name=f"dense_{i}")
    h = dense(h)
    dense.set_weights([weight.T.astype(np.float32), bias.astype(np.float32)])
    return h


def _conv(keras, h, layer, in_shape: L.Shape, p: dict, i: int, bn):
    weight, bias = p[f"{i}.weight"], p[f"{i}.bias"]
    if bn is not None:
        weight, bias = _fold_bn(weight, bias, p, i + 1, bn)
    two_d = isinstance(layer, L.Conv2d)
    spatial = in_shape[1:]
    same = layer.padding > 0 and all(
        same_padding_matches(s, layer.kernel, layer.stride, layer.padding) for s in spatial)
    if layer.padding > 0 and not same:
        pad = keras.layers.ZeroPadding2D if two_d else keras.layers.ZeroPadding1D
        h = pad(layer.padding)(h)
    conv_cls = keras.layers.Conv2D if two_d else keras.layers.Conv1D
    conv = conv_cls(layer.out_channels, layer.kernel, strides=layer.stride,
                    padding="same" if same else "valid", name=f"conv_{i}")
    h = conv(h)
    kernel = weight.transpose(2, 3, 1, 0) if two_d else weight.transpose(2, 1, 0)
    conv.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return h


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
