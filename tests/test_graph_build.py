"""`vst build` of a graph network: model, certificates, compact model and ONNX; TFLite and C
(which do not know graph operators yet) are skipped with a line that names the operator."""

import json
import subprocess
import sys

import onnx

from helpers import tiny_mnist
from test_graph_train import write_config


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
                 "export/model.onnx", "summary.json", "report.html"):
        assert (b / path).is_file(), path
    assert not list(b.rglob("*.tflite")) and not (b / "export" / "c").exists()
    summary = json.loads((b / "summary.json").read_text())
    skipped = summary["export"]["skipped"]
    assert set(skipped) == {"tflite", "c"}
    assert "layer 2 (grouped conv2d) is not supported" in skipped["tflite"]   # BN folded
    assert "skipped: TFLite export: layer 2 (grouped conv2d)" in res.stderr
    assert summary["compact"]["verdicts_identical"] is True
    assert summary["export"]["onnx_max_abs_diff"] <= 1e-4
    ops = {n.op_type for n in onnx.load(str(b / "export" / "model.onnx")).graph.node}
    assert {"Add", "Conv", "AveragePool", "GlobalAveragePool"} <= ops


def test_vst_export_refuses_tflite_and_c_of_a_graph_in_one_line(tmp_path):
    from helpers import assert_one_line, random_model
    from toolchain.models import layers as L
    from toolchain.models.modelfile import save_model

    net = L.Network((1, 28, 28), (L.Conv2d(1, 2, 3, 2, 1), L.ReLU(), L.Conv2d(2, 2, 1), L.Add(),
                                  L.GlobalAvgPool(), L.Linear(2, 10)),
                    inputs=((-1,), (0,), (1,), (1, 2), (3,), (4,)))
    save_model(tmp_path / "g.vst", random_model(net))
    for fmt, what in (("tflite", "TFLite"), ("c", "C"), ("onnx,c", "C")):
        res = subprocess.run([sys.executable, "-m", "toolchain", "export", "g.vst", "--format",
                              fmt, "--data", "mnist5k", "--out", "x"], capture_output=True,
                             text=True, cwd=tmp_path, timeout=300)
        assert_one_line(res.returncode, res.stderr, 2,
                        f"{what} export: layer 3 (add) is not supported by the TFLite and C "
                        "exporters yet; export onnx instead")
        assert not (tmp_path / "x" / "model.onnx").exists()
