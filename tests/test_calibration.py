"""int8 calibration without range-stretching outliers (export/calibration.py)."""

from __future__ import annotations

import numpy as np
import torch

from helpers import random_model
from toolchain.export.calibration import MAX_DROPPED, OUTLIER_RATIO, outliers
from toolchain.export.keras_build import build_keras, to_channels_last
from toolchain.export.tflite import convert_int8, export_tflite, tflite_report
from toolchain.models import layers as L


def test_outliers_drops_only_samples_far_past_a_layers_quantile():
    rng = np.random.default_rng(0)
    maxima = rng.uniform(1.0, 2.0, size=(300, 3))
    maxima[17, 1] = 2.0 * OUTLIER_RATIO * 2.0      # far past layer 1's range
    maxima[40, 2] = 2.0 * OUTLIER_RATIO * 0.9      # large, but within the ratio
    assert outliers(maxima).tolist() == [17]


def test_outliers_never_drops_a_shared_heavy_tail():
    maxima = np.ones((100, 2))
    maxima[:10, 0] = 1000.0                        # 10% of the samples: the distribution
    dropped = outliers(maxima)
    assert len(dropped) <= int(MAX_DROPPED * 100)


def test_one_stretching_sample_is_dropped_and_int8_gets_closer(tmp_path):
    net = L.Network((1, 6, 6), (L.Flatten(), L.Linear(36, 12), L.ReLU(), L.Linear(12, 4)))
    model = random_model(net, seed=3)
    rng = np.random.default_rng(1)
    x = rng.uniform(0.0, 0.05, size=(100, 1, 6, 6)).astype(np.float32)
    x[7] = 1.0                                     # one sample 20x past the others
    paths = export_tflite(model, tmp_path, x, name="m", samples=100)
    assert paths["calibration_dropped"] == 1
    test = rng.uniform(0.0, 0.05, size=(64, 1, 6, 6)).astype(np.float32)
    kept = tflite_report(model, paths, test)

    # The same model calibrated on every sample, outlier included, for comparison.
    full = tmp_path / "full_int8.tflite"
    full.write_bytes(convert_int8(build_keras(model.network, model.state), to_channels_last(x)))
    with_outlier = tflite_report(model, {"float": paths["float"], "int8": full}, test)
    assert kept["int8_max_abs_diff"] < 0.7 * with_outlier["int8_max_abs_diff"]


def test_calibration_keeps_every_sample_of_an_ordinary_set(tmp_path):
    model = random_model(L.Network((1, 6, 6), (L.Flatten(), L.Linear(36, 4))), seed=0)
    x = torch.rand((64, 1, 6, 6), generator=torch.Generator().manual_seed(0)).numpy()
    assert export_tflite(model, tmp_path, x, name="m", samples=64)["calibration_dropped"] == 0
