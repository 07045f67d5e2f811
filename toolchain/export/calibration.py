"""The int8 calibration set: training samples, without the few that stretch a range.

TFLite's converter sets each activation tensor's int8 range from the minimum
and maximum it sees over the representative data set; it has no percentile
option. One sample that drives a layer far past what every other sample does
therefore sets that layer's scale for all of them. Measured on the graph zoo's
ds_cnn (structured density 0.3, certified at eps 0.15, compacted): one of 300
training samples took a depthwise layer's output to 320 while the 99th
percentile of the per-sample maxima was 13; the step became 1.26, most
activations of that layer quantized to a handful of levels, and the int8
model agreed with the float one on 55.5% of the test split.

``calibration_set`` runs the float Keras model on the candidate samples, takes
each layer's per-sample maximum of ``|activation|``, and drops the samples
whose maximum exceeds ``OUTLIER_RATIO`` times that layer's ``QUANTILE`` in any
layer, at most ``MAX_DROPPED`` of them (a heavy tail that many samples share
is the distribution, not an outlier, and is kept). The dropped samples'
activations then saturate at the clamp on the device: the int8 network is
whatever it is, and its certificate (``verify/int8_bounds.py``) bounds exactly
that network, clamp included, so soundness does not depend on this choice.
"""

from __future__ import annotations

import numpy as np

from toolchain.export.keras_build import _keras

QUANTILE = 0.99
OUTLIER_RATIO = 4.0     # a sample is an outlier past 4x a layer's 99th percentile
MAX_DROPPED = 0.02      # never more than 2% of the samples


def activation_maxima(keras_model, x_nhwc: np.ndarray) -> np.ndarray:
    """(samples, layers): each sample's largest ``|activation|`` in each layer's output."""
    keras = _keras()
    layers = [layer for layer in keras_model.layers
              if not isinstance(layer, keras.layers.InputLayer)]
    probe = keras.Model(keras_model.inputs, [layer.output for layer in layers])
    outputs = probe.predict(x_nhwc, batch_size=64, verbose=0)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return np.stack([np.abs(o.reshape(len(x_nhwc), -1)).max(axis=1) for o in outputs], axis=1)


def outliers(maxima: np.ndarray) -> np.ndarray:
    """Indices of the samples to drop, given ``activation_maxima`` (largest stretch first)."""
    typical = np.quantile(maxima, QUANTILE, axis=0)
    stretch = (maxima / np.maximum(typical, 1e-12)).max(axis=1)
    worst = np.argsort(-stretch, kind="stable")[: int(MAX_DROPPED * len(maxima))]
    return np.sort(worst[stretch[worst] > OUTLIER_RATIO])


def calibration_set(keras_model, x_nhwc: np.ndarray) -> tuple[np.ndarray, int]:
    """``x_nhwc`` without its outliers, and how many were dropped."""
    drop = outliers(activation_maxima(keras_model, x_nhwc))
    return np.delete(x_nhwc, drop, axis=0), len(drop)
