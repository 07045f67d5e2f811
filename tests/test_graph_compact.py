"""Compaction of graph models: whole channel groups removed, same function, same verdicts."""

import pytest
import torch

from helpers import random_model
from toolchain.compact import compact, fold_batchnorm, max_abs_diff
from toolchain.lirpa.bounds import Bounder
from toolchain.models import layers as L
from toolchain.models.modelfile import VstModel
from toolchain.models.zoo import build_network
from toolchain.sparsity.masks import Sparsifier

ZOO = {"ds_cnn": ((1, 12, 12), (8,)), "resnet8": ((1, 10, 10), (4, 6, 8)),
       "ds_cnn1d": ((2, 24), (8,)), "resnet1d": ((2, 24), (4, 6, 8))}


def masked_model(arch: str, density: float, seed: int = 0) -> VstModel:
    """A zoo model with random weights and BatchNorm statistics, structured-pruned."""
    shape, channels = ZOO[arch]
    net = build_network(arch, shape, 4, channels=channels)
    model = random_model(net, seed)
    sp = Sparsifier(net, "structured", density, "erk", torch.Generator().manual_seed(seed))
    module = model.torch_module()
    sp.apply(module)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return VstModel(net, state, sp.param_masks(), {"mode": "structured"})


def verdicts(model: VstModel, x, y, method: str, eps: float) -> torch.Tensor:
    bounder = Bounder(model.torch_module().eval(), model.network.input_shape)
    with torch.no_grad():
        return Bounder.verified(bounder.margin_lower(x, y, eps, method))


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_compacted_zoo_model_equals_the_masked_one(arch):
    model = masked_model(arch, 0.3)
    small, report = compact(model)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((64,) + model.network.input_shape, generator=gen)
    assert max_abs_diff(model, small, x) <= 1e-5
    before, after = report["before"], report["after"]
    assert after["params"] < 0.5 * before["params"]
    assert after["macs"] < 0.6 * before["macs"]
    assert not any(isinstance(layer, L.BatchNorm) for layer in small.network.layers)
    for layer in small.network.layers:            # depthwise stays depthwise, just narrower
        if getattr(layer, "groups", 1) > 1:
            assert layer.groups == layer.in_channels == layer.out_channels
    if arch.startswith("resnet"):
        assert sum(isinstance(layer, L.Add) for layer in small.network.layers) == 3
    # verdicts: half the labels are the prediction (often verified at a small eps),
    # half the runner-up (never verified); both kinds occur, and compaction keeps each
    with torch.no_grad():
        top2 = model.torch_module().eval()(x[:16]).topk(2).indices
    y = torch.where(torch.arange(16) % 2 == 0, top2[:, 0], top2[:, 1])
    for method in ("ibp", "crown"):
        v = verdicts(model, x[:16], y, method, 0.002)
        assert torch.equal(v, verdicts(small, x[:16], y, method, 0.002)), method
        if method == "crown":
            assert 0 < int(v.sum()) < 16


@pytest.mark.parametrize("arch", ["ds_cnn", "resnet8"])
def test_macs_fall_with_the_density(arch):
    macs = [compact(masked_model(arch, d))[1]["after"]["macs"] for d in (0.2, 0.5, 1.0)]
    dense = compact(masked_model(arch, 1.0))[1]["before"]["macs"]
    assert macs[0] < macs[1] < macs[2] == dense


def test_batchnorm_is_folded_only_into_a_layer_nobody_else_reads():
    # conv 0 feeds BatchNorm 1 and, directly, the Add: BatchNorm 1 must stay;
    # BatchNorm 3 follows conv 2 alone: folded
    net = L.Network((2, 5, 5), (L.Conv2d(2, 3, 3, 1, 1), L.BatchNorm(3), L.Conv2d(3, 3, 1),
                                L.BatchNorm(3), L.Add(), L.GlobalAvgPool(), L.Linear(3, 2)),
                    inputs=((-1,), (0,), (1,), (2,), (0, 3), (4,), (5,)))
    model = random_model(net, seed=2)
    folded = fold_batchnorm(model)
    assert [layer.kind for layer in folded.network.layers] == \
        ["conv2d", "batchnorm", "conv2d", "add", "globalavgpool", "linear"]
    assert folded.network.inputs == ((-1,), (0,), (1,), (0, 2), (3,), (4,))
    assert max_abs_diff(model, folded, torch.rand(16, 2, 5, 5)) <= 1e-5
