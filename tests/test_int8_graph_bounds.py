"""The int8 certificate through depthwise convolution, pooling and Add.

The integer bounds of ``int8_bounds`` follow the int8 plan of a graph model
(residual shortcuts, depthwise-separable blocks, average / max pooling, the
global average). The bounds of a point are the outputs of TFLite Micro and of
the generated C (resnet8 and ds_cnn on mnist, the two odd-shaped networks).
Soundness is checked on the odd-shaped networks, which hold every new operator
(depthwise with multiplier 1 and 2, Adds, padded average pooling, "same" max
pooling, the global average, 1-D forms) and whose interval bounds stay
informative at eps of a few quantization steps (those of the briefly trained
mnist models saturate beyond half a step, as float IBP does for them): for
every sample, random and corner points of its eps-box are quantized and run
through the generated C (all samples) and TFLite Micro (every fourth): every
output lies in the bounds, and a verified sample is never misclassified (nor
tied) at any of them, with margins at least the certified ones. A forged
certificate of a graph model fails its check (exit 1).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from graph_export import graph_model
from test_export_c import compile_program, dataset
from test_export_c_int8 import INT8_HARNESS
from test_int8_bounds import check_box_soundness, check_point_bounds
from toolchain.export.c import generate_c
from toolchain.verify.int8_bounds import Int8Bounds

POINTS = 300
# name -> eps of the soundness test (where some samples verify and some do not)
SOUNDNESS_EPS = {"odd2d": 0.03, "odd1d": 0.17}


@pytest.fixture(scope="module")
def setups(tmp_path_factory):
    """name -> (name, bounds, C binary, tflite path, inputs, labels, eps), made once."""
    made = {}

    def get(name):
        if name not in made:
            made[name] = _setup(name, tmp_path_factory.mktemp(name))
        return made[name]
    return get


def _setup(name, root):
    """The labels of the random-input models are their clean int8 predictions."""
    network, state, x, path = graph_model(name)
    files = generate_c(network, state, root, tflite_int8=path, kernels="dsp")["files"]
    binary = compile_program(root, [files["int8_c"]], INT8_HARNESS)
    bounds = Int8Bounds.from_tflite(path)
    if network.input_shape == (1, 28, 28):
        y = dataset("mnist5k").y_test[:len(x)]
    else:
        y = bounds.outputs(bounds.quantize_box(x, 0.0)[0]).argmax(1)
    return name, bounds, binary, path, x, y, SOUNDNESS_EPS.get(name)


@pytest.mark.parametrize("name", ["resnet8", "ds_cnn", "odd2d", "odd1d"])
def test_bounds_of_a_point_are_the_outputs_of_tflm_and_the_c(setups, name):
    _, bounds, binary, path, x, _, _ = setups(name)
    check_point_bounds(bounds, path, binary, x, noise=24, seed=2)


@pytest.mark.parametrize("name", list(SOUNDNESS_EPS))
def test_sampled_points_stay_in_the_bounds_and_verified_samples_hold(setups, name):
    name, bounds, binary, path, x, y, eps = setups(name)
    res = check_box_soundness(bounds, path, binary, x, y, eps, POINTS, tflm_every=4)
    assert 0.0 < res.verified.mean() < 1.0, (name, res.verified.mean())
    assert np.any(res.out_hi > res.out_lo)                  # real boxes, not points


def _vst(*args):
    return subprocess.run([sys.executable, "-m", "toolchain", "-q", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_int8_certificate_of_a_residual_model_is_checked_and_forgeries_fail(tmp_path):
    _, _, _, path = graph_model("resnet8")
    cert = tmp_path / "c8.json"
    res = _vst("verify", path, "--data", "mnist5k", "--eps", "0.001", "--n", "40", "--json", cert)
    assert res.returncode == 0, res.stderr
    data = json.loads(cert.read_text())
    counts = data["results"][0]["counts"]
    assert counts["verified"] > 0 and counts["falsified"] + counts["unknown"] > 0
    assert _vst("verify", path, "--data", "mnist5k", "--certificate", cert).returncode == 0
    for forge in ("verdict", "count"):
        forged = json.loads(cert.read_text())
        result = forged["results"][0]
        if forge == "verdict":
            sample = next(s for s in result["samples"] if s["verdict"] != "verified")
            sample["verdict"] = "verified"
        else:
            result["counts"]["verified"] += 1
        (tmp_path / "forged.json").write_text(json.dumps(forged))
        res = _vst("verify", path, "--data", "mnist5k", "--certificate", tmp_path / "forged.json")
        assert res.returncode == 1, (forge, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1
