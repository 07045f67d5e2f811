"""Bad inputs, second pass (issue 20): files that are not what they claim (FIFOs,
compressed bombs, nonsense data, foreign ONNX with non-finite weights or an eps
beyond the input range), the one rule for ``channels``, and options an int8
model has no use for. The same contract as ``test_bad_inputs.py``, whose
helpers it uses: exit 2 (1 for a failed check), one line, no traceback, no
file outside the output folder, no hang.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from test_bad_inputs import _model_file, assert_clean_failure, run
from toolchain.cli import cli



def test_channels_must_fit_the_arch():
    """One rule (the zoo's) for the config and build_network: two conv layers take
    two channel counts, an mlp takes none."""
    from toolchain.config import config_from_dict
    from toolchain.errors import VstError
    from toolchain.models.zoo import build_network

    for model, needle in ((["cnn_4layer", [4, 8, 16]], "2 channel counts"),
                          (["cnn_small", [4]], "2 channel counts"),
                          (["conv1d", [4, 8, 16]], "2 channel counts"),
                          (["mlp", [8, 16]], "does not apply")):
        arch, channels = model
        with pytest.raises(VstError, match=needle):
            config_from_dict({"model": {"arch": arch, "channels": channels}})
        with pytest.raises(VstError, match=needle):
            build_network(arch, (1, 28, 28) if arch != "conv1d" else (1, 64), 10,
                          channels=channels)
    assert config_from_dict({"model": {"arch": "mlp", "widths": [8, 8, 8]}}).model.widths


def _csv(rows) -> str:
    return "\n".join(",".join(str(v) for v in row) for row in rows) + "\n"


def _pixels(n: int, seed: int = 0):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, size=(n, 784)).tolist()


BAD_DATA = {   # file name -> (contents, what the one line must say)
    "one_class.csv": (_csv([[1, *p] for p in _pixels(20)]), "at least 2 classes"),
    "nan_in_first_row.csv": (_csv([[1, "24nan", *_pixels(1)[0][1:]]]
                                  + [[i % 2, *p] for i, p in enumerate(_pixels(20))]), "24nan"),
    "all_zero.csv": (_csv([[0] * 785] * 20), "label 0"),
    "zero_inputs.csv": (_csv([[i % 2] + [0] * 784 for i in range(20)]),
                        "identical (all zero)"),
}


@pytest.mark.parametrize("name", sorted(BAD_DATA))
def test_nonsense_data_is_refused(tmp_path, name):
    text, needle = BAD_DATA[name]
    (tmp_path / name).write_text(text)
    path = _model_file(tmp_path)
    assert_clean_failure(tmp_path, ["verify", path, "--data", tmp_path / name, "--eps", "0.1",
                                    "--n", "4"], needle=needle)


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the block blocks, e.g. on a FIFO."""
    def expire(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


FIFO_ARGS = {   # a FIFO (no writer) at the path each command reads
    "data .npz": lambda m, f: ["verify", m, "--data", f, "--eps", "0.1"],
    "data .csv": lambda m, f: ["verify", m, "--data", f, "--eps", "0.1"],
    "data train-images-idx3-ubyte": lambda m, f: ["verify", m, "--data", f, "--eps", "0.1"],
    "model .vst": lambda m, f: ["verify", f, "--eps", "0.1"],
    "model .onnx": lambda m, f: ["verify", f, "--data", "mnist5k", "--eps", "0.1"],
    "model .tflite": lambda m, f: ["verify", f, "--data", "mnist5k", "--eps", "0.1"],
    "config .toml": lambda m, f: ["train", "--config", f, "--out", f.parent / "o"],
    "certificate .json": lambda m, f: ["verify", m, "--certificate", f],
    "property .vnnlib": lambda m, f: ["verify", m, "--vnnlib", f],
    "instances .csv": lambda m, f: ["verify", "--vnnlib", f],
}


@pytest.mark.parametrize("case", list(FIFO_ARGS))
def test_a_fifo_is_refused_at_once(tmp_path, case):
    """One opener (toolchain.inputs) for every file input: a FIFO would block
    forever on open or read; it is refused at once, naming what it is."""
    model = _model_file(tmp_path)
    fifo = tmp_path / ("f" + case.split()[-1] if case.split()[-1].startswith(".")
                       else case.split()[-1])
    os.mkfifo(fifo)
    with deadline(60):
        assert_clean_failure(tmp_path, FIFO_ARGS[case](model, fifo), needle="FIFO",
                             allowed=tmp_path / "o")


def _npz_claiming(path: Path, shape) -> Path:
    """An npz whose x.npy header claims ``shape`` (float32) over a few bytes of data."""
    import io
    import zipfile

    import numpy as np
    import numpy.lib.format as npy

    member = io.BytesIO()
    npy.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False,
                                        "shape": tuple(shape)})
    labels = io.BytesIO()
    np.save(labels, np.array([0, 1]))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", member.getvalue() + bytes(64))   # header (with magic), data
        z.writestr("y.npy", labels.getvalue())
    return path


def test_compressed_bombs_are_refused_before_they_inflate(tmp_path, monkeypatch):
    import gzip
    import struct

    path = _model_file(tmp_path)
    bomb = _npz_claiming(tmp_path / "bomb.npz", (2 ** 20, 2 ** 20))      # 4 TiB claimed
    assert_clean_failure(tmp_path, ["verify", path, "--data", bomb, "--eps", "0.1"],
                         needle="values")
    idx = tmp_path / "train-images-idx3-ubyte.gz"                          # 1 TiB claimed
    idx.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">3I", 2 ** 20, 2 ** 10,
                                                                     2 ** 10) + b"\x00" * 64))
    assert_clean_failure(tmp_path, ["verify", path, "--data", idx, "--eps", "0.1"],
                         needle="values")
    monkeypatch.setattr("toolchain.data.csvfile.MAX_CSV_BYTES", 1 << 20)  # 1 MiB for the test
    big = tmp_path / "big.csv.gz"
    big.write_bytes(gzip.compress(b"0,0\n1,1\n" * (1 << 18), compresslevel=1))   # 2 MiB
    assert_clean_failure(tmp_path, ["verify", path, "--data", big, "--eps", "0.1"],
                         needle="once decompressed")


def _gemm_onnx(path: Path, weight, *, dtype=None, metadata=None) -> Path:
    """A one-layer ONNX network x (1, 784) -> Gemm -> (1, 10)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dtype = dtype or np.float32
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    n_in, n_out = weight.shape[1], weight.shape[0]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], "g",
        [helper.make_tensor_value_info("x", elem, [1, n_in])],
        [helper.make_tensor_value_info("y", elem, [1, n_out])],
        [numpy_helper.from_array(np.asarray(weight, dtype), "w"),
         numpy_helper.from_array(np.zeros(n_out, dtype), "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    if metadata:
        helper.set_model_props(proto, metadata)
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_onnx_weights_that_are_not_finite_are_refused(tmp_path, value):
    import numpy as np

    weight = np.random.default_rng(0).normal(size=(10, 784))
    weight[3, 5] = value
    path = _gemm_onnx(tmp_path / "w.onnx", weight)
    assert_clean_failure(tmp_path, ["verify", path, "--data", "mnist5k", "--eps", "0.1",
                                    "--n", "2"], needle="NaN or infinity")


def test_an_eps_beyond_the_input_range_in_onnx_metadata_is_refused(tmp_path):
    import numpy as np

    path = _gemm_onnx(tmp_path / "e.onnx", np.random.default_rng(0).normal(size=(10, 784)),
                      metadata={"eps": "5", "dataset": "mnist5k"})
    assert_clean_failure(tmp_path, ["verify", path, "--n", "2"], needle="ONNX metadata")
    code, stderr, _ = run(["verify", path, "--n", "2", "--eps", "0.1"], tmp_path)
    assert code == 0, stderr                   # --eps replaces it


@pytest.mark.parametrize("args", [["--method", "alpha-crown"], ["--plot", "p.png"],
                                  ["--junit", "j.xml"], ["--timeout", "5"],
                                  ["--device", "cpu"]], ids=lambda a: a[0])
def test_options_an_int8_model_has_no_use_for_are_refused(tmp_path, args):
    assert_clean_failure(tmp_path, ["verify", tmp_path / "m.tflite", "--data", "mnist5k",
                                    "--eps", "0.1", *args], needle="does not apply")


def test_a_certificate_with_an_integer_of_5000_digits(tmp_path):
    path = _model_file(tmp_path)
    (tmp_path / "c.json").write_text('{"format": "vst-certificate", "n": 1' + "0" * 5000 + "}")
    assert_clean_failure(tmp_path, ["verify", path, "--certificate", tmp_path / "c.json"],
                         needle="not a certificate")


def test_a_float64_onnx_counterexample_is_rechecked_in_float64(tmp_path):
    """onnxruntime is fed the graph's own input type: a float64 network's
    counterexample is checked there too (not a dtype error); the property
    certificate states the reading of VNN-LIB it was made under."""
    import numpy as np

    path = _gemm_onnx(tmp_path / "d.onnx", np.eye(2), dtype=np.float64)
    (tmp_path / "p.vnnlib").write_text(
        "(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)"
        "(declare-const Y_1 Real)(assert (>= X_0 0))(assert (<= X_0 1))(assert (>= X_1 0))"
        "(assert (<= X_1 1))(assert (>= Y_0 (+ Y_1 0.5)))")
    res = CliRunner().invoke(cli, ["verify", str(path), "--vnnlib", str(tmp_path / "p.vnnlib"),
                                   "--results", str(tmp_path / "res"),
                                   "--json", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.stderr
    assert any(f.read_text().startswith("sat") for f in (tmp_path / "res").glob("*.txt"))
    # the certificate says how the property was read, and a changed reading is refused
    cert = json.loads((tmp_path / "c.json").read_text())
    assert "VNN-COMP convention" in cert["semantics"] and "< as <=" in cert["semantics"]
    cert["semantics"] = "strict inequalities decided exactly"
    (tmp_path / "c.json").write_text(json.dumps(cert))
    assert_clean_failure(tmp_path, ["certificate", "check", tmp_path / "c.json"], code=1,
                         needle="semantics")
