"""`vst export` on an unstructured-sparse model writes every format, each checked."""

import json
import subprocess
import sys

from helpers import tiny_config, tiny_mnist
from toolchain.train.trainer import train


def test_export_all_formats_unstructured(tmp_path):
    data = tiny_mnist(tmp_path / "tiny.npz")
    train(tiny_config(data, sparsity={"mode": "unstructured", "density": 0.1},
                      train={"epochs": 2}), tmp_path / "run", show_progress=False)
    out = tmp_path / "export"
    res = subprocess.run([sys.executable, "-m", "toolchain", "-q", "export",
                          str(tmp_path / "run" / "model.vst"), "--out", str(out),
                          "--vnnlib-n", "3"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((out / "export.json").read_text())
    for name in ("model.onnx", "model_float.tflite", "model_int8.tflite", "instances.csv",
                 "vnnlib/prop_2.vnnlib", "c/model.c", "c/model_int8.c", "c/model_golden.h",
                 "c/model_data.c"):
        assert (out / name).is_file(), name
    assert report["onnx_max_abs_diff"] <= 1e-5
    assert report["tflite_float_max_abs_diff"] <= 1e-4
    assert report["litert_vs_tflm_int8"]["max_step_diff"] <= 1
    # at 10% density the C generator stores the big layers as CSR
    storages = [layer["storage"] for layer in report["c"]["float"]["layers"]]
    assert "sparse" in storages
    bad = subprocess.run([sys.executable, "-m", "toolchain", "export",
                          str(tmp_path / "run" / "model.vst"), "--out", str(tmp_path / "x"),
                          "--format", "onnx,pdf"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown export format 'pdf'" in bad.stderr
