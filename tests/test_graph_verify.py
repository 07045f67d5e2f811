"""Verification of graph networks (residual Add, depthwise conv, avg / max / global
pooling; 1-D and 2-D) through the whole cascade: bounds, PGD, the MILP, the
certificate and its checker, and `vst verify` on a graph model file.

Soundness first: every bound (and the MILP's big-M bounds) contains 1,000
sampled points per sample; the MILP never verifies what a dense grid over a
two-dimensional box falsifies; PGD never breaks a verified sample.
"""

import json

import numpy as np
import pytest
import torch

from helpers import assert_one_line, random_model, resum
from test_lirpa_soundness import TOL, box_points, one_thread, outputs_at  # noqa: F401
from toolchain.lirpa.bounds import METHODS, Bounder
from toolchain.lirpa.splits import refusal
from toolchain.models import layers as L
from toolchain.verify.affine_program import read_program
from toolchain.verify.complete import classification_spec, decide
from toolchain.verify.milp import MilpEncoding
from toolchain.verify.spec_attack import unsafe_at

C2, C1 = L.Conv2d, L.Conv1d
NETS = {
    # identity shortcut around conv-BN-ReLU-conv-BN, then average pooling
    "residual": L.Network((2, 6, 6), (
        C2(2, 4, 3, 1, 1), L.BatchNorm(4), L.ReLU(), C2(4, 4, 3, 1, 1), L.BatchNorm(4), L.Add(),
        L.ReLU(), L.AvgPool2d(2), L.Flatten(), L.Linear(36, 3)),
        ((-1,), (0,), (1,), (2,), (3,), (2, 4), (5,), (6,), (7,), (8,))),
    "depthwise_gap": L.Network((3, 6, 6), (
        C2(3, 3, 3, 1, 1, groups=3), L.ReLU(), C2(3, 6, 1), L.ReLU(), L.GlobalAvgPool(),
        L.Linear(6, 3))),
    "avgpool_pad": L.Network((2, 7, 7), (
        C2(2, 4, 3), L.ReLU(), L.AvgPool2d(3, 2, 1), C2(4, 4, 3, 1, 1, groups=2), L.ReLU(),
        L.Flatten(), L.Linear(36, 3))),
    "maxpool": L.Network((2, 6, 6), (                 # CROWN bounds it, alpha-CROWN not
        C2(2, 4, 3, 1, 1), L.ReLU(), L.MaxPool2d(2), C2(4, 4, 3, 1, 1), L.ReLU(), L.Flatten(),
        L.Linear(36, 3))),
    "maxpool_residual": L.Network((2, 6, 6), (        # max pooling feeds an Add and a conv
        C2(2, 4, 3, 1, 1), L.ReLU(), L.MaxPool2d(2), C2(4, 4, 3, 1, 1), L.ReLU(), L.Add(),
        L.GlobalAvgPool(), L.Linear(4, 3)),
        ((-1,), (0,), (1,), (2,), (3,), (2, 4), (5,), (6,))),
    "maxpool_overlap": L.Network((2, 6, 6), (         # IBP only; pools pre-activations
        C2(2, 4, 3, 1, 1), L.MaxPool2d(3, 2, 1), L.ReLU(), L.Flatten(), L.Linear(36, 3))),
    "signal_residual_max": L.Network((2, 12), (       # 1-D max pooling: IBP only
        C1(2, 4, 3, 1, 1), L.ReLU(), C1(4, 4, 3, 1, 1, groups=4), L.Add(), L.ReLU(),
        L.MaxPool1d(2), L.GlobalAvgPool(), L.Linear(4, 3)),
        ((-1,), (0,), (1,), (0, 2), (3,), (4,), (5,), (6,))),
    "signal_avg_gap": L.Network((2, 12), (
        L.Normalize((0.5,), (0.5,)), C1(2, 4, 3, 2, 1), L.BatchNorm(4), L.ReLU(),
        L.AvgPool1d(3, 1, 1), C1(4, 4, 1), L.ReLU(), L.GlobalAvgPool(), L.Linear(4, 3))),
}
EPS = 0.05


def _module(name, seed=0):
    model = random_model(NETS[name], seed)
    module = model.torch_module().eval()
    with torch.no_grad():                  # weights large enough for unstable ReLUs
        for p in module.parameters():
            if p.dim() > 1:
                p.mul_(2.0)
        last = module._modules[str(len(NETS[name].layers) - 1)]
        last.bias -= module(_inputs(name, 256, seed=99)).mean(0)    # every class wins somewhere
    return module


def _inputs(name, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n,) + NETS[name].input_shape, generator=gen)


@pytest.mark.parametrize("name", sorted(NETS))
def test_the_milp_program_computes_the_network(name):
    module = _module(name)
    prog = read_program(module, NETS[name].input_shape)
    x = _inputs(name, 8).double()
    with torch.no_grad():
        want = module.double()(x).numpy()
    got = np.stack([prog.evaluate(xi.numpy())[1] for xi in x])
    np.testing.assert_allclose(got, want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", sorted(NETS))
def test_every_bound_and_the_milp_big_m_contain_1000_sampled_points(name):
    module, shape = _module(name), NETS[name].input_shape
    bounder = Bounder(module, shape)
    x = _inputs(name, 3)
    pts = box_points(x, EPS)                             # (3, 1001, ...)
    out = outputs_at(module, pts)
    methods = [m for m in METHODS if m not in bounder.refused]
    assert "ibp" in methods and len(methods) >= 2 - ("crown" in bounder.refused)
    for method in methods:
        with torch.no_grad():
            lb, ub = bounder.logit_bounds(x, EPS, method)
        assert (lb.unsqueeze(1) <= out + TOL).all(), f"{method}: lower bound violated"
        assert (ub.unsqueeze(1) >= out - TOL).all(), f"{method}: upper bound violated"
    best = "crown" if "crown" not in bounder.refused else "ibp"
    prog = read_program(module, shape)
    for i in range(len(x)):
        lower, upper = (x[i] - EPS).clamp(min=0), (x[i] + EPS).clamp(max=1)
        _, relus = bounder.box_bounds(lower, upper, torch.eye(3)[:1], best)
        enc = MilpEncoding(prog, lower.numpy(), upper.numpy(), relus)
        assert not enc.trouble
        for p in pts[i].double().numpy():
            pres, y = prog.evaluate(p)
            for z, (lo, hi) in zip(pres, enc.bounds):
                assert np.all(z >= lo) and np.all(z <= hi), "a big-M bound is violated"


# -- the MILP against a dense grid over a two-dimensional box ----------------------

GRID = 101


def _slice_properties(module, shape, seed):
    """Boxes that are a point but for two input coordinates, each with two
    classification-margin properties: thresholds just below the least margin
    the grid sees (safe, or barely not) and at its 2% quantile (unsafe).
    Yields ``(lower, upper, disjuncts, grid_outputs)``."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    for _ in range(2):
        x0 = rng.uniform(0, 1, n).astype(np.float32)
        free = rng.choice(n, 2, replace=False)
        centre = rng.uniform(0.3, 0.7, 2)
        lower, upper = x0.copy(), x0.copy()
        lower[free], upper[free] = centre - 0.25, centre + 0.25
        axes = [np.linspace(lower[f], upper[f], GRID, dtype=np.float32) for f in free]
        uv = np.stack(np.meshgrid(*axes), -1).reshape(-1, 2)
        pts = np.repeat(x0[None], len(uv), 0)
        pts[:, free[0]], pts[:, free[1]] = uv[:, 0], uv[:, 1]
        with torch.no_grad():
            ys = module(torch.from_numpy(pts).reshape((-1,) + shape)).double().numpy()
            label = int(module(torch.from_numpy(x0).reshape((1,) + shape)).argmax())
        rows = np.concatenate([a for a, _ in classification_spec(label, ys.shape[1])])
        margins = ys @ rows.T
        below = margins.min(0) - 0.05 * (margins.max(0) - margins.min(0)) - 1e-3
        for c in (below, np.quantile(margins, 0.02, axis=0)):
            yield lower, upper, [(r[None], c[j:j + 1]) for j, r in enumerate(rows)], ys


def _check_against_grid(module, shape, lower, upper, spec, ys, d):
    unsafe = any(bool(np.all(ys @ a.T <= c, axis=1).any()) for a, c in spec)
    if d.status == "verified":
        assert not unsafe, f"verified by {d.procedure}, a grid point is unsafe"
    if d.status == "falsified":
        assert unsafe_at(module, d.counterexample, shape, lower, upper, spec)
    if unsafe:
        assert d.status == "falsified"


@pytest.mark.parametrize("name", sorted(NETS))
def test_milp_is_sound_and_complete_against_a_dense_grid(name):
    module, shape = _module(name, seed=1), NETS[name].input_shape
    verdicts, binaries = set(), 0
    for seed in range(2):
        for lower, upper, spec, ys in _slice_properties(module, shape, seed):
            d = decide(module, shape, lower, upper, spec, timeout=20, cheap=False,
                       procedure="milp")
            assert d.status in ("verified", "falsified"), d.reason      # tiny: decided
            assert d.procedure == "milp"
            _check_against_grid(module, shape, lower, upper, spec, ys, d)
            verdicts.add(d.status)
            # branch and bound (where CROWN bounds the net) agrees, alone and in the cascade
            bab = decide(module, shape, lower, upper, spec, timeout=20, cheap=False)
            assert bab.status == d.status, bab.reason
            assert bab.procedure == ("milp" if refusal(Bounder(module, shape)) else "bab")
            _check_against_grid(module, shape, lower, upper, spec, ys, bab)
            full = decide(module, shape, lower, upper, spec, timeout=20)
            assert full.status == d.status, (full.procedure, full.reason)
            binaries += MilpEncoding(read_program(module, shape), lower, upper).pool_binaries
    assert verdicts == {"verified", "falsified"}
    if "maxpool" in name:
        assert binaries > 0, "no max-pool window needed a binary: the encoding went untested"


def _tiny_pool_net(seed):
    pool = [L.MaxPool2d(2), L.MaxPool2d(3, 1, 1), L.MaxPool2d(2, 1)][seed % 3]
    side = pool.out_shape((3, 4, 4))[1]
    net = L.Network((1, 4, 4), (C2(1, 3, 3, 1, 1), pool, L.ReLU(), L.Flatten(),
                                L.Linear(3 * side * side, 3)))
    return random_model(net, seed).torch_module().eval(), net.input_shape


@pytest.mark.parametrize("seed", range(12))
def test_max_pool_encoding_on_many_random_nets(seed):
    module, shape = _tiny_pool_net(seed)
    for lower, upper, spec, ys in _slice_properties(module, shape, seed):
        d = decide(module, shape, lower, upper, spec, timeout=20, cheap=False,
                   procedure="milp")
        assert d.status in ("verified", "falsified"), d.reason
        _check_against_grid(module, shape, lower, upper, spec, ys, d)


@pytest.mark.parametrize("name, eps_list, deciders", [
    ("residual", (0.01, 0.04), {"crown", "pgd"}),
    ("signal_avg_gap", (0.005, 0.05), {"crown", "pgd"}),
    ("maxpool", (0.005,), {"crown"})])
def test_milp_agrees_with_crown_and_pgd_where_they_decide(name, eps_list, deciders):
    from toolchain.verify.spec_attack import spec_pgd

    module, shape = _module(name, seed=2), NETS[name].input_shape
    bounder = Bounder(module, shape)
    x = _inputs(name, 4, seed=2)
    with torch.no_grad():
        y = module(x).argmax(1)
    seen = set()
    for eps in eps_list:
        with torch.no_grad():
            crown_ok = bounder.verified(bounder.margin_lower(x, y, eps, "crown"))
        for i in range(len(x)):
            lower, upper = (x[i] - eps).clamp(min=0).numpy(), (x[i] + eps).clamp(max=1).numpy()
            spec = classification_spec(int(y[i]), 3)
            d = decide(module, shape, lower, upper, spec, timeout=20, cheap=False,
                       bounder=bounder, procedure="milp")
            assert d.procedure == "milp"
            adv = spec_pgd(module, shape, lower, upper, spec, seed=i)
            if bool(crown_ok[i]):
                assert d.status == "verified", d.reason
                seen.add("crown")
            if adv is not None:
                assert d.status == "falsified", d.reason
                seen.add("pgd")
    assert seen == deciders


# -- the cascade, the certificate and the CLI ---------------------------------------

@pytest.mark.parametrize("name", sorted(NETS))
def test_cascade_all_runs_and_pgd_never_breaks_a_verified_sample(name):
    from toolchain.verify.attack import AttackConfig, in_box, pgd
    from toolchain.verify.engine import verify_samples

    module, shape = _module(name, seed=3), NETS[name].input_shape
    bounder = Bounder(module, shape)
    x = _inputs(name, 8, seed=3)
    with torch.no_grad():
        y = module(x).argmax(1)
    y[0] = (y[0] + 1) % 3                                   # one misclassified sample
    res = verify_samples(module, bounder, x, y, 0.03, "all", timeout=20)
    assert {s.method for s in res.samples} <= {"clean", "ibp", "crown", "alpha-crown", "pgd",
                                                "bab", "milp"}
    assert not {s.method for s in res.samples} & set(bounder.refused)
    assert res.samples[0].method == "clean"
    assert res.count("unknown") == 0, [s.method for s in res.samples]
    for s in res.samples:
        if s.counterexample is not None:
            adv = s.counterexample[None]
            assert bool(in_box(adv, x[s.index:s.index + 1], 0.03))
            assert int(module(adv).argmax()) != s.label
    verified = torch.tensor([s.verdict == "verified" for s in res.samples])
    if verified.any():
        found, _ = pgd(module, x[verified], y[verified], 0.03,
                       AttackConfig(steps=100, restarts=10, seed=5))
        assert not found.any(), "a strong PGD broke a verified sample"
    ibp = verify_samples(module, bounder, x, y, 0.03, "ibp")
    for a, b in zip(res.samples, ibp.samples):
        assert {a.verdict, b.verdict} != {"verified", "falsified"}


@pytest.fixture(scope="module")
def graph_files(tmp_path_factory):
    """A residual net with max pooling (CROWN but no alpha-CROWN) saved as a model
    file, and a data set whose labels are its own predictions but one."""
    from toolchain.models.modelfile import VstModel, save_model

    root = tmp_path_factory.mktemp("graph")
    net = L.Network((1, 8, 8), (
        C2(1, 4, 3, 1, 1), L.ReLU(), C2(4, 4, 3, 1, 1, groups=4), L.ReLU(), L.Add(),
        L.MaxPool2d(2), C2(4, 8, 1), L.ReLU(), L.GlobalAvgPool(), L.Linear(8, 3)),
        ((-1,), (0,), (1,), (2,), (1, 3), (4,), (5,), (6,), (7,), (8,)))
    module = random_model(net, seed=7).torch_module().eval()
    x = torch.rand((24, 1, 8, 8), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():                    # every class wins somewhere, unstable ReLUs
        for p in module.parameters():
            if p.dim() > 1:
                p.mul_(3.0)
        module._modules["9"].bias -= module(x).mean(0)
        y = module(x).argmax(1).numpy()
    model = VstModel(net, {k: v.detach().clone() for k, v in module.state_dict().items()})
    y[5] = (y[5] + 1) % 3
    np.savez(root / "d.npz", x=x.numpy(), y=y, x_test=x.numpy(), y_test=y)
    save_model(root / "m.vst", model)
    return root


def _vst(*args):
    """``vst -q ARGS`` in process: (exit code, output)."""
    from click.testing import CliRunner

    from toolchain.cli import cli

    out = CliRunner().invoke(cli, ["-q", *map(str, args)])
    return out.exit_code, out.output


def test_vst_verify_a_graph_model_file_and_check_its_certificate(graph_files):
    root = graph_files
    common = ("--data", root / "d.npz")
    code, out = _vst("verify", root / "m.vst", *common, "--eps", "0.01", "--method", "all",
                     "--timeout", "20", "--json", root / "c.json")
    assert code == 0, out
    cert = json.loads((root / "c.json").read_text())
    res = cert["results"][0]
    assert res["n"] == 24 and res["counts"]["unknown"] == 0
    complete = res["verified_by"].get("bab", 0) + res["verified_by"].get("milp", 0)
    assert complete >= 1 and res["counts"]["falsified"] >= 2
    assert "alpha-crown" not in res["verified_by"]               # refused for max pooling
    code, out = _vst("verify", root / "m.vst", *common, "--certificate", root / "c.json")
    assert code == 0 and "re-checked" in out, out
    # forgeries: a falsified sample claimed verified by the MILP, and a claim by a
    # method that cannot bound max pooling
    for method in ("milp", "alpha-crown"):
        forged = json.loads((root / "c.json").read_text())
        r = forged["results"][0]
        target = next(s for s in r["samples"] if s["verdict"] == "falsified"
                      and s["method"] != "clean")
        target.update(verdict="verified", method=method)
        target.pop("counterexample", None)
        if method != "milp":
            target["margin_lower"] = [1.0, 1.0]
        resum(forged)
        (root / "f.json").write_text(json.dumps(forged))
        code, out = _vst("verify", root / "m.vst", *common, "--certificate", root / "f.json")
        assert_one_line(code, out, 1, "does not re-check")


def test_refused_methods_are_one_line_errors_from_the_cli(graph_files):
    root = graph_files
    code, out = _vst("verify", root / "m.vst", "--data", root / "d.npz", "--eps", "0.01",
                     "--method", "alpha-crown")
    assert_one_line(code, out, 2, "alpha-crown cannot bound max pooling")


def test_complete_alone_where_crown_is_refused_and_its_certificate(tmp_path):
    """1-D max pooling: no CROWN, so decide() proves with IBP and the MILP (interval
    big-M values alone); the certificate of `--method complete` re-checks."""
    from toolchain.data import load_dataset
    from toolchain.models.modelfile import VstModel
    from toolchain.verify.certificate import build_certificate, check_certificate
    from toolchain.verify.engine import verify_samples

    name = "signal_residual_max"
    module, shape = _module(name, seed=4), NETS[name].input_shape
    bounder = Bounder(module, shape)
    assert "crown" in bounder.refused
    x = _inputs(name, 10, seed=4)
    with torch.no_grad():
        y = module(x).argmax(1)
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy(), x_test=x.numpy(), y_test=y.numpy())
    res = verify_samples(module, bounder, x, y, 0.02, "complete", timeout=20)
    methods = {s.method for s in res.samples}
    assert res.count("unknown") == 0 and methods == {"ibp", "pgd", "milp"}, methods
    model = VstModel(NETS[name], {k: v.detach().clone() for k, v in module.state_dict().items()})
    dataset = load_dataset(str(tmp_path / "d.npz"), num_classes=3)
    cert = build_certificate(model, dataset, [res])
    assert "re-checked" in check_certificate(cert, model, dataset)
