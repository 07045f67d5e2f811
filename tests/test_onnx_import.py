"""ONNX import: round trips through export_onnx, hand-built graphs, clear rejections."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from helpers import NETWORKS, random_model, train_tiny
from toolchain.errors import VstError
from toolchain.export.onnx import export_onnx
from toolchain.models import layers as L
from toolchain.models.modelfile import load_model, save_model
from toolchain.models.onnx_import import import_onnx


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("trained"))


def _outputs(model, x):
    with torch.no_grad():
        return model.torch_module().eval()(torch.as_tensor(x)).numpy()


def _fused(layers):
    """What torch's eval-mode exporter writes: each Conv+BatchNorm fused into the Conv."""
    out = []
    for layer in layers:
        if isinstance(layer, L.BatchNorm) and out and isinstance(out[-1], (L.Conv2d, L.Conv1d)):
            continue
        out.append(layer)
    return tuple(out)


def test_trained_model_round_trips(trained, tmp_path):
    model, data = trained
    back = import_onnx(export_onnx(model, tmp_path / "m.onnx"))
    assert back.network == model.network
    assert back.record["onnx_metadata"]["weights_sha256"] == model.weights_hash()
    assert np.max(np.abs(_outputs(back, data["x_test"]) - _outputs(model, data["x_test"]))) <= 1e-5
    save_model(tmp_path / "back.vst", back)  # an imported model is a normal vst model
    assert load_model(tmp_path / "back.vst").weights_hash() == back.weights_hash()


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_random_networks_round_trip(name, tmp_path):
    net = NETWORKS[name]
    model = random_model(net)
    back = import_onnx(export_onnx(model, tmp_path / "m.onnx"))
    assert back.network.layers == _fused(net.layers)
    assert back.network.input_shape == net.input_shape
    x = torch.rand((16,) + net.input_shape, generator=torch.Generator().manual_seed(3)).numpy()
    assert np.max(np.abs(_outputs(back, x) - _outputs(model, x))) <= 1e-5


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's legacy exporter, on purpose
def test_unfused_batchnorm_keeps_the_layer_list(tmp_path):
    net = NETWORKS["cnn_bn"]
    model = random_model(net)
    buffer = io.BytesIO()
    # without constant folding, Conv and BatchNormalization stay apart
    torch.onnx.export(model.torch_module().eval(), (torch.zeros((1,) + net.input_shape),), buffer,
                      dynamo=False, opset_version=17, do_constant_folding=False,
                      input_names=["input"], output_names=["logits"])
    path = tmp_path / "unfused.onnx"
    path.write_bytes(buffer.getvalue())
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"BatchNormalization", "Conv"} <= ops
    back = import_onnx(path)
    assert back.network == net
    x = torch.rand((8,) + net.input_shape).numpy()
    assert np.max(np.abs(_outputs(back, x) - _outputs(model, x))) <= 1e-5


def _save(tmp_path, nodes, inits, in_shape, out_shape, name="g.onnx"):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32 if k != "shape" else np.int64), k)
         for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / name
    path.write_bytes(proto.SerializeToString())
    return path


def test_matmul_add_reshape_identity_and_constant_nodes(tmp_path):
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(6, 3)), rng.normal(size=3)
    mean = np.array([0.5, 0.25], dtype=np.float32).reshape(1, 2, 1)
    nodes = [helper.make_node("Constant", [], ["m"], value=numpy_helper.from_array(mean)),
             helper.make_node("Sub", ["x", "m"], ["s"]),
             helper.make_node("Div", ["s", "std"], ["n"]),
             helper.make_node("Reshape", ["n", "shape"], ["f"]),
             helper.make_node("Identity", ["f"], ["f2"]),
             helper.make_node("Identity", ["w"], ["w2"]),
             helper.make_node("MatMul", ["f2", "w2"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    path = _save(tmp_path, nodes, {"std": np.full((2, 1), 0.5), "shape": [0, -1], "w": w, "b": b},
                 ["N", 2, 3], ["N", 3])
    model = import_onnx(path)
    assert model.network.layers == (L.Normalize((0.5, 0.25), (0.5, 0.5)), L.Flatten(),
                                    L.Linear(6, 3), L.ReLU())
    x = rng.random((4, 2, 3), dtype=np.float32)
    expected = np.maximum(((x - mean) / 0.5).reshape(4, -1) @ w + b, 0)
    np.testing.assert_allclose(_outputs(model, x), expected, atol=1e-5)


def test_unsupported_operator_is_named_before_anything_is_built(tmp_path):
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], transB=1),
             helper.make_node("Sigmoid", ["h"], ["y"], name="act1")]
    path = _save(tmp_path, nodes, {"w": np.ones((2, 4))}, ["N", 4], ["N", 2])
    with pytest.raises(VstError, match=r"unsupported ONNX operator Sigmoid \(node 'act1'\); "
                                       r"vst imports Gemm, MatMul"):
        import_onnx(path)


def test_a_skip_connection_is_an_add_and_other_two_input_nodes_are_rejected(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Add", ["x", "r"], ["y"], name="skip")]
    model = import_onnx(_save(tmp_path, nodes, {}, ["N", 4], ["N", 4]))
    assert model.network.layers == (L.ReLU(), L.Add())
    assert model.network.inputs == ((-1,), (-1, 0))
    x = np.array([[-1.0, 2.0, -3.0, 0.5]], np.float32)
    np.testing.assert_allclose(_outputs(model, x), x + np.maximum(x, 0))
    nodes[1] = helper.make_node("Sub", ["x", "r"], ["y"], name="diff")
    with pytest.raises(VstError, match=r"Sub \('diff'\): the data must be its first input and "
                                       "its only one"):
        import_onnx(_save(tmp_path, nodes, {}, ["N", 4], ["N", 4], name="sub.onnx"))


@pytest.mark.parametrize("attrs, match", [
    ({"group": 3}, r"conv2d expects \(3, H, W\), got \(2, 8, 8\)"),
    ({"pads": [0, 0, 1, 1]}, "asymmetric"), ({"dilations": [2, 2]}, "dilation")])
def test_unsupported_conv_settings_are_named(tmp_path, attrs, match):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], **attrs)]
    path = _save(tmp_path, nodes, {"w": np.ones((2, 1, 3, 3))},
                 ["N", 2, 8, 8], ["N", 2, 6, 6])
    with pytest.raises(VstError, match=match):
        import_onnx(path)


def test_missing_and_corrupt_files_are_clear_errors(tmp_path, trained):
    with pytest.raises(VstError, match="not found"):
        import_onnx(tmp_path / "nope.onnx")
    good = export_onnx(trained[0], tmp_path / "good.onnx").read_bytes()
    for name, data in (("garbage.onnx", b"\x00\xff not a protobuf" * 10),
                       ("truncated.onnx", good[: len(good) // 2])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(VstError, match="ONNX"):
            import_onnx(tmp_path / name)


def test_vst_onnx_metadata_stands_in_for_eps_and_data(tmp_path):
    """`vst verify model.onnx` on vst's own export needs no --eps / --data; a
    foreign ONNX file without that metadata still asks for them."""
    import subprocess
    import sys

    model = random_model(L.Network((1, 28, 28), (L.Flatten(), L.Linear(784, 10))), seed=4)
    path = export_onnx(model, tmp_path / "m.onnx",
                       metadata={"eps": "0.01", "dataset": "mnist5k", "input_range": "0,1"})
    back = import_onnx(path)
    assert back.record["config"] == {"data": {"dataset": "mnist5k"}, "verify": {"eps": 0.01}}
    run = lambda *a: subprocess.run([sys.executable, "-m", "toolchain", "-q", "verify",  # noqa: E731
                                     *map(str, a), "--n", "20", "--method", "ibp"],
                                    capture_output=True, text=True, timeout=300)
    res = run(path)
    assert res.returncode == 0, res.stderr
    assert "0.01" in res.stdout
    bare = export_onnx(model, tmp_path / "bare.onnx")
    res = run(bare)
    assert res.returncode == 2 and "--data" in res.stderr
