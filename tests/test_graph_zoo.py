"""The zoo's graph models (MLPerf Tiny shapes): structure, adaptation to the input, options."""

import pytest
import torch

from toolchain.errors import VstError
from toolchain.models import layers as L
from toolchain.models.torch_build import build_torch
from toolchain.models.zoo import build_network

CASES = [("ds_cnn", (1, 28, 28)), ("ds_cnn", (3, 12, 10)), ("resnet8", (3, 32, 32)),
         ("resnet8", (1, 9, 9)), ("ds_cnn1d", (2, 64)), ("resnet1d", (6, 30))]


@pytest.mark.parametrize("arch,shape", CASES)
def test_zoo_graph_models_fit_the_input_and_classes(arch, shape):
    net = build_network(arch, shape, 7)
    module = build_torch(net).eval()
    assert tuple(module(torch.rand(2, *shape)).shape) == (2, 7)
    assert net.param_count() == sum(p.numel() for p in module.parameters())
    assert isinstance(net.layers[-2], L.GlobalAvgPool) and isinstance(net.layers[-1], L.Linear)
    convs = [layer for layer in net.layers if isinstance(layer, (L.Conv1d, L.Conv2d))]
    assert all(isinstance(net.layers[i + 1], L.BatchNorm) for i, layer in enumerate(net.layers)
               if isinstance(layer, (L.Conv1d, L.Conv2d)) and layer.kernel > 1)
    if arch.startswith("ds_cnn"):
        depthwise = [c for c in convs if c.groups > 1]
        assert len(depthwise) == 4 and all(c.groups == c.in_channels == c.out_channels
                                           for c in depthwise)
        assert sum(isinstance(layer, L.Add) for layer in net.layers) == 0
    else:
        adds = [i for i, layer in enumerate(net.layers) if isinstance(layer, L.Add)]
        assert len(adds) == 3
        projections = [c for c in convs if c.kernel == 1]
        assert [(c.in_channels, c.out_channels, c.stride) for c in projections] == \
            [(16, 32, 2), (32, 64, 2)]                         # stage 1 keeps its shape


def test_ds_cnn_is_mlperf_kws_shaped():
    net = build_network("ds_cnn", (1, 28, 28), 12)
    convs = [layer for layer in net.layers if isinstance(layer, L.Conv2d)]
    assert [(c.out_channels, c.kernel, c.stride, c.groups) for c in convs] == \
        [(64, 3, 2, 1)] + [(64, 3, 1, 64), (64, 1, 1, 1)] * 4
    assert net.shapes()[-3] == (64, 14, 14)


def test_channels_option_and_refusals():
    net = build_network("resnet8", (1, 16, 16), 10, channels=(4, 8, 8))
    convs = [(c.out_channels, c.kernel) for c in net.layers if isinstance(c, L.Conv2d)]
    # stem, stage 1 (identity shortcut), stages 2 and 3 (stride 2: 1x1 projections)
    assert convs == [(4, 3), (4, 3), (4, 3), (8, 3), (8, 3), (8, 1), (8, 3), (8, 3), (8, 1)]
    ds = build_network("ds_cnn", (1, 16, 16), 10, channels=(8, 8, 16, 16, 32))
    assert ds.layers[-1] == L.Linear(32, 10)
    with pytest.raises(VstError, match="channels must list 1 or 5 channel counts for arch ds_cnn, got 2"):
        build_network("ds_cnn", (1, 16, 16), 10, channels=(8, 8))
    with pytest.raises(VstError, match="model.widths does not apply"):
        build_network("resnet8", (1, 16, 16), 10, widths=(32,))
    with pytest.raises(VstError, match="resnet1d needs signal inputs"):
        build_network("resnet1d", (1, 16, 16), 10)
    with pytest.raises(VstError, match="ds_cnn needs image inputs"):
        build_network("ds_cnn", (2, 64), 10)
