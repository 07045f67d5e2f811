"""TFLite export: float parity, the int8 quantization spec, LiteRT vs TFLM bit-exactness.

Conversions are slow (TensorFlow), so each model is converted once per module.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import NETWORKS, random_model, train_tiny
from toolchain.errors import VstError
from toolchain.export.keras_build import flatten_order, same_padding_matches

from toolchain.export.tflite import (compare_runtimes, dequantize, export_tflite,  # noqa: E402
                                     quant_params, quantize, run_tflite, tflite_report)

RANDOM = ("cnn_bn", "conv1d_bn", "normalize_cnn", "mlp_bn", "conv_only", "bn_first_flatten_last")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tflite_trained")
    model, data = train_tiny(root)
    paths = export_tflite(model, root / "out", data["x"], name="tiny")
    return model, data, paths


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each random-weight network converted once: name -> (model, paths, x)."""
    root = tmp_path_factory.mktemp("tflite_random")
    out = {}
    for i, name in enumerate(RANDOM):
        net = NETWORKS[name]
        model = random_model(net, seed=i)
        x = torch.rand((64,) + net.input_shape, generator=torch.Generator().manual_seed(i)).numpy()
        out[name] = (model, export_tflite(model, root, x, name=name, samples=64), x)
    return out


def test_trained_float_matches_pytorch_on_both_runtimes(trained):
    model, data, paths = trained
    assert paths["float"].name == "tiny_float.tflite" and paths["int8"].name == "tiny_int8.tflite"
    for runtime in ("litert", "tflm"):
        report = tflite_report(model, paths, data["x_test"], data["y_test"], runtime=runtime)
        assert report["float_max_abs_diff"] <= 1e-4
        assert report["int8_agreement"] >= 0.95
        assert abs(report["int8_acc"] - report["torch_acc"]) <= 0.05


@pytest.mark.parametrize("name", RANDOM)
def test_random_networks_float_parity_and_int8_agreement(converted, name):
    model, paths, x = converted[name]
    report = tflite_report(model, paths, x[:32])
    assert report["float_max_abs_diff"] <= 1e-4
    assert report["int8_agreement"] >= 0.9


@pytest.mark.parametrize("name", ("cnn_bn", "conv1d_bn", "normalize_cnn", "trained"))
def test_litert_and_tflm_int8_agree_within_one_step(converted, trained, name):
    """Bit-exact except FULLY_CONNECTED requantization rounding (see compare_runtimes)."""
    paths, x = ((trained[2], trained[1]["x_test"]) if name == "trained"
                else converted[name][1:])
    litert = run_tflite(paths["int8"], x[:32], runtime="litert")
    tflm = run_tflite(paths["int8"], x[:32], runtime="tflm")
    assert litert.dtype == tflm.dtype == np.int8
    stats = compare_runtimes(paths["int8"], x[:32])
    assert stats["max_step_diff"] <= 1
    assert stats["equal_fraction"] >= 0.95
    assert stats["top1_agreement"] >= 0.95


def test_convolutions_agree_bit_for_bit(converted):
    """Networks without Dense layers: LiteRT and TFLM give identical int8 outputs."""
    for name in ("conv_only", "bn_first_flatten_last"):
        _, paths, x = converted[name]
        assert np.array_equal(run_tflite(paths["int8"], x, runtime="litert"),
                              run_tflite(paths["int8"], x, runtime="tflm"))


def _quantized_ops(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    return interpreter._get_ops_details(), tensors


def test_int8_follows_the_tflite_quantization_spec(trained):
    ops, tensors = _quantized_ops(trained[2]["int8"])
    weighted = [op for op in ops if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]
    assert len(weighted) == 4  # two convs, two dense layers
    for op in weighted:
        data, weight = tensors[op["inputs"][0]], tensors[op["inputs"][1]]
        wq = weight["quantization_parameters"]
        assert weight["dtype"] == np.int8
        assert len(wq["scales"]) == weight["shape"][0] > 1  # per output channel
        assert wq["quantized_dimension"] == 0 and not np.any(wq["zero_points"])  # symmetric
        if len(op["inputs"]) > 2 and op["inputs"][2] >= 0:
            bias = tensors[op["inputs"][2]]
            assert bias["dtype"] == np.int32
            expected = data["quantization_parameters"]["scales"][0] * wq["scales"]
            np.testing.assert_allclose(bias["quantization_parameters"]["scales"], expected,
                                       rtol=1e-6)
    for op in ops:  # activations: int8, one (scale, zero point) per tensor
        out = tensors[op["outputs"][0]]
        assert out["dtype"] == np.int8 and len(out["quantization_parameters"]["scales"]) == 1
    params = quant_params(trained[2]["int8"])
    assert params["input"][0] == pytest.approx(1 / 255, rel=1e-3) and params["input"][1] == -128


def test_int8_accepts_raw_int8_inputs(trained):
    _, data, paths = trained
    scale, zero_point = quant_params(paths["int8"])["input"]
    q = quantize(data["x_test"][:5], scale, zero_point)
    assert q.dtype == np.int8
    assert np.array_equal(run_tflite(paths["int8"], q),
                          run_tflite(paths["int8"], data["x_test"][:5]))


def test_quantize_rounds_half_away_from_zero_and_clamps():
    assert quantize(np.array([0.5, 1.5, -0.5, -2.5, 1000.0, -1000.0]), 1.0, 0).tolist() == \
        [1, 2, -1, -3, 127, -128]
    q = np.arange(-128, 128, dtype=np.int8)
    assert np.array_equal(quantize(dequantize(q, 0.02, -3), 0.02, -3), q)


def test_keras_layout_helpers():
    assert same_padding_matches(28, 4, 2, 1)       # cnn_small: "same" pads 1 before, 1 after
    assert not same_padding_matches(64, 5, 2, 2)   # TF would pad 1 before, torch pads 2
    assert not same_padding_matches(8, 3, 1, 0)
    assert flatten_order((2, 1, 2)).tolist() == [0, 2, 1, 3]


def test_bad_inputs_are_clear_errors(trained, tmp_path):
    model, data, paths = trained
    with pytest.raises(VstError, match="representative"):
        export_tflite(model, tmp_path, data["x"][:, :, :10], name="bad")
    with pytest.raises(VstError, match="runtime"):
        run_tflite(paths["float"], data["x_test"][:1], runtime="tvm")
    with pytest.raises(VstError, match="not found"):
        run_tflite(tmp_path / "missing.tflite", data["x_test"][:1])
    with pytest.raises(VstError, match=r"inputs must be \(N, 1, 28, 28\)"):
        run_tflite(paths["int8"], data["x_test"][:2, :, :20], runtime="tflm")
    assert not list(tmp_path.iterdir())


def test_importing_the_export_modules_does_not_load_tensorflow():
    code = ("import sys, toolchain.export, toolchain.export.tflite, toolchain.export.vnnlib; "
            "print('tensorflow' in sys.modules or 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
