"""TFLite export of graph networks: the Keras functional rebuild, float parity,
int8 agreement, TFLite Micro against LiteRT, and what is refused.

Models (``graph_export``): resnet8 / ds_cnn on mnist5k, their 1-D forms on
synth1d, and two hand-made networks with odd shapes (depth multiplier 2,
padded average pooling, "same" max pooling, a residual Add without ReLU).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graph_export import GRAPH_NETWORKS, graph_model
from test_export_c import random_state
from toolchain.errors import VstError
from toolchain.export.c.tflite_graph import read_tflite
from toolchain.models import layers as L
from toolchain.models.torch_build import build_torch

# the TFLite operators each model must become (1-D ones on a (1, 1, L, C) view)
OPERATORS = {
    "resnet8": {"CONV_2D", "ADD", "AVERAGE_POOL_2D", "FULLY_CONNECTED"},
    "ds_cnn": {"CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "FULLY_CONNECTED"},
    "resnet1d": {"CONV_2D", "ADD", "AVERAGE_POOL_2D", "RESHAPE"},
    "ds_cnn1d": {"DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "RESHAPE"},
    "odd2d": {"DEPTHWISE_CONV_2D", "ADD", "PAD", "AVERAGE_POOL_2D", "MAX_POOL_2D"},
    "odd1d": {"DEPTHWISE_CONV_2D", "ADD", "PAD", "AVERAGE_POOL_2D", "MAX_POOL_2D", "RESHAPE"},
}


def _torch(network, state, x):
    with torch.no_grad():
        return build_torch(network, state).eval()(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name", list(GRAPH_NETWORKS))
def test_keras_rebuild_and_int8_tflite_of_graph_networks(name):
    from toolchain.export.keras_build import build_keras, to_channels_last
    from toolchain.export.tflite import compare_runtimes, dequantize, quant_params, run_tflite

    network, state, x, path = graph_model(name)
    reference = _torch(network, state, x)
    keras_out = build_keras(network, state)(to_channels_last(x)).numpy()
    assert np.max(np.abs(keras_out - reference)) < 1e-5 * max(1.0, np.abs(reference).max())
    ops = {op.name for op in read_tflite(path).ops}
    assert OPERATORS[name] <= ops
    assert "DEPTHWISE_CONV_2D" not in ops or any(
        getattr(layer, "groups", 1) > 1 for layer in network.layers)
    # int8 (TFLite Micro) agrees with the float network on top-1 of real inputs
    q = run_tflite(path, x, runtime="tflm")
    logits = dequantize(q, *quant_params(path)["output"])
    assert np.mean(logits.argmax(1) == reference.argmax(1)) >= 0.9
    assert np.max(np.abs(logits - reference)) < 0.25 * np.abs(reference).max()
    # LiteRT's reference kernels: the same int8 arithmetic except FULLY_CONNECTED's
    # rounding (module docstring of tflite.py), so at most one step apart
    runtimes = compare_runtimes(path, x)
    assert runtimes["max_step_diff"] <= 1 and runtimes["top1_agreement"] >= 0.95


def test_float_tflite_of_a_residual_and_a_depthwise_network(tmp_path):
    """The float .tflite of export_tflite against PyTorch, and the int8 report."""
    from toolchain.export.tflite import export_tflite, tflite_report
    from toolchain.models.modelfile import VstModel

    for name in ("resnet1d", "odd2d"):
        network, state, x, _ = graph_model(name)
        model = VstModel(network, state, {}, {})
        paths = export_tflite(model, tmp_path / name, x, name=name, samples=len(x))
        report = tflite_report(model, paths, x)
        assert report["float_max_abs_diff"] < 1e-5, report
        assert report["int8_agreement"] >= 0.9, report


def test_average_pooling_counts_the_padding_and_max_pooling_ignores_it():
    """PyTorch's AvgPool (count_include_pad) and MaxPool (-inf padding) on an input
    whose border matters: negative values, so zero padding would change a max."""
    from toolchain.export.keras_build import build_keras, to_channels_last

    for pool in (L.AvgPool2d(3, 2, 1), L.MaxPool2d(3, 2, 1), L.AvgPool1d(3, 1, 1),
                 L.MaxPool1d(3, 2, 1)):
        shape = (3, 7, 7) if pool.rank == 2 else (3, 9)
        network = L.Network(shape, (pool, L.Flatten()))
        x = -np.random.default_rng(0).random((4, *shape), dtype=np.float32) - 0.5
        got = build_keras(network, {})(to_channels_last(x)).numpy()
        assert np.max(np.abs(got - _torch(network, {}, x))) < 1e-6, pool


def test_unexportable_graphs_are_refused_in_one_line():
    from toolchain.export.keras_build import build_keras

    grouped = L.Network((4, 6, 6), (L.Conv2d(4, 4, 3, 1, 1, groups=2), L.Flatten(),
                                    L.Linear(144, 2)))
    with pytest.raises(VstError, match=r"layer 0 \(conv2d with groups 2\).*depthwise"):
        build_keras(grouped, random_state(grouped, 1.0))
    # TF pads max pooling with -inf only as "same", which pads 0 before on 8 with k2/s2
    padded_max = L.Network((2, 8, 8), (L.MaxPool2d(2, 2, 1), L.Flatten()))
    with pytest.raises(VstError, match=r"layer 0 \(maxpool2d with padding 1\)"):
        build_keras(padded_max, {})
