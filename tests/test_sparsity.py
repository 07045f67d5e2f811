import pytest
import torch

from toolchain.models.torch_build import build_torch
from toolchain.models.zoo import build_network
from toolchain.sparsity.budget import allocate
from toolchain.sparsity.groups import channel_groups
from toolchain.sparsity.masks import Sparsifier
from toolchain.train.schedule import Schedule

SHAPES = [(16, 1, 4, 4), (32, 16, 4, 4), (100, 1568), (10, 100)]
SIZES = [256, 8192, 156800, 1000]


@pytest.mark.parametrize("density", [0.01, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("dist", ["erk", "uniform"])
def test_unstructured_budget_is_exact(density, dist):
    kept = allocate(SIZES, [1] * 4, density, dist, SHAPES)
    assert sum(kept) == round(density * sum(SIZES))
    assert all(1 <= k <= n for k, n in zip(kept, SIZES))


def test_erk_favours_small_layers_and_floors_first_last():
    kept = allocate(SIZES, [1] * 4, 0.05, "erk", SHAPES)
    dens = [k / n for k, n in zip(kept, SIZES)]
    assert dens[0] > dens[2] and dens[0] > dens[1]
    erk = [sum(s) / (s[0] * s[1] * (s[2] * s[3] if len(s) == 4 else 1)) for s in SHAPES]
    assert dens[1] / dens[2] == pytest.approx(erk[1] / erk[2], rel=0.01)   # ERK ratio
    assert dens[0] >= 0.3 and dens[3] >= 0.3


def test_channel_groups_through_flatten_and_bn():
    net = build_network("cnn_small", (1, 8, 8), 3, channels=[2, 4], widths=[5], batchnorm=True)
    groups = channel_groups(net)
    assert [(g.layer, g.rows, g.batchnorms, g.consumers) for g in groups] == \
        [(0, (0,), (1,), ((3, 1),)), (3, (3,), (4,), ((7, 4),)), (7, (7,), (8,), ((10, 1),))]


@pytest.mark.parametrize("mode", ["structured", "unstructured"])
def test_density_constant_through_updates(mode):
    net = build_network("cnn_small", (1, 16, 16), 4, channels=[6, 8], widths=[12], batchnorm=True)
    module = build_torch(net)
    sp = Sparsifier(net, mode, 0.3, "erk", torch.Generator().manual_seed(0))
    sp.apply(module)
    d0, per_layer = sp.kept_weights(), {k: int(m.sum()) for k, m in sp.unit_masks.items()}
    assert abs(sp.density() - 0.3) < 0.05
    gen = torch.Generator().manual_seed(1)
    moved = 0
    for _ in range(5):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        scores = {k: torch.rand(len(m), generator=gen) for k, m in sp.unit_masks.items()}
        moved += sp.update(module, 0.5, "rigl", gen, scores)
        sp.apply(module)
        assert sp.kept_weights() == d0
        assert {k: int(m.sum()) for k, m in sp.unit_masks.items()} == per_layer
        nonzero = sum(int((dict(module.named_parameters())[n] != 0).sum())
                      for n in sp.param_masks() if n.endswith("weight") and
                      int(n.split(".")[0]) in sp.layers)
        assert nonzero <= d0
    assert moved > 0


def test_structured_pruned_channel_outputs_exactly_zero():
    net = build_network("cnn_small", (1, 16, 16), 4, channels=[6, 8], widths=[12], batchnorm=True)
    module = build_torch(net)
    sp = Sparsifier(net, "structured", 0.3, "erk", torch.Generator().manual_seed(0))
    with torch.no_grad():   # make BN non-trivial so only the mask can zero it
        for name, p in module.named_parameters():
            p.add_(1.0)
    sp.apply(module)
    x = torch.rand(5, 1, 16, 16)
    for mode in (module.train, module.eval):
        mode()
        h = module[:3](x)             # conv -> BN -> ReLU
        dead = ~sp.unit_masks[0]
        assert dead.any()
        assert torch.equal(h[:, dead], torch.zeros_like(h[:, dead]))
        assert (h[:, sp.unit_masks[0]] != 0).any()


def test_drop_fraction_cosine_and_freeze():
    s = Schedule(total=100, warmup=0, ramp=0, eps_max=0.1, drop_fraction=0.3,
                 freeze_fraction=0.25)
    assert s.drop(0) == pytest.approx(0.3)
    assert s.drop(37) == pytest.approx(0.15, abs=0.01)
    assert s.drop(74) > 0 and s.drop(75) == 0 and s.drop(99) == 0
    assert all(s.drop(i) >= s.drop(i + 1) for i in range(99))


def test_eps_beta_kappa_lr_schedules():
    s = Schedule(total=100, warmup=10, ramp=40, eps_max=0.2, kappa_end=0.3, lr=1.0,
                 lr_decay_at=(0.5, 0.9), lr_decay_factor=0.1)
    eps = [s.eps(i) for i in range(100)]
    assert eps[:10] == [0.0] * 10 and eps[50:] == [0.2] * 50
    assert all(a <= b for a, b in zip(eps, eps[1:]))
    steps = [b - a for a, b in zip(eps[10:50], eps[11:51])]
    assert steps[2] < steps[5] < steps[20]     # slow start (exponential part), then linear
    assert s.beta(10) == 1.0 and s.beta(50) == 0.0 and s.kappa(60) == pytest.approx(0.3)
    assert (s.learning_rate(0), s.learning_rate(50), s.learning_rate(95)) == \
        (1.0, pytest.approx(0.1), pytest.approx(0.01))
