"""The int8 certificate: integer bounds that follow TFLite's int8 arithmetic exactly.

Soundness is checked against both executors of the int8 network: the TFLite
Micro interpreter and the generated int8 C on the host. For many samples,
1,000 random and corner points of each eps-box are quantized and run: every
output lies inside the bounds, and a sample verified in int8 is never
misclassified (nor tied) at any of them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import resum
from test_export_c import compile_program, dataset, run_program, trained
from test_export_c_int8 import INT8_HARNESS, _tflite, tflm_outputs
from toolchain.export.c import generate_c
from toolchain.verify.int8_bounds import Int8Bounds
from toolchain.verify.int8_certificate import _first_argmax_is

EPS = 0.01
POINTS = 1000


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """cnn_small with BatchNorm at 30% density, its int8 .tflite and its int8 C."""
    from toolchain.export.keras_build import build_keras, to_channels_last

    root = tmp_path_factory.mktemp("int8cert")
    network, state, x = trained("cnn_small_bn", 0.3)
    data = dataset("mnist5k")
    path = _tflite(build_keras(network, state), to_channels_last(data.x_train[:200]),
                   root / "m.tflite")
    files = generate_c(network, state, root, tflite_int8=path, storage="dense")["files"]
    binary = compile_program(root, [files["int8_c"]], INT8_HARNESS)
    return path, binary, data.x_test[:200], data.y_test[:200]


def _box_points(bounds: Int8Bounds, x: np.ndarray, n: int, seed: int,
                eps: float = EPS) -> np.ndarray:
    """n float points of the eps-box of one sample, half random, half corners,
    clipped to [0, 1] and quantized as the firmware does: (n, input size) int8."""
    return bounds.sample_box(x, eps, n, seed)


def check_point_bounds(bounds: Int8Bounds, path, binary, x: np.ndarray, noise: int,
                       seed: int) -> None:
    """The bounds of a point (the real inputs, then random int8 ones) are the outputs
    of TFLite Micro and of the generated C."""
    q, q_hi = bounds.quantize_box(x, 0.0)
    assert np.array_equal(q, q_hi)
    q = np.concatenate([q, np.random.default_rng(seed).integers(-128, 128,
                                                                  size=(noise, q.shape[1]))])
    expected = tflm_outputs(path, q.astype(np.int8).reshape(-1, *bounds.x_t.shape[1:]))
    assert np.array_equal(bounds.outputs(q), expected.astype(np.int64))
    classes = expected.shape[1]
    assert np.array_equal(run_program(binary, q.astype(np.int8), np.int8, classes), expected)


def check_box_soundness(bounds: Int8Bounds, path, binary, x, y, eps: float, points: int,
                        tflm_every: int):
    """For every sample, ``points`` quantized points of its eps-box through the C
    (and TFLM for every ``tflm_every``-th sample): outputs in the bounds, and a
    verified sample never misclassified nor tied, its margins at least the
    certified ones. Returns the verification result."""
    res = bounds.verify(x, y, eps)
    classes = res.out_lo.shape[1]
    for i in range(len(x)):
        q = _box_points(bounds, x[i], points, seed=i, eps=eps)
        out = run_program(binary, q.astype(np.int8), np.int8, classes).astype(np.int64)
        if i % tflm_every == 0:
            tflm = tflm_outputs(path, q.astype(np.int8).reshape(-1, *bounds.x_t.shape[1:]))
            assert np.array_equal(out, tflm.astype(np.int64)), i
        assert np.all(out >= res.out_lo[i]) and np.all(out <= res.out_hi[i]), i
        if res.verified[i]:
            assert _first_argmax_is(out, np.full(points, y[i])).all(), i
            margins = out[:, y[i]][:, None] - out
            others = np.arange(classes) != y[i]
            assert np.all(margins[:, others] >= res.margins[i][others]), i
    return res


def test_bounds_of_a_point_are_the_interpreter_outputs(net):
    path, binary, x, _ = net
    check_point_bounds(Int8Bounds.from_tflite(path), path, binary, x, noise=50, seed=1)


def test_sampled_points_stay_in_bounds_and_verified_samples_hold(net):
    path, binary, x, y = net
    res = check_box_soundness(Int8Bounds.from_tflite(path), path, binary, x, y, EPS, POINTS,
                              tflm_every=40)             # TFLM is slower: every 40th sample
    assert 0.1 < res.verified.mean() < 0.9            # a meaningful mix of verdicts


def test_margin_form_is_at_least_as_tight_as_intervals(net):
    path, _, x, y = net
    bounds = Int8Bounds.from_tflite(path)
    res = bounds.verify(x, y, EPS)
    idx = np.arange(len(y))
    interval = res.out_lo[idx, y][:, None] - res.out_hi
    others = np.arange(10)[None] != y[:, None]
    assert np.all(res.margins[others] >= interval[others])
    by_interval = np.all(np.where(others, interval >= 1, True), axis=1)
    assert np.all(res.verified[by_interval]) and res.verified.sum() > by_interval.sum()
    # at eps 0 the verdict is the clean int8 prediction (first maximum, no tie)
    q, _ = bounds.quantize_box(x, 0.0)
    clean = _first_argmax_is(bounds.outputs(q), y)
    assert np.array_equal(bounds.verify(x, y, 0.0).verified, clean)


def _vst(*args):
    return subprocess.run([sys.executable, "-m", "toolchain", "-q", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_cli_writes_checks_and_refuses_forged_int8_certificates(net, tmp_path):
    path, _, _, _ = net
    cert = tmp_path / "c8.json"
    res = _vst("verify", path, "--data", "mnist5k", "--eps", "0.02", "--n", "60", "--json", cert)
    assert res.returncode == 0, res.stderr
    data = json.loads(cert.read_text())
    assert data["format"] == "vst-certificate-int8" and len(data["results"][0]["samples"]) == 60
    assert data["tflite"]["sha256"] and "first maximum" in data["semantics"]
    assert _vst("verify", path, "--data", "mnist5k", "--certificate", cert).returncode == 0
    sample = next(s for s in data["results"][0]["samples"] if s["verdict"] != "verified")
    sample["verdict"] = "verified"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(resum(data)))       # summaries made to agree: re-bounded
    res = _vst("verify", path, "--data", "mnist5k", "--certificate", forged)
    assert res.returncode == 1 and "recomputed" in res.stderr
    gate = _vst("verify", path, "--data", "mnist5k", "--eps", "0.02", "--n", "60",
                "--min-verified", "1.0")
    assert gate.returncode == 1 and "int8 verified" in gate.stderr
    missing = _vst("verify", path, "--eps", "0.02")
    assert missing.returncode == 2 and "--data" in missing.stderr
