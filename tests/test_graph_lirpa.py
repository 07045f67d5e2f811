"""Bounds on graph networks (residual Add, depthwise conv, pooling) are sound.

auto_LiRPA 0.3 got CROWN wrong through grouped convolutions and average
pooling (found here); the twin (lirpa/twin.py) and mend #9 (lirpa/compat.py)
fix that, and max pooling is refused where auto_LiRPA fails.
"""

import pytest
import torch

from test_lirpa_soundness import EPS, TOL, _randomize_batchnorm, box_points, outputs_at
from toolchain.errors import VstError
from toolchain.lirpa import twin
from toolchain.lirpa.bounds import METHODS, Bounder, margin_matrix
from toolchain.models import layers as L
from toolchain.models.torch_build import build_torch

C2, C1 = L.Conv2d, L.Conv1d
NETS = {
    # conv -> BN -> depthwise -> BN -> 1x1, projection shortcut, global average pool
    "residual_dw": L.Network((2, 6, 6), (
        C2(2, 4, 3, 1, 1), L.BatchNorm(4), L.ReLU(), C2(4, 4, 3, 1, 1, groups=4), L.BatchNorm(4),
        L.ReLU(), C2(4, 6, 1), C2(4, 6, 1), L.Add(), L.ReLU(), L.GlobalAvgPool(), L.Linear(6, 3)),
        ((-1,), (0,), (1,), (2,), (3,), (4,), (5,), (2,), (6, 7), (8,), (9,), (10,))),
    "multiplier_avgpool": L.Network((2, 9, 9), (
        C2(2, 4, 3, 1, 1), L.ReLU(), C2(4, 8, 3, 2, 1, groups=4), L.ReLU(), L.AvgPool2d(3, 1, 1),
        C2(8, 4, 3, 1, 1, groups=2), L.ReLU(), L.AvgPool2d(3, 2), L.Flatten(), L.Linear(16, 3))),
    "signal_residual": L.Network((2, 16), (
        L.Normalize((0.5,), (0.5,)), C1(2, 4, 3, 1, 1), L.BatchNorm(4), L.ReLU(),
        C1(4, 4, 3, 1, 1, groups=4), L.ReLU(), L.Add(), L.AvgPool1d(3, 2, 1), L.GlobalAvgPool(),
        L.Linear(4, 3)),
        ((-1,), (0,), (1,), (2,), (3,), (4,), (3, 5), (6,), (7,), (8,))),
    "maxpool": L.Network((2, 8, 8), (
        C2(2, 4, 3, 1, 1), L.ReLU(), L.MaxPool2d(2), C2(4, 4, 3, 1, 1), L.ReLU(), L.Flatten(),
        L.Linear(64, 3))),
}


def _case(name, seed=0):
    torch.manual_seed(seed)
    net = NETS[name]
    module = build_torch(net)
    gen = torch.Generator().manual_seed(seed)
    _randomize_batchnorm(module, gen)
    module.eval()
    x = torch.rand((3,) + net.input_shape, generator=gen)
    y = torch.randint(0, net.num_classes, (3,), generator=gen)
    return module, Bounder(module, net.input_shape), x, y


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=sorted(NETS))
def case(request):
    return (request.param,) + _case(request.param)


@pytest.mark.parametrize("method", METHODS)
def test_bounds_contain_sampled_outputs(case, method):
    name, module, bounder, x, y = case
    if method in bounder.refused:                     # max pooling: see test_max_pool_refusals
        with pytest.raises(VstError, match=f"{method} cannot bound max pooling"):
            bounder.logit_bounds(x, EPS, method)
        return
    out = outputs_at(module, box_points(x, EPS))
    margins = torch.einsum("nck,npk->npc", margin_matrix(y, out.shape[-1]), out)
    with torch.no_grad():
        lb, ub = bounder.logit_bounds(x, EPS, method)
        mlb = bounder.margin_lower(x, y, EPS, method)
    assert (lb.unsqueeze(1) <= out + TOL).all(), f"{name}/{method}: lower bound violated"
    assert (ub.unsqueeze(1) >= out - TOL).all(), f"{name}/{method}: upper bound violated"
    assert (mlb.unsqueeze(1) <= margins + TOL).all(), f"{name}/{method}: margin violated"
    assert float((ub - lb).min()) > 0


def test_the_twin_computes_the_same_function(case):
    name, module, bounder, x, y = case
    lifted = x.unsqueeze(2) if len(x.shape) == 3 else x
    with torch.no_grad():
        torch.testing.assert_close(bounder._traced(lifted), module(x), atol=1e-6, rtol=0)
    params = {id(p) for p in module.parameters()}
    assert all(id(p) in params for p in bounder._traced.parameters())      # shared, not copied


def test_crown_ibp_gradient_reaches_the_depthwise_weights():
    module, bounder, x, y = _case("residual_dw")
    module.train()
    lower = bounder.mixed_margin_lower(x, y, EPS, beta=0.5)
    lower.sum().backward()
    grad = module._modules["3"].weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_max_pool_refusals():
    module, bounder, x, y = _case("maxpool")
    assert set(bounder.refused) == {"alpha-crown"}
    with pytest.raises(VstError, match="alpha-crown cannot bound max pooling.*use crown"):
        bounder.margin_lower(x, y, EPS, "alpha-crown")
    for pool, refused in [(L.MaxPool2d(3, 1, 1), {"crown-ibp", "crown", "alpha-crown"})]:
        net = L.Network((2, 6, 6), (C2(2, 2, 1), L.ReLU(), pool, L.Flatten(), L.Linear(72, 2)))
        assert set(Bounder(build_torch(net).eval(), (2, 6, 6)).refused) == refused
    signal = L.Network((2, 8), (C1(2, 2, 3), L.ReLU(), L.MaxPool1d(2), L.Flatten(),
                                L.Linear(6, 2)))
    b = Bounder(build_torch(signal).eval(), (2, 8))
    assert set(b.refused) == {"crown-ibp", "crown", "alpha-crown"}
    with pytest.raises(VstError, match="crown-ibp cannot bound 1-D max pooling"):
        b.mixed_margin_lower(torch.rand(2, 2, 8), torch.tensor([0, 1]), EPS, beta=0.5)
    assert b.margin_lower(torch.rand(2, 2, 8), torch.tensor([0, 1]), EPS, "ibp").shape == (2, 1)


def test_a_chain_without_new_operators_is_traced_as_it_is():
    net = L.Network((1, 6, 6), (C2(1, 2, 3), L.ReLU(), L.Flatten(), L.Linear(32, 2)))
    module = build_torch(net)
    assert twin.bounding_twin(module, net.input_shape) is module


def test_crown_runs_in_chunks_on_the_cpu_with_the_bounds_of_one_call(monkeypatch):
    """auto_LiRPA bounds the union of every sample's unstable neurons, so CROWN is
    cheaper a few samples per call (bounds.CROWN_CHUNK); the bounds stay those of
    one call on the whole batch (up to rounding), and train mode is never split."""
    from toolchain.lirpa import bounds

    module, bounder, x, y = _case("residual_dw")
    calls = []
    real = bounder._bounded.compute_bounds

    def counted(*args, **kwargs):
        calls.append(kwargs.get("x", (None,))[0].shape[0] if kwargs.get("x") else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(bounder._bounded, "compute_bounds", counted)
    with torch.no_grad():
        monkeypatch.setattr(bounds, "CROWN_CHUNK", len(x))
        whole, (lb_whole, ub_whole) = (bounder.margin_lower(x, y, EPS, "crown"),
                                       bounder.logit_bounds(x, EPS, "crown"))
        assert calls == [len(x), len(x)]
        calls.clear()
        monkeypatch.setattr(bounds, "CROWN_CHUNK", 1)
        split, (lb_split, ub_split) = (bounder.margin_lower(x, y, EPS, "crown"),
                                       bounder.logit_bounds(x, EPS, "crown"))
        assert calls == [1] * (2 * len(x))
        calls.clear()
        bounder.margin_lower(x, y, EPS, "ibp")          # other methods: one call
        assert calls == [len(x)]
    for a, b in ((whole, split), (lb_whole, lb_split), (ub_whole, ub_split)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    calls.clear()
    module.train()
    bounder.margin_lower(x, y, EPS, "crown")
    assert len(x) in calls                               # train mode: the batch's statistics
