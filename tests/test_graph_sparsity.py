"""Structured sparsity on graph models: coupled channels form one group, pruned together."""

import pytest
import torch

from helpers import random_model
from toolchain.models import layers as L
from toolchain.models.torch_build import build_torch
from toolchain.models.zoo import build_network
from toolchain.sparsity.budget import live_weights
from toolchain.sparsity.groups import channel_groups
from toolchain.sparsity.masks import Sparsifier


def small_resnet():
    return build_network("resnet8", (1, 10, 10), 3, channels=(4, 6, 8))


def test_resnet_groups_follow_the_adds():
    net = small_resnet()
    by_key = {g.layer: g for g in channel_groups(net)}
    # stem (0) and stage 1's second conv (6) meet at the identity Add (8): one group,
    # read by stage 1's first conv (3), stage 2's first conv (10) and its projection (15)
    g = by_key[0]
    assert g.rows == (0, 6) and g.batchnorms == (1, 7)
    assert g.consumers == ((3, 1), (10, 1), (15, 1))
    assert 8 in g.through
    # stage 2: the body's second conv (13) and the projection (15) are tied by Add 16
    assert by_key[13].rows == (13, 15) and by_key[13].consumers == ((18, 1), (23, 1))
    # the inner convs of each block are ordinary groups
    assert by_key[3].rows == (3,) and by_key[3].consumers == ((6, 1),)
    # stage 3's output goes through GlobalAvgPool into the classifier
    assert by_key[21].rows == (21, 23) and by_key[21].consumers == ((27, 1),)
    assert 27 not in {i for g in by_key.values() for i in g.rows}       # the classes: kept


def test_depthwise_conv_joins_its_producers_group():
    net = build_network("ds_cnn", (1, 12, 12), 4, channels=(6,))
    groups = channel_groups(net)
    first = groups[0]
    assert first.rows == (0, 3) and first.batchnorms == (1, 4) and first.consumers == ((6, 1),)
    assert [g.rows for g in groups] == [(0, 3), (6, 9), (12, 15), (18, 21), (24,)]
    assert groups[-1].consumers == ((28, 1),)                           # GAP -> linear


def test_frozen_spaces_are_not_grouped():
    # an Add with the network input, a grouped (not depthwise) conv, a Normalize
    net = L.Network((2, 6, 6), (
        L.Conv2d(2, 2, 3, 1, 1), L.Add(),                               # input + conv: frozen
        L.Conv2d(2, 4, 3, 1, 1), L.ReLU(),                              # writes 4 channels
        L.Conv2d(4, 4, 3, 1, 1, groups=2), L.ReLU(),                    # grouped: freezes both
        L.Conv2d(4, 6, 1), L.Normalize((0.5,), (2.0,)),                 # Normalize: frozen
        L.Conv2d(6, 3, 1), L.ReLU(), L.GlobalAvgPool(), L.Linear(3, 2)),
        inputs=((-1,), (-1, 0)) + tuple((i - 1,) for i in range(2, 12)))
    assert [g.rows for g in channel_groups(net)] == [(8,)]


def _activations(module, x):
    """Output of every layer of a Graph module on x."""
    outs = {}
    hooks = [m.register_forward_hook(lambda m, a, out, i=int(name): outs.__setitem__(i, out))
             for name, m in module.named_children()]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    return outs


@pytest.mark.parametrize("arch,shape", [("resnet8", (1, 10, 10)), ("ds_cnn", (1, 12, 12)),
                                        ("resnet1d", (2, 20)), ("ds_cnn1d", (2, 20))])
def test_pruned_channels_are_zero_in_every_tensor_of_their_group(arch, shape):
    """Both operands of every Add and its output lose the same channels."""
    channels = (4, 6, 8) if arch.startswith("resnet") else (6,)
    net = build_network(arch, shape, 3, channels=channels)
    model = random_model(net, seed=1)
    module = build_torch(net, model.state).eval()
    sp = Sparsifier(net, "structured", 0.3, "erk", torch.Generator().manual_seed(0))
    sp.apply(module)
    outs = _activations(module, torch.rand(5, *shape))
    checked_adds = 0
    for g in sp.groups.values():
        off = ~sp.unit_masks[g.layer]
        assert off.any()
        for i in g.rows + g.batchnorms + g.through:
            if isinstance(net.layers[i], L.Flatten):
                continue
            assert not outs[i][:, off].any(), f"{arch}: layer {i} passes a pruned channel"
        for i in g.through:
            if isinstance(net.layers[i], L.Add):
                a, b = net.inputs[i]
                assert not outs[a][:, off].any() and not outs[b][:, off].any()
                checked_adds += 1
    assert checked_adds == (3 if arch.startswith("resnet") else 0)


@pytest.mark.parametrize("arch", ["resnet8", "ds_cnn"])
def test_budget_is_counted_on_the_groups(arch):
    net = build_network(arch, (1, 12, 12), 3,
                        channels=(8, 8, 16) if arch == "resnet8" else (12,))
    for density in (0.2, 0.5):
        sp = Sparsifier(net, "structured", density, "erk", torch.Generator().manual_seed(0))
        alive = {k: int(m.sum()) for k, m in sp.unit_masks.items()}
        assert sp.kept_weights() == live_weights(net, list(sp.groups.values()), alive)
        assert sp.density() == pytest.approx(density, abs=0.05)
        # a depthwise filter lives and dies with its channel: its mask rows follow the group
        masks = sp.param_masks()
        for g in sp.groups.values():
            for row in g.rows:
                rows_alive = masks[f"{row}.weight"].reshape(g.channels, -1).any(dim=1)
                assert torch.equal(rows_alive, sp.unit_masks[g.layer])
                assert torch.equal(masks[f"{row}.bias"].bool(), sp.unit_masks[g.layer])
