"""Intermediate-bound refinement by LP (verify/refine.py): the refined bounds hold
on sampled points, branch and bound from them never proves what a grid
falsifies, and a checker rejects a forged refined bound (exit 1 on the CLI)."""

import json

import numpy as np
import pytest
import torch

from helpers import resum
from test_bab import EPS, hard_property, mlp  # noqa: F401  (the module fixture)
from test_complete import check_against_grid, tiny_net
from toolchain.lirpa.bounds import Bounder
from toolchain.verify import complete
from toolchain.verify.affine_program import read_program
from toolchain.verify.bab_tree import check_proof
from toolchain.verify.complete import decide
from toolchain.verify.refine import check, refine


def pre_activations(net, xs):
    out, x = [], xs
    with torch.no_grad():
        for m in net:
            x = m(x)
            if isinstance(m, torch.nn.Linear):
                out.append(x.double().numpy())
    return out[:-1]


@pytest.mark.parametrize("seed", range(4))
def test_refined_bounds_hold_on_sampled_points_and_tighten_crown(seed):
    net = tiny_net(40 + seed, hidden=(16, 16, 16))
    lower, upper = np.full(2, 0.2, np.float32), np.full(2, 0.7, np.float32)
    rows = torch.tensor([[1.0, -1.0, 0.0]])
    _, crown = Bounder(net, (2,)).box_bounds(lower, upper, rows, "crown")
    ref = refine(read_program(net, (2,)), lower, upper, crown, time_left=lambda: 30,
                 layers=2)
    assert ref.lps == 2 * len(ref.record) > 0
    xs = torch.rand((50000, 2), generator=torch.Generator().manual_seed(seed)) * 0.5 + 0.2
    tighter = 0.0
    for k, (z, (lo, hi), (c_lo, c_hi)) in enumerate(zip(pre_activations(net, xs), ref.bounds,
                                                        crown)):
        assert (z >= lo).all() and (z <= hi).all(), k
        assert (lo >= c_lo).all() and (hi <= c_hi).all()         # never looser
        tighter = max(tighter, float(((c_hi - c_lo) - (hi - lo)).max()))
    assert tighter > 1e-3                                        # and here tighter
    bounds, why = check(read_program(net, (2,)), lower, upper, crown, ref.record,
                        time_left=lambda: 30)
    assert why == "" and all(np.allclose(a[0], b[0]) for a, b in zip(bounds, ref.bounds))


DEEP = (16, 16, 16)       # three ReLU layers: layers 2 and 3 are refined


@pytest.mark.parametrize("factor", [0.9, 1.02, 1.1])
@pytest.mark.parametrize("seed", range(6))
def test_bab_with_refinement_never_verifies_what_the_grid_falsifies(seed, factor,
                                                                     monkeypatch):
    monkeypatch.setattr(complete, "REFINE_LAYERS", 2)
    net, lower, upper, spec = hard_property(seed, factor, DEEP)
    d = decide(net, (2,), lower, upper, spec, timeout=30, cheap=False)
    assert d.status in ("verified", "falsified"), d.reason
    unsafe = check_against_grid(net, lower, upper, spec, d)
    if unsafe:
        assert d.status == "falsified"
    if d.status == "verified" and d.procedure == "bab":
        assert d.tree["root"] == "alpha-crown"
        assert check_proof(net, Bounder(net, (2,)), (2,), lower, upper, spec, d.tree,
                           time_limit=30) is None


def test_a_forged_refined_bound_is_rejected(monkeypatch):
    """The proof replays with its refined bounds; one tightened past its LP, a
    layer or neuron that does not exist, or a refined bound on a proof that
    claims CROWN's root is refused."""
    monkeypatch.setattr(complete, "REFINE_LAYERS", 2)
    for seed in range(8):
        net, lower, upper, spec = hard_property(seed, 0.9, DEEP)
        d = decide(net, (2,), lower, upper, spec, timeout=30, cheap=False)
        if d.status == "verified" and d.procedure == "bab" and d.tree.get("refined"):
            break
    else:
        pytest.fail("no proof by branch and bound with refined bounds")
    tree, bounder = d.tree, Bounder(net, (2,))

    def replay(refined):
        t = dict(tree, refined=refined)
        return check_proof(net, bounder, (2,), lower, upper, spec, t, time_limit=30)

    assert replay(tree["refined"]) is None
    k, n, lo, hi = tree["refined"][0]
    forged = [[k, n, lo + 0.25 * (hi - lo), hi]] + tree["refined"][1:]
    assert "tighter than its LP" in replay(forged)
    forged = [[k, n, lo, hi - 1e-3 * (1 + abs(hi))]] + tree["refined"][1:]
    assert "tighter than its LP" in replay(forged)
    assert "not refined" in replay([[0, 0, -1.0, 1.0]])
    assert "no such neuron" in replay([[1, 10 ** 6, -1.0, 1.0]])


def test_certificate_with_a_forged_refined_bound_exits_1(mlp, tmp_path, monkeypatch):  # noqa: F811
    from click.testing import CliRunner

    from toolchain.cli import cli

    monkeypatch.setattr(complete, "REFINE_LAYERS", 1)
    root, model, dataset = mlp
    runner = CliRunner()
    args = ["-q", "verify", str(root / "model.vst"), "--data", str(root / "tiny.npz"),
            "--eps", str(EPS), "--n", "12"]
    out = runner.invoke(cli, args + ["--method", "all", "--timeout", "20", "--json",
                                     str(tmp_path / "c.json")])
    assert out.exit_code == 0, out.output
    cert = json.loads((tmp_path / "c.json").read_text())
    refined = [s for s in cert["results"][0]["samples"]
               if s["method"] == "bab" and s["bab"].get("refined")]
    assert refined, "no proof by branch and bound recorded refined bounds"
    out = runner.invoke(cli, args + ["--certificate", str(tmp_path / "c.json")])
    assert out.exit_code == 0, out.output
    entry = refined[0]["bab"]["refined"][0]
    entry[2] += 0.5 * (entry[3] - entry[2])              # the lower bound raised
    resum(cert)
    (tmp_path / "f.json").write_text(json.dumps(cert))
    out = runner.invoke(cli, args + ["--certificate", str(tmp_path / "f.json")])
    assert out.exit_code == 1, out.output
    assert "refined intermediate bound" in out.output
