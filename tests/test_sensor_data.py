"""Built-in sensor sets (UEA/UCR archive) and per-channel scaling into [0, 1].

Each set is checked against its raw stored arrays: the min and range are
recomputed here from the training split, so a scaling that looked at the
test split (or a stale stored one) fails.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from toolchain.data import BUILTIN, list_builtin, load_dataset
from toolchain.data.scaling import ChannelScaling
from toolchain.errors import VstError

DATA_DIR = Path(__file__).resolve().parents[1] / "toolchain" / "data"
# name: (channels, length, classes, train, test, train per class or None)
SETS = {
    "japanesevowels": (12, 29, 9, 270, 370, 30),
    "basicmotions": (6, 100, 4, 40, 40, 10),
    "italypowerdemand": (1, 24, 2, 67, 1029, None),
}


def raw(name: str) -> dict[str, np.ndarray]:
    with np.load(DATA_DIR / f"{name}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module", params=list(SETS))
def sensor(request):
    return request.param, load_dataset(request.param), raw(request.param)


def test_shapes_classes_and_archive_split(sensor):
    name, ds, _ = sensor
    c, length, k, n_train, n_test, per_class = SETS[name]
    assert ds.x_train.shape == (n_train, c, length) and ds.x_test.shape == (n_test, c, length)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.num_classes == k and set(np.unique(ds.y_test)) == set(range(k))
    if per_class:
        assert np.bincount(ds.y_train).tolist() == [per_class] * k
    b = BUILTIN[name]
    assert (b.input_shape, b.num_classes, b.n_train, b.n_test) == ((c, length), k, n_train, n_test)
    for x in (ds.x_train, ds.x_test):
        assert np.isfinite(x).all()
        assert x.min() >= 0.0 and x.max() <= 1.0


def test_scaling_comes_from_the_training_split_only(sensor):
    name, ds, r = sensor
    lo = r["x_train"].min(axis=(0, 2)).astype(np.float64)
    span = r["x_train"].max(axis=(0, 2)).astype(np.float64) - lo
    assert np.array_equal(r["channel_min"], lo) and np.array_equal(r["channel_range"], span)
    assert ds.scaling.minimum == tuple(lo) and ds.scaling.range == tuple(span)
    # every training channel spans exactly [0, 1]; the test split does not set it
    assert np.array_equal(ds.x_train.min(axis=(0, 2)), np.zeros(len(lo), np.float32))
    assert np.array_equal(ds.x_train.max(axis=(0, 2)), np.ones(len(lo), np.float32))
    test_lo = r["x_test"].min(axis=(0, 2)).astype(np.float64)
    assert not np.array_equal(test_lo, lo)  # the splits differ, so a leak would show
    x01 = (r["x_test"].astype(np.float64) - lo[:, None]) / span[:, None]
    assert np.allclose(ds.x_test, np.clip(x01, 0, 1), atol=1e-7)
    outside = int(((x01 < -1e-6) | (x01 > 1 + 1e-6)).sum())
    assert ds.scaling.clipped_test == outside and ds.scaling.test_values == ds.x_test.size
    assert 0 < outside < 0.002 * ds.x_test.size  # a few outliers, recorded, clipped


def test_lengths_and_repeat_last_padding(sensor):
    name, _, r = sensor
    length = SETS[name][1]
    for split in ("train", "test"):
        x, lengths = r[f"x_{split}"], r[f"length_{split}"]
        assert len(lengths) == len(x) and lengths.max() <= length and lengths.min() >= 1
        for series, n in zip(x, lengths):
            assert (series[:, n:] == series[:, n - 1:n]).all()
    if name == "japanesevowels":  # variable length: 7 to 29 frames, padded to 29
        both = np.concatenate([r["length_train"], r["length_test"]])
        assert (both.min(), both.max()) == (7, 29)
    else:
        assert (r["length_train"] == length).all() and (r["length_test"] == length).all()


def test_provenance_names_each_file_with_its_hash():
    text = (DATA_DIR / "PROVENANCE.md").read_text()
    for name in SETS:
        path = DATA_DIR / f"{name}.npz"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        row = re.search(rf"\| `{name}\.npz` \(this directory\) \| ([\d,]+) \| `(\w+)` \|", text)
        assert row, name
        assert row.group(2) == digest and int(row.group(1).replace(",", "")) == path.stat().st_size
        assert "aeon" in BUILTIN[name].source and "PROVENANCE.md" in BUILTIN[name].source
    assert "Dau" in text and "arXiv:1811.00075" in text and "Kudo" in text


def test_datasets_listing_translates_eps_into_units():
    rows = {r["name"]: r for r in list_builtin()}
    bm = rows["basicmotions"]
    lo, hi = 0.01 * min(bm["channel_range"]), 0.01 * max(bm["channel_range"])
    assert bm["eps_example_in_units"] == f"{lo:.3g}..{hi:.3g} sensor units (per channel)"
    assert rows["mnist5k"]["eps_example_in_units"].startswith("2.55 gray levels")
    res = subprocess.run([sys.executable, "-m", "toolchain", "datasets", "japanesevowels"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "12x29" in res.stdout and "270 train / 370 test" in res.stdout
    ranges = raw("japanesevowels")["channel_range"]
    assert f"{0.01 * ranges[0]:.4g}" in res.stdout and f"{0.01 * ranges[11]:.4g}" in res.stdout


# ---------------------------------------------------------------- user npz with a scaling

def test_user_npz_in_sensor_units_is_scaled_and_recorded(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4096, size=(40, 6, 16)).astype(np.int16)  # 12-bit ADC counts
    x_test = x[:8].copy()
    x_test[0, 2, 0] = 5000                                         # louder than training
    np.savez(tmp_path / "imu.npz", x=x, y=np.arange(40) % 2, x_test=x_test,
             y_test=np.arange(8) % 2, channel_min=np.zeros(6), channel_range=np.full(6, 4095.0))
    ds = load_dataset(tmp_path / "imu.npz")
    # 6 channels: without a scaling the layout rule would read (N, 6, 16) as images
    assert ds.input_shape == (6, 16)
    assert np.allclose(ds.x_train, x / 4095.0, atol=1e-7)
    assert ds.x_test[0, 2, 0] == 1.0 and ds.scaling.clipped_test == 1
    assert ds.info()["scaling"]["range"] == [4095.0] * 6
    assert ds.scaling.eps_in_units(0.01) == pytest.approx([40.95] * 6)


@pytest.mark.parametrize("arrays,needle", [
    ({"channel_min": np.zeros(3)}, "without its partner"),
    ({"channel_min": np.zeros(2), "channel_range": np.ones(2)}, "(N, 2, L)"),
    ({"channel_min": np.zeros(3), "channel_range": np.ones(2)}, "3 values but channel_range 2"),
    ({"channel_min": np.zeros(3), "channel_range": np.array([1.0, 0.0, 1.0])}, "> 0 on every"),
    ({"channel_min": np.zeros(3), "channel_range": np.array([1.0, np.nan, 1.0])}, "NaN"),
    ({"channel_min": np.zeros((3, 1)), "channel_range": np.ones((3, 1))}, "1-D array"),
    ({"channel_min": np.zeros(3), "channel_range": np.full(3, 0.5)},
     "training value(s) lie outside"),
])
def test_bad_scaling_is_one_clear_error(tmp_path, arrays, needle):
    x = np.random.default_rng(1).uniform(0, 1, size=(10, 3, 8))
    np.savez(tmp_path / "bad.npz", x=x, y=np.arange(10) % 2, **arrays)
    with pytest.raises(VstError, match=re.escape(needle)):
        load_dataset(tmp_path / "bad.npz")


def test_nan_in_sensor_units_is_rejected(tmp_path):
    x = np.ones((6, 2, 5))
    x[1, 0, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(6) % 2, channel_min=np.zeros(2),
             channel_range=np.full(2, 2.0))
    with pytest.raises(VstError, match="1 NaN or infinite"):
        load_dataset(tmp_path / "nan.npz")


def test_scaling_doctest_numbers():
    s = ChannelScaling.checked([0.0, -2.0], [10.0, 4.0], "demo")
    x01, clipped = s.scale(np.array([[[0.0, 5.0, 12.0], [-2.0, 0.0, 2.0]]]), "demo", train=False)
    assert x01.tolist() == [[[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]]] and clipped == 1
    assert s.describe_eps(0.01) == "0.04..0.1 units (per channel)"


# ---------------------------------------------------------------- scaling travels with the model

def test_model_record_and_onnx_metadata_carry_the_scaling(tmp_path):
    from helpers import tiny_config

    from toolchain.export.onnx import onnx_metadata
    from toolchain.export.run import run_exports
    from toolchain.train.trainer import train

    cfg = tiny_config("italypowerdemand", model={"arch": "conv1d", "channels": [4, 8],
                                                 "widths": [8]},
                      train={"epochs": 1, "val_size": 8, "batch_size": 16})
    model = train(cfg, tmp_path / "t", show_progress=False)
    ds = load_dataset("italypowerdemand")
    assert model.record["input_scaling"] == ds.scaling_info()
    assert model.record["input_scaling"]["clipped_test"] == ds.scaling.clipped_test > 0
    run_exports(model, ds, tmp_path / "e", formats=("onnx",), eps=0.02)
    meta = onnx_metadata(next((tmp_path / "e").glob("*.onnx")))
    assert json.loads(meta["input_scaling"]) == ds.scaling_info()
    assert json.loads(meta["eps_in_input_units"]) == pytest.approx([0.02 * ds.scaling.range[0]])
    assert meta["input_range"] == "0,1" and meta["dataset"] == "italypowerdemand"
