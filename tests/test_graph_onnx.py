"""ONNX export and import of graph networks: every new operator round trips
(parity 1e-5, same verdicts), a ResNet written in plain PyTorch and exported
with torch.onnx.export verifies like the same network built natively, and
operators vst cannot represent are named in one line (exit 2)."""

import io
import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn import functional as F

from helpers import assert_one_line, random_model
from test_graph_verify import NETS, _module, _vst
from test_lirpa_soundness import one_thread  # noqa: F401  (autouse: one thread)
from toolchain.errors import VstError
from toolchain.export.onnx import export_onnx, onnx_parity, run_onnx
from toolchain.lirpa.bounds import Bounder
from toolchain.models import layers as L
from toolchain.models.modelfile import VstModel, save_model
from toolchain.models.onnx_import import import_onnx
from toolchain.verify.engine import verify_samples

OPS = {"residual": {"Add", "AveragePool"}, "depthwise_gap": {"Conv", "GlobalAveragePool"},
       "avgpool_pad": {"AveragePool"}, "maxpool": {"MaxPool"}, "maxpool_overlap": {"MaxPool"},
       "maxpool_residual": {"MaxPool", "Add", "GlobalAveragePool"},
       "signal_residual_max": {"Add", "MaxPool", "GlobalAveragePool"},
       "signal_avg_gap": {"Sub", "Div", "AveragePool", "GlobalAveragePool"}}


def _model(name) -> VstModel:
    module = _module(name)
    return VstModel(NETS[name], {k: v.detach().clone() for k, v in module.state_dict().items()})


def _outputs(model, x):
    with torch.no_grad():
        return model.torch_module().eval()(torch.as_tensor(x)).numpy()


def _x(shape, n=16, seed=3):
    return torch.rand((n,) + tuple(shape), generator=torch.Generator().manual_seed(seed)).numpy()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # torch's legacy exporter, on purpose
@pytest.mark.parametrize("name", sorted(NETS))
def test_each_operator_exports_and_round_trips(name, tmp_path):
    model, net = _model(name), NETS[name]
    path = export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert OPS[name] <= ops, ops
    if name == "depthwise_gap":
        groups = [a.i for n in proto.graph.node if n.op_type == "Conv"
                  for a in n.attribute if a.name == "group"]
        assert 3 in groups
    x = _x(net.input_shape)
    assert onnx_parity(model, path, x) <= 1e-5
    back = import_onnx(path)         # BatchNorm after a conv comes back fused into it
    assert back.network.input_shape == net.input_shape
    assert [k.kind for k in back.network.layers] == [
        k.kind for i, k in enumerate(net.layers)
        if not (isinstance(k, L.BatchNorm) and isinstance(net.layers[net.inputs[i][0]],
                                                          (L.Conv2d, L.Conv1d)))]
    assert np.max(np.abs(_outputs(back, x) - _outputs(model, x))) <= 1e-5
    assert np.max(np.abs(run_onnx(path, x) - _outputs(back, x))) <= 1e-5
    # unfused (no constant folding): the very same graph comes back
    buffer = io.BytesIO()
    torch.onnx.export(model.torch_module().eval(), (torch.zeros((1,) + net.input_shape),),
                      buffer, dynamo=False, opset_version=17, do_constant_folding=False,
                      input_names=["input"], output_names=["logits"])
    (tmp_path / "u.onnx").write_bytes(buffer.getvalue())
    assert import_onnx(tmp_path / "u.onnx").network == net
    # same verdicts from the imported network (bounds, then PGD)
    method = "ibp" if "crown" in Bounder(model.torch_module().eval(), net.input_shape).refused \
        else "crown"
    y = torch.from_numpy(_outputs(model, x).argmax(1))
    verdicts = []
    for m in (model, back):
        module = m.torch_module().eval()
        bounder = Bounder(module, net.input_shape)
        verdicts.append([s.verdict for eps in (0.002, 0.03, 0.2) for s in verify_samples(
            module, bounder, torch.from_numpy(x), y, eps, method).samples])
    assert verdicts[0] == verdicts[1]
    assert {"verified", "falsified"} <= set(verdicts[0]), verdicts[0]


# -- a ResNet written in plain PyTorch ----------------------------------------------

class Residual(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                    nn.BatchNorm2d(cout)))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class TinyResNet(nn.Module):
    """stem + max pool, an identity and a projection residual block, a
    depthwise-separable block, average pooling, mean over positions, linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4),
                                  nn.ReLU(), nn.MaxPool2d(2))
        self.block1, self.block2 = Residual(4, 4, 1), Residual(4, 8, 2)
        self.ds = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False),
                                nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1, bias=False),
                                nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(3, 1, 1))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.ds(self.block2(self.block1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def _native(torch_net) -> VstModel:
    """The same network built from vst's layers, with the same weights (unfused)."""
    C2, BN = L.Conv2d, L.BatchNorm
    layers_and_sources = [
        (C2(1, 4, 3, 1, 1), -1, torch_net.stem[0]), (BN(4), 0, torch_net.stem[1]),
        (L.ReLU(), 1, None), (L.MaxPool2d(2), 2, None),
        (C2(4, 4, 3, 1, 1), 3, torch_net.block1.conv1), (BN(4), 4, torch_net.block1.bn1),
        (L.ReLU(), 5, None), (C2(4, 4, 3, 1, 1), 6, torch_net.block1.conv2),
        (BN(4), 7, torch_net.block1.bn2), (L.Add(), (8, 3), None), (L.ReLU(), 9, None),
        (C2(4, 8, 3, 2, 1), 10, torch_net.block2.conv1), (BN(8), 11, torch_net.block2.bn1),
        (L.ReLU(), 12, None), (C2(8, 8, 3, 1, 1), 13, torch_net.block2.conv2),
        (BN(8), 14, torch_net.block2.bn2), (C2(4, 8, 1, 2, 0), 10, torch_net.block2.short[0]),
        (BN(8), 16, torch_net.block2.short[1]), (L.Add(), (15, 17), None), (L.ReLU(), 18, None),
        (C2(8, 8, 3, 1, 1, groups=8), 19, torch_net.ds[0]), (BN(8), 20, torch_net.ds[1]),
        (L.ReLU(), 21, None), (C2(8, 8, 1), 22, torch_net.ds[3]), (BN(8), 23, torch_net.ds[4]),
        (L.ReLU(), 24, None), (L.AvgPool2d(3, 1, 1), 25, None), (L.GlobalAvgPool(), 26, None),
        (L.Linear(8, 3), 27, torch_net.fc)]
    net = L.Network((1, 12, 12), tuple(la for la, _, _ in layers_and_sources),
                    tuple(s if isinstance(s, tuple) else (s,) for _, s, _ in layers_and_sources))
    state = random_model(net).state
    for i, (layer, _, src) in enumerate(layers_and_sources):
        for key, value in (src.state_dict().items() if src is not None else ()):
            if f"{i}.{key}" in state:
                state[f"{i}.{key}"] = value.detach().clone()
        if isinstance(layer, L.Conv2d):
            state[f"{i}.bias"] = torch.zeros(layer.out_channels)
    return VstModel(net, state)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    torch_net = TinyResNet()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((16, 1, 12, 12), generator=gen)
    with torch.no_grad():
        for m in torch_net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.weight.uniform_(0.8, 1.6, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
            elif isinstance(m, nn.Conv2d):
                m.weight.mul_(2.0)
        torch_net.eval()
        torch_net.fc.bias -= torch_net(x).mean(0)          # every class wins somewhere
        y = torch_net(x).argmax(1).numpy()
    y[2] = (y[2] + 1) % 3
    np.savez(root / "d.npz", x=x.numpy(), y=y, x_test=x.numpy(), y_test=y)
    buffer = io.BytesIO()
    with warnings.catch_warnings():       # torch's legacy exporter, on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(torch_net, (torch.zeros(1, 1, 12, 12),), buffer, dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"])
    (root / "resnet.onnx").write_bytes(buffer.getvalue())
    native = _native(torch_net)
    save_model(root / "native.vst", native)
    return root, torch_net, native, x.numpy()


def test_plain_pytorch_resnet_imports_as_the_native_network(resnet):
    root, torch_net, native, x = resnet
    ops = {n.op_type for n in onnx.load(str(root / "resnet.onnx")).graph.node}
    assert {"Conv", "Add", "MaxPool", "AveragePool", "ReduceMean", "Gemm"} <= ops, ops
    back = import_onnx(root / "resnet.onnx")
    with torch.no_grad():
        want = torch_net(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(_outputs(back, x) - want)) <= 1e-5
    assert np.max(np.abs(_outputs(native, x) - want)) <= 1e-5
    kinds = [k.kind for k in back.network.layers]
    assert kinds.count("add") == 2 and "maxpool2d" in kinds and "globalavgpool" in kinds
    assert "batchnorm" not in kinds                         # fused into the convs
    assert any(getattr(k, "groups", 1) == 8 for k in back.network.layers)


def test_vst_verify_onnx_gives_the_native_verdicts(resnet):
    root = resnet[0]
    verdicts = []
    for model in ("resnet.onnx", "native.vst"):
        code, out = _vst("verify", root / model, "--data", root / "d.npz", "--eps", "0.01",
                         "--method", "all", "--timeout", "20", "--json", root / "c.json")
        assert code == 0, out
        res = json.loads((root / "c.json").read_text())["results"][0]
        verdicts.append([s["verdict"] for s in res["samples"]])
    assert verdicts[0] == verdicts[1]
    assert {"verified", "falsified"} <= set(verdicts[0]), verdicts[0]


def test_vst_export_of_a_graph_model_checks_parity_and_its_properties_verify(resnet, tmp_path):
    root, out_dir = resnet[0], tmp_path / "out"
    code, out = _vst("export", root / "native.vst", "--data", root / "d.npz", "--format",
                     "onnx,vnnlib", "--eps", "0.01", "--vnnlib-n", "4", "--out", out_dir)
    assert code == 0, out
    report = json.loads((out_dir / "export.json").read_text())
    assert report["onnx_max_abs_diff"] <= 1e-5
    back = import_onnx(out_dir / "model.onnx")
    assert back.record["onnx_metadata"]["weights_sha256"] == resnet[2].weights_hash()
    # VNN-COMP style: the exported graph and its properties, decided and re-checked
    code, out = _vst("verify", "--vnnlib", out_dir / "instances.csv", "--method",
                     "complete", "--json", tmp_path / "p.json")
    assert code == 0, out
    cert = json.loads((tmp_path / "p.json").read_text())
    assert cert["n"] == 4 and cert["counts"]["unknown"] == 0, cert["counts"]
    code, out = _vst("certificate", "check", tmp_path / "p.json")
    assert code == 0 and "re-checked" in out, out


def _save(path, nodes, inits, in_shape, out_shape):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    path.write_bytes(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_unsupported_operators_are_all_named_in_one_line(resnet, tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Sigmoid", ["c"], ["s"], name="gate"),
             helper.make_node("Mul", ["c", "s"], ["m"], name="swish"),
             helper.make_node("GlobalAveragePool", ["m"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"])]
    path = _save(tmp_path / "swish.onnx", nodes, {"w": np.ones((2, 1, 3, 3))},
                 ["N", 1, 6, 6], ["N", 2])
    code, out = _vst("verify", path, "--data", resnet[0] / "d.npz", "--eps", "0.01")
    assert_one_line(code, out, 2, "unsupported ONNX operators Sigmoid (node 'gate'), "
                                  "Mul (node 'swish'); vst imports Gemm, MatMul")


@pytest.mark.parametrize("nodes, inits, match", [
    ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
     {}, "count_include_pad=1"),
    ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 3])], {}, "non-square"),
    ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])], {},
     "dilation"),
    ([helper.make_node("ReduceMean", ["x"], ["y"], axes=[1])], {}, r"axes \[2, 3\]\) only"),
    ([helper.make_node("GlobalAveragePool", ["x"], ["g"]),
      helper.make_node("Relu", ["g"], ["y"], name="late")], {},
     r"Relu \('late'\) reads a global average pooling"),
    ([helper.make_node("Add", ["x", "b"], ["y"], name="shift")], {"b": np.ones((1, 2, 1, 1))},
     "only as a MatMul's bias"),
])
def test_unrepresentable_graphs_are_one_line_errors(tmp_path, nodes, inits, match):
    path = _save(tmp_path / "g.onnx", nodes, inits, ["N", 2, 6, 6], ["N", 2])
    with pytest.raises(VstError, match=match):
        import_onnx(path)


def test_global_pooling_forms_import_alike(tmp_path):
    """GlobalAveragePool + Flatten, + Squeeze, and ReduceMean(keepdims=0) are one layer."""
    w = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)
    heads = {
        "flatten": [helper.make_node("GlobalAveragePool", ["x"], ["g"]),
                    helper.make_node("Flatten", ["g"], ["f"])],
        "squeeze": [helper.make_node("GlobalAveragePool", ["x"], ["g"]),
                    helper.make_node("Squeeze", ["g", "axes"], ["f"])],
        "reducemean": [helper.make_node("ReduceMean", ["x"], ["f"], axes=[2, 3], keepdims=0)],
    }
    x = _x((2, 5, 5), n=4)
    for name, head in heads.items():
        inits = {"w": w}
        if name == "squeeze":
            inits["axes"] = np.array([2, 3])
        nodes = head + [helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)]
        graph = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
            [numpy_helper.from_array(np.asarray(v, np.float32 if k != "axes" else np.int64), k)
             for k, v in inits.items()])
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
        model = import_onnx(path)
        assert model.network.layers == (L.GlobalAvgPool(), L.Linear(2, 3)), name
        np.testing.assert_allclose(_outputs(model, x), x.mean((2, 3)) @ w.T, atol=1e-6)
