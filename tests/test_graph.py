"""The graph IR: wiring, shape inference, counts, torch build, and vst 0.1 model files."""

import json
from pathlib import Path

import pytest
import torch

from toolchain.errors import VstError
from toolchain.models import layers as L
from toolchain.models.modelfile import load_model
from toolchain.models.torch_build import Graph, build_torch

DATA = Path(__file__).parent / "data"


def residual() -> L.Network:
    """conv -> BN -> ReLU -> depthwise -> ReLU -> 1x1, plus a 1x1 projection shortcut."""
    return L.Network((3, 8, 8), (
        L.Conv2d(3, 8, 3, 2, 1), L.BatchNorm(8), L.ReLU(),            # 0 1 2
        L.Conv2d(8, 8, 3, 1, 1, groups=8), L.ReLU(),                   # 3 4
        L.Conv2d(8, 16, 1),                                            # 5
        L.Conv2d(8, 16, 1, 1, 0),                                      # 6: shortcut of 2
        L.Add(), L.ReLU(), L.AvgPool2d(2), L.MaxPool2d(2), L.GlobalAvgPool(),  # 7..11
        L.Linear(16, 4)),                                              # 12
        inputs=((-1,), (0,), (1,), (2,), (3,), (4,), (2,), (5, 6), (7,), (8,), (9,), (10,),
                (11,)))


def test_chain_is_the_default_wiring():
    layers = (L.Flatten(), L.Linear(4, 2))
    assert L.Network((4,), layers) == L.Network((4,), layers, ((-1,), (0,)))
    assert L.Network((4,), layers).is_chain
    assert not residual().is_chain


def test_shapes_params_and_macs_by_hand():
    net = residual()
    shapes = net.shapes()
    assert shapes[2] == (8, 4, 4) and shapes[7] == (16, 4, 4)
    assert shapes[9] == (16, 2, 2) and shapes[10] == (16, 1, 1) and shapes[11] == (16,)
    assert shapes[-1] == (4,) and net.num_classes == 4
    macs = net.layer_macs()
    assert macs[0] == 16 * 8 * 3 * 9            # 4x4 outputs, 8 channels, 3x3x3 taps
    assert macs[3] == 16 * 8 * 9                # depthwise: one input channel per output
    assert macs[5] == macs[6] == 16 * 16 * 8
    assert macs[12] == 16 * 4
    assert sum(macs[i] for i in (1, 2, 4, 7, 8, 9, 10, 11)) == 0
    module = build_torch(net)
    assert net.param_count() == sum(p.numel() for p in module.parameters())
    assert tuple(module(torch.zeros(2, 3, 8, 8)).shape) == (2, 4)


def test_grouped_conv_with_channel_multiplier():
    conv = L.Conv2d(4, 8, 3, 1, 1, groups=4)
    assert conv.weight_shape() == (8, 1, 3, 3)
    net = L.Network((4, 5, 5), (conv,))
    assert net.macs() == 25 * 8 * 9
    assert tuple(build_torch(net).state_dict()["0.weight"].shape) == (8, 1, 3, 3)
    with pytest.raises(VstError, match="groups 3 must divide"):
        L.Network((4, 5, 5), (L.Conv2d(4, 6, 3, groups=3),))


def test_pool_shapes_match_torch():
    for layer, shape in [(L.AvgPool2d(3, 2, 1), (2, 9, 9)), (L.MaxPool2d(2), (2, 7, 7)),
                         (L.AvgPool1d(4), (3, 17)), (L.MaxPool1d(3, 1, 1), (3, 10)),
                         (L.GlobalAvgPool(), (3, 10)), (L.GlobalAvgPool(), (2, 5, 5))]:
        net = L.Network(shape, (layer,))
        out = build_torch(net)(torch.rand(2, *shape))
        assert tuple(out.shape[1:]) == net.shapes()[0], layer
    assert L.AvgPool2d(3) == L.AvgPool2d(3, 3, 0)                # stride defaults to the kernel


def test_graph_module_names_match_sequential_and_it_computes_the_dag():
    net = residual()
    module = build_torch(net)
    assert isinstance(module, Graph)
    assert [n for n, _ in module.named_children()] == [str(i) for i in range(len(net.layers))]
    assert "5.weight" in module.state_dict() and "1.running_mean" in module.state_dict()
    module.eval()
    x = torch.rand(3, 3, 8, 8)
    m = module._modules
    with torch.no_grad():
        a = m["2"](m["1"](m["0"](x)))
        body = m["5"](m["4"](m["3"](a)))
        y = m["12"](m["11"](m["10"](m["9"](m["8"](body + m["6"](a))))))
        assert torch.equal(module(x), y)


def test_round_trip_repr_and_chain_dict_has_no_new_keys():
    net = residual()
    again = L.Network.from_dict(json.loads(net.to_json()))
    assert again == net and again.inputs == net.inputs
    assert "Add() <- [5, 6] -> (16, 4, 4)" in repr(net)
    assert repr(net).count("\n") == len(net.layers)
    chain = L.Network((1, 4, 4), (L.Conv2d(1, 2, 3), L.ReLU(), L.Flatten(), L.Linear(8, 2)))
    d = chain.to_dict()
    assert set(d) == {"input_shape", "layers"} and "groups" not in d["layers"][0]
    assert L.layer_dict(L.Conv2d(2, 2, 3, groups=2))["groups"] == 2


@pytest.mark.parametrize("inputs,match", [
    (((-1,), (0,), (2,), (2,)), "not an earlier layer"),             # forward reference
    (((-1,), (1,), (1,), (2,)), "not an earlier layer"),             # reads itself: a cycle
    (((-1,), (0,), (0,), (1, 9)), "not an earlier layer"),           # dangling
    (((-1,), (0,), (0,), (1,)), "takes 2 input"),                    # Add with one input
    (((-1,), (0,), (1,)), "3 entries for 4 layers"),
    (((-1,), (0,), (1,), (1, "x")), "not an earlier layer"),
])
def test_bad_wiring_is_one_line(inputs, match):
    layers = (L.Conv2d(2, 2, 1), L.ReLU(), L.ReLU(), L.Add())
    with pytest.raises(VstError, match=match) as info:
        L.Network((2, 3, 3), layers, inputs)
    assert "\n" not in str(info.value)


def test_a_layer_nobody_reads_is_refused():
    layers = (L.Conv2d(2, 2, 1), L.ReLU(), L.ReLU(), L.ReLU(), L.Add())
    L.Network((2, 3, 3), layers, ((-1,), (0,), (-1,), (2,), (1, 3)))     # all used: fine
    with pytest.raises(VstError, match="layer 1's output is never used"):
        L.Network((2, 3, 3), layers, ((-1,), (0,), (-1,), (2,), (2, 3)))


def test_add_of_different_shapes_names_the_layer():
    with pytest.raises(VstError, match=r"layer 2 \(add\): add of shapes \(4, 3, 3\) and "
                                       r"\(2, 3, 3\)"):
        L.Network((2, 3, 3), (L.Conv2d(2, 4, 1), L.ReLU(), L.Add()), ((-1,), (0,), (1, -1)))


def test_bad_pools_and_global_pool():
    with pytest.raises(VstError, match="more than half the kernel"):
        L.Network((1, 6, 6), (L.MaxPool2d(2, 2, 2),))
    with pytest.raises(VstError, match="avgpool1d expects"):
        L.Network((1, 6, 6), (L.AvgPool1d(2),))
    with pytest.raises(VstError, match="globalavgpool expects"):
        L.Network((6,), (L.GlobalAvgPool(),))
    with pytest.raises(VstError, match="stride must be an integer"):
        L.Network.from_dict({"input_shape": [1, 6, 6],
                             "layers": [{"kind": "avgpool2d", "kernel": 2, "stride": 1.5}]})
    with pytest.raises(VstError, match="invalid architecture|never used"):
        L.Network.from_dict({"input_shape": [4], "inputs": [[-1], [-1]],
                             "layers": [{"kind": "relu"}, {"kind": "relu"}]})


@pytest.mark.parametrize("name", ["cnn_bn", "conv1d_bn", "normalize_cnn"])
def test_vst_0_1_model_files_load_with_the_same_hash(name):
    """tests/data/v0_1_*.vst were written by vst 0.1 (main 4adf805), before the graph IR."""
    expected = json.loads((DATA / "v0_1_hashes.json").read_text())[name]
    model = load_model(DATA / f"v0_1_{name}.vst")
    assert model.weights_hash() == expected
    assert model.network.is_chain and model.masks
    assert isinstance(model.torch_module(), torch.nn.Sequential)
