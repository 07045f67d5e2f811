"""`vst build` of a graph network end to end: model, certificates, compact model, ONNX,
TFLite, C (float and int8 with the arena beside TFLite Micro's) and the int8
certificate; and `vst export` refusing, in one line, what TFLite cannot express."""

import json
import subprocess
import sys

import onnx

from helpers import tiny_mnist
from test_export_c_int8 import tflm_outputs
from test_graph_train import write_config
from toolchain.export.c.tflite_graph import read_tflite


def test_vst_build_of_a_graph_config(tmp_path):
    tiny_mnist(tmp_path / "tiny.npz", n_train=160, n_test=24)
    write_config(tmp_path / "vst.toml", '[data]\ndataset = "tiny.npz"\n[train]\nepochs = 2\n'
                 'warmup_epochs = 1\nramp_epochs = 1\nbatch_size = 40\nval_size = 40\n'
                 'threads = 1\n[verify]\neps = 0.02\n[export]\nvnnlib_n = 2\n[target]\n'
                 'bench = false\n')
    res = subprocess.run([sys.executable, "-m", "toolchain", "build", "--config", "vst.toml",
                          "--out", "b"], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr
    b = tmp_path / "b"
    for path in ("train/model.vst", "certificate_sparse.json", "certificate.json", "compact.vst",
                 "export/model.onnx", "export/model_float.tflite", "export/model_int8.tflite",
                 "export/c/model_int8.c", "export/c/model.c", "certificate_int8.json",
                 "summary.json", "report.html"):
        assert (b / path).is_file(), path
    summary = json.loads((b / "summary.json").read_text())
    assert summary["export"]["skipped"] == {}
    assert summary["compact"]["verdicts_identical"] is True
    assert summary["export"]["onnx_max_abs_diff"] <= 1e-4
    assert summary["export"]["tflite_float_max_abs_diff"] <= 1e-4
    ops = {n.op_type for n in onnx.load(str(b / "export" / "model.onnx")).graph.node}
    assert {"Add", "Conv", "AveragePool", "GlobalAveragePool"} <= ops
    tflite = b / "export" / "model_int8.tflite"
    assert {"DEPTHWISE_CONV_2D", "ADD", "AVERAGE_POOL_2D"} <= {op.name for op in
                                                                read_tflite(tflite).ops}
    int8 = summary["export"]["c"]["int8"]
    assert 0 < int8["activation_bytes"] < int8["arena_bytes"] < int8["tflm_arena"]["total"]
    assert f"#define VST_MODEL_INT8_ARENA_BYTES {int8['arena_bytes']}\n" in \
        (b / "export" / "c" / "model_int8.h").read_text()
    assert summary["verify"]["int8_verified_acc"] is not None
    assert "TFLite Micro&#x27;s arena" in (b / "report.html").read_text()
    # the golden vectors of the build are TFLM's outputs
    golden = (b / "export" / "c" / "model_golden.h").read_text()
    assert "vst_model_golden_out_q" in golden and tflm_outputs(tflite, _zeros(tflite)).size


def _zeros(tflite):
    import numpy as np

    t = read_tflite(tflite)
    return np.zeros((1, *t.tensor(t.inputs[0]).shape[1:]), np.int8)


def test_vst_export_refuses_what_tflite_cannot_express_in_one_line(tmp_path):
    from helpers import assert_one_line, random_model
    from toolchain.models import layers as L
    from toolchain.models.modelfile import save_model

    net = L.Network((1, 28, 28), (L.Conv2d(1, 4, 3, 2, 1), L.ReLU(),
                                  L.Conv2d(4, 4, 3, 1, 1, groups=2), L.Add(), L.GlobalAvgPool(),
                                  L.Linear(4, 10)),
                    inputs=((-1,), (0,), (1,), (1, 2), (3,), (4,)))
    save_model(tmp_path / "g.vst", random_model(net))
    for fmt, what in (("tflite", "TFLite"), ("c", "C"), ("onnx,c", "C")):
        res = subprocess.run([sys.executable, "-m", "toolchain", "export", "g.vst", "--format",
                              fmt, "--data", "mnist5k", "--out", "x"], capture_output=True,
                             text=True, cwd=tmp_path, timeout=300)
        assert_one_line(res.returncode, res.stderr, 2,
                        f"{what} export: layer 2 (conv2d with groups 2) is not supported by the "
                        "TFLite and C exporters (a grouped convolution must be depthwise")
        assert not (tmp_path / "x" / "model.onnx").exists()
