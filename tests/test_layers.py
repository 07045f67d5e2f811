import math

import pytest
import torch

from toolchain.errors import VstError
from toolchain.models import layers as L
from toolchain.models.torch_build import build_torch
from toolchain.models.zoo import build_network


@pytest.mark.parametrize("arch,shape", [("mlp", (1, 28, 28)), ("cnn_4layer", (1, 28, 28)),
                                        ("cnn_small", (3, 32, 32)), ("conv1d", (2, 64))])
@pytest.mark.parametrize("bn", [False, True])
def test_counts_match_torch(arch, shape, bn):
    net = build_network(arch, shape, 10, batchnorm=bn)
    module = build_torch(net)
    assert net.param_count() == sum(p.numel() for p in module.parameters())
    out = module.eval()(torch.zeros(2, *shape))
    assert tuple(out.shape) == (2, 10) == (2, *net.shapes()[-1])
    # shapes() agrees with torch layer by layer
    x = torch.zeros(1, *shape)
    for mod, expect in zip(module, net.shapes()):
        x = mod(x)
        assert tuple(x.shape[1:]) == expect


def test_cnn_4layer_is_the_papers_model():
    net = build_network("cnn_4layer", (1, 28, 28), 10)
    convs = [l for l in net.layers if isinstance(l, L.Conv2d)]
    fcs = [l for l in net.layers if isinstance(l, L.Linear)]
    assert [(c.out_channels, c.kernel, c.stride) for c in convs] == [(16, 4, 2), (32, 4, 2)]
    assert [f.out_features for f in fcs] == [100, 10]
    assert fcs[0].in_features == 32 * 7 * 7


def test_macs_by_hand():
    net = L.Network((1, 8, 8), (L.Conv2d(1, 4, 3, 2, 1), L.ReLU(), L.Flatten(), L.Linear(64, 10)))
    # conv: 4x4 outputs * 4 channels * 9 taps; linear: 64*10
    assert net.layer_macs() == [16 * 4 * 9, 0, 0, 640]
    assert net.macs() == 16 * 4 * 9 + 640


def test_dict_round_trip_and_repr():
    net = build_network("cnn_small", (1, 28, 28), 10, channels=[4, 8], widths=[32], batchnorm=True)
    again = L.Network.from_dict(net.to_dict())
    assert again == net
    assert "Conv2d(in_channels=1, out_channels=4" in repr(net)
    assert repr(net).count("\n") == len(net.layers)


def test_bad_shapes_are_user_errors():
    with pytest.raises(VstError, match="linear expects"):
        L.Network((5,), (L.Linear(4, 2),))
    with pytest.raises(VstError, match="conv2d"):
        build_network("cnn_4layer", (1, 2, 2), 10)
    with pytest.raises(VstError, match="unknown model"):
        build_network("resnet", (1, 28, 28), 10)
    with pytest.raises(VstError, match="unknown layer kind"):
        L.Network.from_dict({"input_shape": [4], "layers": [{"kind": "lstm"}]})
    with pytest.raises(VstError, match="conv1d needs"):
        build_network("conv1d", (1, 28, 28), 10)


def test_normalize_module():
    net = L.Network((2, 3), (L.Normalize((0.5, 1.0), (0.5, 2.0)), L.Flatten()))
    out = build_torch(net)(torch.ones(1, 2, 3))
    assert torch.allclose(out, torch.tensor([[1.0] * 3 + [0.0] * 3]))
    assert math.prod(net.shapes()[-1]) == 6
