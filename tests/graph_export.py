"""Graph models for the export tests, built once per test session.

Two zoo models on real data (resnet8 on mnist5k: residual Adds, 1x1
projections, stride-2 PADs; ds_cnn on mnist5k: depthwise-separable blocks),
their 1-D forms on synth1d, all briefly trained so activations depend on the
input, and two hand-made networks with odd shapes against the kernels' tiles:
channel counts 5, 7, 10, 14 (not multiples of four), depth multiplier 2,
depthwise stride 2, odd image sizes, a residual Add without a ReLU,
average pooling with padding (explicit PAD, counted) and with stride below
the kernel, max pooling with TF-"same" padding and stride 1, global average
pooling over odd planes, 1-D everything. Each comes with its int8 .tflite
(calibrated on its inputs), converted once.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

from test_export_c import dataset, fit, random_state
from test_export_c_int8 import _tflite
from toolchain.models import layers as L
from toolchain.models.zoo import build_network

ODD_2D = L.Network((3, 11, 9), (
    L.Conv2d(3, 7, 3, 1, 1), L.ReLU(),                               # 0, 1
    L.Conv2d(7, 7, 3, 2, 1, groups=7), L.BatchNorm(7), L.ReLU(),     # 2-4 depthwise, stride 2
    L.Conv2d(7, 7, 3, 1, 1, groups=7),                               # 5
    L.Add(),                                                         # 6 = 4 + 5, no ReLU
    L.Conv2d(7, 14, 3, 1, 1, groups=7), L.ReLU(),                    # 7, 8 multiplier 2
    L.AvgPool2d(3, 2, 1),                                            # 9 padded (counted)
    L.MaxPool2d(3, 2, 1),                                            # 10 TF "same"
    L.GlobalAvgPool(), L.Linear(14, 7)),                             # 11, 12
    inputs=((-1,), (0,), (1,), (2,), (3,), (4,), (4, 5), (6,), (7,), (8,), (9,), (10,), (11,)))

ODD_1D = L.Network((2, 37), (
    L.Conv1d(2, 5, 5, 2, 2), L.ReLU(),                               # 0, 1: (5, 19)
    L.Conv1d(5, 5, 3, 1, 1, groups=5), L.ReLU(),                     # 2, 3
    L.Add(),                                                         # 4 = 1 + 3
    L.AvgPool1d(3, 2),                                               # 5: (5, 9)
    L.Conv1d(5, 10, 3, 2, 1, groups=5), L.ReLU(),                    # 6, 7: (10, 5)
    L.MaxPool1d(2, 1),                                               # 8: (10, 4)
    L.AvgPool1d(2, 2, 1),                                            # 9: (10, 3)
    L.GlobalAvgPool(), L.Linear(10, 3)),                             # 10, 11
    inputs=((-1,), (0,), (1,), (2,), (1, 3), (4,), (5,), (6,), (7,), (8,), (9,), (10,)))

# name -> (network builder, data set or None for random inputs)
GRAPH_NETWORKS = {
    "resnet8": (lambda: build_network("resnet8", (1, 28, 28), 10, channels=(4, 8, 8)),
                "mnist5k"),
    "ds_cnn": (lambda: build_network("ds_cnn", (1, 28, 28), 10, channels=(8,)), "mnist5k"),
    "resnet1d": (lambda: build_network("resnet1d", (1, 64), 4, channels=(4, 6, 8)), "synth1d"),
    "ds_cnn1d": (lambda: build_network("ds_cnn1d", (1, 64), 4, channels=(6,)), "synth1d"),
    "odd2d": (lambda: ODD_2D, None),
    "odd1d": (lambda: ODD_1D, None),
}
N_TEST = 48


@functools.cache
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="vst-graph-export-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


@functools.cache
def graph_model(name: str):
    """(network, state, test inputs (N_TEST, ...) float32, int8 .tflite path)."""
    from toolchain.export.keras_build import build_keras, to_channels_last

    build, data_name = GRAPH_NETWORKS[name]
    network = build()
    if data_name is None:
        rng = np.random.default_rng(11)
        state = random_state(network, 1.0, seed=4)
        x_train = rng.random((200, *network.input_shape), dtype=np.float32)
        x_test = rng.random((N_TEST, *network.input_shape), dtype=np.float32)
    else:
        data = dataset(data_name)
        state = fit(network, random_state(network, 1.0, seed=7), data.x_train[:800],
                    data.y_train[:800], steps=40)
        x_train, x_test = data.x_train[:200], data.x_test[:N_TEST]
    path = _tflite(build_keras(network, state), to_channels_last(x_train),
                   _root() / f"{name}.tflite")
    return network, state, x_test, path
