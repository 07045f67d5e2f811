"""Soundness of the patched auto_LiRPA bounds (toolchain.lirpa).

We patch a verifier, so we check it: sampled points of the eps-box (corners
included) never leave the bounds, IBP equals an interval pass written here in
plain torch, gradients reach every weight, and in-place weight changes (masks)
are seen by the next bound.
"""

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from toolchain.epsbox import eps_box
from toolchain.errors import VstError
from toolchain.lirpa import compat
from toolchain.lirpa.bounds import METHODS, Bounder, margin_matrix
from toolchain.models import layers as L
from toolchain.models.torch_build import Normalize, build_torch

EPS = 0.05
N = 4            # samples per batch
POINTS = 1000    # sampled points per sample: half box corners, half inside
TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is fastest, and on shared cores two threads can
    spin-wait each other into 30x slower alpha-CROWN runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomize_batchnorm(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(c, generator=gen) - 0.5)


def _net(name: str) -> L.Network:
    if name == "mlp":
        return L.Network((1, 6, 6), (L.Flatten(), L.Linear(36, 32), L.ReLU(),
                                     L.Linear(32, 32), L.ReLU(), L.Linear(32, 10)))
    if name == "cnn":
        return L.Network((2, 6, 6), (
            L.Normalize((0.5, 0.1), (0.25, 0.5)), L.Conv2d(2, 4, 3, 2, 1), L.BatchNorm(4),
            L.ReLU(), L.Conv2d(4, 4, 3, 1, 1), L.ReLU(), L.Flatten(), L.Linear(36, 16),
            L.BatchNorm(16), L.ReLU(), L.Linear(16, 10)))
    return L.Network((2, 12), (
        L.Normalize((0.5, 0.1), (0.25, 0.5)), L.Conv1d(2, 4, 3, 2, 1), L.BatchNorm(4),
        L.ReLU(), L.Conv1d(4, 4, 3, 1, 1), L.ReLU(), L.Flatten(), L.Linear(24, 5)))


def make_model(name: str, seed: int = 0):
    """(eval-mode torch module, input shape, inputs, labels), all seeded."""
    torch.manual_seed(seed)
    net = _net(name)
    module = build_torch(net)
    gen = torch.Generator().manual_seed(seed)
    _randomize_batchnorm(module, gen)
    module.eval()
    x = torch.rand((N,) + net.input_shape, generator=gen)
    y = torch.randint(0, net.num_classes, (N,), generator=gen)
    return module, net.input_shape, x, y


@pytest.fixture(scope="module", params=["mlp", "cnn", "conv1d"])
def case(request):
    module, shape, x, y = make_model(request.param)
    return request.param, module, Bounder(module, shape), x, y


def box_points(x, eps, seed=1):
    """(N, POINTS + 1, ...) points of the clipped box: corners, interior, and x."""
    lower, upper = eps_box(x, eps)
    gen = torch.Generator().manual_seed(seed)
    shape = (x.shape[0], POINTS // 2) + tuple(x.shape[1:])
    corners = torch.randint(0, 2, shape, generator=gen).float()
    inside = torch.rand(shape, generator=gen)
    t = torch.cat([corners, inside], dim=1)
    pts = lower.unsqueeze(1) + (upper - lower).unsqueeze(1) * t
    return torch.cat([pts, x.unsqueeze(1)], dim=1)


def outputs_at(module, pts):
    with torch.no_grad():
        return module(pts.flatten(0, 1)).view(pts.shape[0], pts.shape[1], -1)


# --- an independent interval pass (center / radius) ---------------------------

def interval_pass(module: nn.Sequential, lower, upper, C=None):
    """Interval arithmetic through the layers; with C, the last Linear is merged
    into C first (what IBP with a specification does)."""
    c, r = (upper + lower) / 2, (upper - lower) / 2
    layers = list(module)
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        if isinstance(layer, nn.Linear) and last and C is not None:
            w = C @ layer.weight                                   # (N, K-1, in)
            c = torch.einsum("nki,ni->nk", w, c) + C @ layer.bias
            r = torch.einsum("nki,ni->nk", w.abs(), r)
        elif isinstance(layer, nn.Linear):
            c, r = F.linear(c, layer.weight, layer.bias), F.linear(r, layer.weight.abs())
        elif isinstance(layer, (nn.Conv2d, nn.Conv1d)):
            conv = F.conv2d if isinstance(layer, nn.Conv2d) else F.conv1d
            c = conv(c, layer.weight, layer.bias, layer.stride, layer.padding)
            r = conv(r, layer.weight.abs(), None, layer.stride, layer.padding)
        elif isinstance(layer, nn.ReLU):
            lo, hi = F.relu(c - r), F.relu(c + r)
            c, r = (hi + lo) / 2, (hi - lo) / 2
        elif isinstance(layer, nn.Flatten):
            c, r = c.flatten(1), r.flatten(1)
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            view = (1, -1) + (1,) * (c.ndim - 2)
            scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
            c = (c - layer.running_mean.view(view)) * scale.view(view) + layer.bias.view(view)
            r = r * scale.abs().view(view)
        elif isinstance(layer, Normalize):
            c, r = (c - layer.mean) / layer.std, r / layer.std.abs()
        else:
            raise TypeError(type(layer))
    return c - r, c + r


# --- soundness -----------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_bounds_contain_sampled_outputs(case, method):
    name, module, bounder, x, y = case
    pts = box_points(x, EPS)
    out = outputs_at(module, pts)                                  # (N, P, K)
    margins = torch.einsum("nck,npk->npc", margin_matrix(y, out.shape[-1]), out)
    with torch.no_grad():
        lb, ub = bounder.logit_bounds(x, EPS, method)
        mlb = bounder.margin_lower(x, y, EPS, method)
    assert lb.shape == ub.shape == (N, out.shape[-1])
    assert mlb.shape == (N, out.shape[-1] - 1)
    assert (lb.unsqueeze(1) <= out + TOL).all(), f"{name}/{method}: lower bound violated"
    assert (ub.unsqueeze(1) >= out - TOL).all(), f"{name}/{method}: upper bound violated"
    assert (mlb.unsqueeze(1) <= margins + TOL).all(), f"{name}/{method}: margin violated"
    # Not vacuous: the box is wide enough that the bounds are strictly loose.
    assert float((ub - lb).min()) > 0


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_intermediate_bounds_contain_sampled_preactivations(case, method, monkeypatch):
    """CROWN's own pre-activation bounds (the ReLU inputs) are sound too; they
    are where conv "patches" and the Normalize mend are used. (Read off
    auto_LiRPA after one call on the whole batch, so CROWN is not split.)"""
    from auto_LiRPA.operators import BoundRelu

    from toolchain.lirpa import bounds

    monkeypatch.setattr(bounds, "CROWN_CHUNK", N)
    name, module, bounder, x, y = case
    with torch.no_grad():
        bounder.margin_lower(x, y, EPS, method)
    relus = [n for n in bounder._bounded.modules() if isinstance(n, BoundRelu)]
    cuts = [i for i, layer in enumerate(module) if isinstance(layer, nn.ReLU)]
    assert len(relus) == len(cuts) >= 2
    pts = box_points(x, EPS)
    for node, cut in zip(relus, cuts):
        pre = outputs_at(module[:cut], pts)                          # (N, P, features)
        lower = node.inputs[0].lower.reshape(N, 1, -1)
        upper = node.inputs[0].upper.reshape(N, 1, -1)
        assert (lower <= pre + TOL).all() and (upper >= pre - TOL).all(), f"{name}: ReLU at {cut}"


def test_ibp_equals_independent_interval_pass(case):
    name, module, bounder, x, y = case
    lower, upper = eps_box(x, EPS)
    with torch.no_grad():
        lb, ub = bounder.logit_bounds(x, EPS, "ibp")
        mlb = bounder.margin_lower(x, y, EPS, "ibp")
        ref_lb, ref_ub = interval_pass(module, lower, upper)
        ref_mlb, _ = interval_pass(module, lower, upper, margin_matrix(y, lb.shape[1]))
    torch.testing.assert_close(lb, ref_lb, atol=TOL, rtol=0)
    torch.testing.assert_close(ub, ref_ub, atol=TOL, rtol=0)
    torch.testing.assert_close(mlb, ref_mlb, atol=TOL, rtol=0)


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_eps_zero_gives_the_clean_output(case, method):
    name, module, bounder, x, y = case
    with torch.no_grad():
        clean = module(x)
        lb, ub = bounder.logit_bounds(x, 0.0, method)
        mlb = bounder.margin_lower(x, y, 0.0, method)
    torch.testing.assert_close(lb, clean, atol=TOL, rtol=0)
    torch.testing.assert_close(ub, clean, atol=TOL, rtol=0)
    torch.testing.assert_close(mlb, torch.einsum("nck,nk->nc", margin_matrix(y, clean.shape[1]), clean),
                               atol=TOL, rtol=0)


def test_crown_tighter_than_ibp_and_alpha_not_looser_on_mlp():
    module, shape, x, y = make_model("mlp")
    bounder = Bounder(module, shape)
    with torch.no_grad():
        ibp_lb, ibp_ub = bounder.logit_bounds(x, EPS, "ibp")
        crown_lb, crown_ub = bounder.logit_bounds(x, EPS, "crown")
        crown_m = bounder.margin_lower(x, y, EPS, "crown")
    alpha_m = bounder.margin_lower(x, y, EPS, "alpha-crown")
    assert float((crown_ub - crown_lb).mean()) < float((ibp_ub - ibp_lb).mean())
    assert float(alpha_m.mean()) >= float(crown_m.mean()) - TOL


def test_train_mode_batchnorm_uses_clean_batch_statistics():
    module, shape, x, y = make_model("cnn")
    bounder = Bounder(module, shape)
    before = [b.clone() for b in module.buffers()]
    module.train()
    with torch.no_grad():
        lb, ub = bounder.logit_bounds(x, EPS, "ibp")
        mlb = bounder.margin_lower(x, y, EPS, "crown-ibp")
    # The same function with the clean batch's statistics frozen (biased variance).
    frozen = copy.deepcopy(module).eval()
    h = x
    with torch.no_grad():
        for layer, twin in zip(module, frozen):
            if isinstance(twin, nn.modules.batchnorm._BatchNorm):
                dims = [0] + list(range(2, h.ndim))
                twin.running_mean.copy_(h.mean(dims))
                twin.running_var.copy_(h.var(dims, unbiased=False))
            h = twin(h)
    module.eval()
    assert all(torch.equal(a, b) for a, b in zip(before, module.buffers())), "bounds moved running stats"
    ref_lb, ref_ub = interval_pass(frozen, *eps_box(x, EPS))
    torch.testing.assert_close(lb, ref_lb, atol=TOL, rtol=0)
    torch.testing.assert_close(ub, ref_ub, atol=TOL, rtol=0)
    out = outputs_at(frozen, box_points(x, EPS))
    margins = torch.einsum("nck,npk->npc", margin_matrix(y, out.shape[-1]), out)
    assert (mlb.unsqueeze(1) <= margins + TOL).all()


# --- gradients, parameter sharing, masks -----------------------------------------

@pytest.mark.parametrize("name", ["mlp", "cnn", "conv1d"])
@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_gradients_reach_every_weight(name, method):
    module, shape, x, y = make_model(name)
    module.train()
    bounder = Bounder(module, shape)
    loss = F.softplus(-bounder.margin_lower(x, y, 0.1, method)).sum()
    loss.backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None, f"{name}/{method}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}/{method}: non-finite gradient for {pname}"
        assert float(p.grad.abs().sum()) > 0, f"{name}/{method}: zero gradient for {pname}"


@pytest.mark.parametrize("name", ["mlp", "cnn", "conv1d"])
def test_ibp_gradients_equal_those_of_the_independent_pass(name):
    module, shape, x, y = make_model(name)
    bounder = Bounder(module, shape)
    weights = torch.linspace(0.5, 1.5, 9)[: bounder.num_classes - 1]

    def grads(margin_lower):
        module.zero_grad()
        (margin_lower * weights).sum().backward()
        return {n: p.grad.clone() for n, p in module.named_parameters()}

    ours = grads(bounder.margin_lower(x, y, EPS, "ibp"))
    ref = grads(interval_pass(module, *eps_box(x, EPS), margin_matrix(y, bounder.num_classes))[0])
    for pname in ref:
        torch.testing.assert_close(ours[pname], ref[pname], atol=1e-4, rtol=1e-4, msg=pname)


@pytest.mark.parametrize("name", ["mlp", "cnn", "conv1d"])
def test_crown_ibp_gradients_match_finite_differences(name):
    """In float64, the directional derivative along a random direction of each
    weight tensor equals the central difference of the mixed bound."""
    module, shape, x, y = make_model(name)
    module, x = module.double(), x.double()
    bounder = Bounder(module, shape)

    def loss():
        return bounder.mixed_margin_lower(x, y, EPS, 0.7).sum()

    loss().backward()
    gen, h = torch.Generator().manual_seed(0), 1e-6
    for pname, p in module.named_parameters():
        d = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            p.add_(h * d)
            up = float(loss())
            p.sub_(2 * h * d)
            down = float(loss())
            p.add_(h * d)
        analytic = float((p.grad * d).sum())
        assert analytic == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8), pname


def test_mixed_margin_lower_blends_ibp_and_crown_ibp():
    module, shape, x, y = make_model("cnn")
    bounder = Bounder(module, shape)
    with torch.no_grad():
        ibp = bounder.margin_lower(x, y, EPS, "ibp")
        crown_ibp = bounder.margin_lower(x, y, EPS, "crown-ibp")
        torch.testing.assert_close(bounder.mixed_margin_lower(x, y, EPS, 0.0), ibp)
        torch.testing.assert_close(bounder.mixed_margin_lower(x, y, EPS, 1.0), crown_ibp)
        torch.testing.assert_close(bounder.mixed_margin_lower(x, y, EPS, 0.3),
                                   0.3 * crown_ibp + 0.7 * ibp, atol=TOL, rtol=0)
    assert not torch.allclose(ibp, crown_ibp)


@pytest.mark.parametrize("name", ["mlp", "conv1d"])
def test_in_place_masks_are_seen_by_the_bounds(name):
    module, shape, x, y = make_model(name)
    bounder = Bounder(module, shape)
    with torch.no_grad():
        before = bounder.margin_lower(x, y, EPS, "crown-ibp")
        gen = torch.Generator().manual_seed(3)
        for p in module.parameters():
            if p.ndim > 1:
                p.mul_((torch.rand(p.shape, generator=gen) < 0.3).float())
        after = bounder.margin_lower(x, y, EPS, "crown-ibp")
        fresh = Bounder(copy.deepcopy(module), shape).margin_lower(x, y, EPS, "crown-ibp")
        lb, ub = bounder.logit_bounds(x, 0.0, "ibp")
        clean = module(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh, atol=TOL, rtol=0)
    torch.testing.assert_close(lb, clean, atol=TOL, rtol=0)
    # alpha-CROWN on the masked net (the case that needs dense feature alphas)
    alpha = bounder.margin_lower(x, y, EPS, "alpha-crown")
    out = outputs_at(module, box_points(x, EPS))
    margins = torch.einsum("nck,npk->npc", margin_matrix(y, out.shape[-1]), out)
    assert (alpha.unsqueeze(1) <= margins + TOL).all()
    assert float(alpha.mean()) >= float(after.mean()) - TOL   # not looser than CROWN-IBP


def test_buffers_and_replaced_parameters_are_synced():
    module, shape, x, y = make_model("cnn")
    bounder = Bounder(module, shape)
    with torch.no_grad():
        before = bounder.margin_lower(x, y, EPS, "crown")
        module[2].running_mean.add_(0.3)                        # BatchNorm buffer, in place
        module[1].weight = nn.Parameter(module[1].weight * -1.0)  # a new Parameter object
        after = bounder.margin_lower(x, y, EPS, "crown")
        fresh = Bounder(copy.deepcopy(module), shape).margin_lower(x, y, EPS, "crown")
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh, atol=TOL, rtol=0)


def test_bounds_leave_requires_grad_and_grad_alone():
    module, shape, x, y = make_model("mlp")
    bounder = Bounder(module, shape)
    module[1].bias.requires_grad_(False)                       # the user's choice
    bounder.margin_lower(x, y, EPS, "crown")                   # eval mode
    bounder.margin_lower(x, y, EPS, "alpha-crown")
    flags = {n: p.requires_grad for n, p in module.named_parameters()}
    assert flags.pop("1.bias") is False and all(flags.values())
    assert all(p.grad is None for p in module.parameters()), "alpha-CROWN wrote .grad"


# --- API details -----------------------------------------------------------------

def test_margin_matrix_gives_true_minus_other_logits():
    logits = torch.tensor([[1.0, 5.0, -2.0, 0.5], [3.0, 0.0, 1.0, 2.0]])
    y = torch.tensor([1, 3])
    margins = torch.einsum("nck,nk->nc", margin_matrix(y, 4), logits)
    expected = torch.tensor([[4.0, 7.0, 4.5], [-1.0, 2.0, 1.0]])
    torch.testing.assert_close(margins, expected)
    with pytest.raises(VstError):
        margin_matrix(torch.tensor([4]), 4)


def test_verified_needs_every_margin_positive():
    verdict = Bounder.verified(torch.tensor([[0.1, 0.2], [0.1, 0.0], [-1.0, 2.0]]))
    assert verdict.tolist() == [True, False, False]


def test_bad_arguments_are_user_errors(case):
    name, module, bounder, x, y = case
    with pytest.raises(VstError, match="eps"):
        bounder.margin_lower(x, y, -0.1, "ibp")
    with pytest.raises(VstError, match="method"):
        bounder.logit_bounds(x, EPS, "zonotope")
    with pytest.raises(VstError, match="shape"):
        bounder.logit_bounds(x[..., :-1], EPS, "ibp")


# --- the compatibility layer itself -----------------------------------------------

def test_ensure_patched_is_idempotent():
    compat.ensure_patched()
    from auto_LiRPA import BoundedModule
    from auto_LiRPA.operators.bivariate import BoundMul
    from auto_LiRPA.operators.convolution import BoundConv
    from auto_LiRPA import bound_general

    state = (BoundedModule._named_members, BoundMul.__dict__["_multiply_by_const"].__func__,
             BoundConv.__init__, bound_general.parse_module, torch._C.Node.__getitem__)
    compat._patched = False                                     # force a second pass
    compat.ensure_patched()
    compat.ensure_patched()
    again = (BoundedModule._named_members, BoundMul.__dict__["_multiply_by_const"].__func__,
             BoundConv.__init__, bound_general.parse_module, torch._C.Node.__getitem__)
    assert state == again, "a second ensure_patched wrapped something twice"
    module, shape, x, y = make_model("mlp")
    with torch.no_grad():
        lb, ub = Bounder(module, shape).logit_bounds(x, 0.0, "crown")
    torch.testing.assert_close(lb, module(x), atol=TOL, rtol=0)


def test_importing_compat_changes_nothing_and_patching_leaks_no_shims():
    code = (
        "import sys, torch, numpy\n"
        "from torch.onnx._internal.torchscript_exporter._globals import GLOBALS\n"
        "import torch.onnx.symbolic_helper as h\n"
        "opset = GLOBALS.export_onnx_opset_version\n"
        "def jit_state():\n"
        "    ex = torch._C._jit_set_profiling_executor(True)\n"
        "    torch._C._jit_set_profiling_executor(ex)\n"
        "    mode = torch._C._jit_set_profiling_mode(True)\n"
        "    torch._C._jit_set_profiling_mode(mode)\n"
        "    return ex, mode\n"
        "jit = jit_state()\n"
        "import warnings\n"
        "filters = list(warnings.filters)\n"
        "import toolchain.lirpa.compat as c\n"
        "assert 'auto_LiRPA' not in sys.modules\n"
        "assert not hasattr(torch._C.Node, '__getitem__')\n"
        "from toolchain.lirpa.bounds import Bounder\n"
        "Bounder(torch.nn.Sequential(torch.nn.Linear(3, 2)), (3,))\n"
        "assert 'auto_LiRPA' in sys.modules and hasattr(torch._C.Node, '__getitem__')\n"
        "assert 'numpy.lib.arraysetops' not in sys.modules\n"
        "assert not hasattr(h, '_set_opset_version')\n"
        "assert GLOBALS.export_onnx_opset_version == opset, GLOBALS.export_onnx_opset_version\n"
        "assert jit_state() == jit, (jit_state(), jit)\n"
        "assert warnings.filters == filters, 'auto_LiRPA changed the warning filters'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
