"""Branch and bound (verify/bab.py, lirpa/splits.py, verify/bab_tree.py): sound
against exhaustive grids on tiny 2-D nets, unknown on timeout, masked and
compacted alike, and proofs that a checker replays leaf by leaf."""

import json
import time

import numpy as np
import pytest
import torch

from helpers import natural_model, resum, tiny_mnist
from test_complete import (boundary_eps, box, check_against_grid, grid_outputs, pruned_pair,
                           tiny_net)
from toolchain.epsbox import eps_box
from toolchain.lirpa.bounds import Bounder
from toolchain.verify.bab_tree import check_proof, tree_gap
from toolchain.verify.complete import classification_spec, decide


def hard_property(seed, factor, hidden=None):
    """A box just inside or beyond the robustness radius of a random tiny net."""
    net = tiny_net(300 + seed, hidden=hidden or ((8, 16) if seed % 2 else (12, 12)))
    rng = np.random.default_rng(seed)
    for _ in range(100):
        centre = rng.uniform(0.2, 0.8, 2).astype(np.float32)
        with torch.no_grad():
            label = int(net(torch.from_numpy(centre)[None]).argmax())
        radius = boundary_eps(net, centre, label)
        if 0.03 < radius < 0.3:
            break
    lower, upper = eps_box(centre, factor * radius)
    return net, lower, upper, classification_spec(label, 3)


def test_split_bounds_hold_on_sampled_points_of_each_domain():
    """beta-CROWN through auto_LiRPA 0.3 with split constraints: every bound is
    below the outputs at every sampled input that meets the domain's splits."""
    from toolchain.lirpa.splits import SplitBounder

    net = tiny_net(11, hidden=(16, 16))
    lower, upper = np.zeros(2, np.float32), np.ones(2, np.float32)
    c = np.array([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0], [0.0, 1.0, -1.0]])
    sb = SplitBounder(Bounder(net, (2,)), lower, upper, c, iterations=30)
    unstable = sb.unstable()
    xs = torch.rand((100000, 2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = [net[0](xs)]
        z.append(net[2](net[1](z[0])))
        ys = net(xs).double().numpy() @ c.T
    rng = np.random.default_rng(0)
    domains = []
    for i in rng.choice(len(xs), 24, replace=False):      # splits a sampled point meets
        domains.append(tuple((k, int(n), int(z[k][i, n] >= 0)) for k in (0, 1)
                             for n in rng.choice(np.flatnonzero(unstable[k]), 3, False)))
    res = sb.bound(domains)
    plain = sb.bound(domains, beta=False)
    assert (res.lower >= plain.lower - 1e-6).all()           # beta never loosens
    assert (res.lower > plain.lower + 1e-3).any()            # ... and here tightens
    for d, lb in zip(domains, res.lower):
        meet = np.ones(len(xs), bool)
        for k, n, s in d:
            meet &= (z[k][:, n] >= 0).numpy() if s else (z[k][:, n] <= 0).numpy()
        assert meet.any()
        assert (lb <= ys[meet].min(0) + 1e-5).all(), (d, lb, ys[meet].min(0))


@pytest.mark.parametrize("factor", [0.9, 1.02, 1.1])
@pytest.mark.parametrize("seed", range(8))
def test_bab_never_verifies_what_the_grid_falsifies(seed, factor):
    net, lower, upper, spec = hard_property(seed, factor)
    d = decide(net, (2,), lower, upper, spec, timeout=30, cheap=False)
    assert d.status in ("verified", "falsified"), d.reason     # tiny: always decided
    assert d.procedure == "bab"
    unsafe = check_against_grid(net, lower, upper, spec, d)
    if unsafe:
        assert d.status == "falsified"
    if d.status == "verified":
        tree = d.tree
        assert tree["domains"] >= len(tree["leaves"]) >= 1 and tree["open"] == [0, 1]
        assert tree_gap(tree["leaves"]) is None
        assert check_proof(net, Bounder(net, (2,)), (2,), lower, upper, spec, tree,
                           time_limit=30) is None
    milp = decide(net, (2,), lower, upper, spec, timeout=30, cheap=False, procedure="milp")
    assert milp.status == d.status


def test_proofs_need_splits_and_a_changed_tree_is_rejected():
    """Over the random nets some proofs need several leaves; removing, flipping or
    adding a leaf, or forging a one-leaf proof, is caught."""
    proofs = []
    for seed in range(8):
        net, lower, upper, spec = hard_property(seed, 0.9)
        d = decide(net, (2,), lower, upper, spec, timeout=30, cheap=False)
        if d.status == "verified" and len(d.tree["leaves"]) >= 3:
            proofs.append((net, lower, upper, spec, d.tree))
    assert proofs, "no proof needed branching: the test nets are too easy"
    net, lower, upper, spec, tree = proofs[0]
    bounder = Bounder(net, (2,))

    def check(t, limit=30.0):
        return check_proof(net, bounder, (2,), lower, upper, spec, t, time_limit=limit)

    assert check(tree) is None
    assert "longer than" in check(tree, limit=0.0)           # the checker's bound on time
    leaves = tree["leaves"]
    assert "missing leaf" in check(dict(tree, leaves=leaves[1:]))
    flipped = [leaves[0][:-1] + [leaves[0][-1][:2] + [1 - leaves[0][-1][2]]]] + leaves[1:]
    assert check(dict(tree, leaves=flipped)) is not None
    assert check(dict(tree, leaves=leaves + [leaves[0]])) is not None
    assert "not refuted" in check(dict(tree, leaves=[[]]))       # the root alone
    assert "does not cover" in check(dict(tree, leaves=[[[0, 0, 1]]]))
    assert check(dict(tree, leaves=[[[0, 10 ** 6, 1]], [[0, 10 ** 6, 0]]])) is not None


def test_timeout_gives_unknown():
    """A wide random net and a threshold halfway between CROWN's bound and the
    outputs seen: no proof or counterexample in 1 s."""
    net = tiny_net(3, n_in=40, hidden=(64, 64, 64), n_out=4)
    lower, upper = np.zeros(40, np.float32), np.ones(40, np.float32)
    row = np.array([[1.0, -1.0, 0.0, 0.0]])
    lb, _ = Bounder(net, (40,)).box_bounds(lower, upper, torch.from_numpy(row), "crown")
    spec = [(row, np.array([float(lb[0]) / 2]))]
    d = decide(net, (40,), lower, upper, spec, timeout=1.0, cheap=False,
               clock=time.process_time)
    assert d.status == "unknown" and d.procedure == "none" and d.tree is None
    assert "timeout" in d.reason and "branch and bound" in d.reason and "domains" in d.reason
    assert d.seconds < 10


@pytest.mark.parametrize("seed", range(3))
def test_masked_and_compacted_agree(seed):
    net, small, lower, upper, spec = pruned_pair(seed)
    masked = decide(net, (2,), lower, upper, spec, timeout=30, cheap=False)
    compacted = decide(small, (2,), lower, upper, spec, timeout=30, cheap=False)
    assert masked.status == compacted.status != "unknown", (masked.reason, compacted.reason)
    assert masked.procedure == compacted.procedure == "bab"
    check_against_grid(net, lower, upper, spec, masked)


EPS = 0.05


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """A tiny MLP trained naturally on a slice of mnist5k: root/model.vst, root/tiny.npz."""
    from toolchain.models.zoo import mlp as zoo_mlp

    root = tmp_path_factory.mktemp("bab")
    tiny_mnist(root / "tiny.npz", n_test=12)
    data = np.load(root / "tiny.npz")
    model, dataset = natural_model(root, zoo_mlp((1, 28, 28), 10, widths=(24, 24)), data,
                                   epochs=10)
    return root, model, dataset


def test_certificate_replays_bab_proofs_and_rejects_forgeries(mlp, tmp_path):
    from click.testing import CliRunner

    from toolchain.cli import cli
    from toolchain.errors import GateFailed
    from toolchain.verify.certificate import check_certificate, load_certificate

    root, model, dataset = mlp
    cert_path = tmp_path / "c.json"
    runner = CliRunner()
    out = runner.invoke(cli, ["-q", "verify", str(root / "model.vst"), "--data",
                              str(root / "tiny.npz"), "--eps", str(EPS), "--n", "12",
                              "--method", "all", "--timeout", "20", "--json", str(cert_path)])
    assert out.exit_code == 0, out.output
    cert = json.loads(cert_path.read_text())
    samples = cert["results"][0]["samples"]
    proved = [s for s in samples if s["method"] == "bab"]
    assert proved, f"no sample reached branch and bound: {[s['method'] for s in samples]}"
    assert all(s["bab"]["domains"] >= 1 and s["bab"]["leaves"] for s in proved)
    assert "re-checked" in check_certificate(load_certificate(cert_path), model, dataset)
    target = max(proved, key=lambda s: len(s["bab"]["leaves"]))

    def forged(edit, name):
        c = json.loads(cert_path.read_text())
        s = next(s for s in c["results"][0]["samples"] if s["index"] == target["index"])
        edit(s, c)
        resum(c)
        (tmp_path / name).write_text(json.dumps(c))
        return tmp_path / name

    assert len(target["bab"]["leaves"]) > 1
    path = forged(lambda s, c: s["bab"]["leaves"].pop(), "hole.json")    # a leaf removed
    with pytest.raises(GateFailed, match="missing leaf"):
        check_certificate(load_certificate(path), model, dataset)
    path = forged(lambda s, c: s.pop("bab"), "notree.json")
    with pytest.raises(GateFailed, match="no split tree"):
        check_certificate(load_certificate(path), model, dataset)
    # a sample that is not robust claimed verified by bab with a root-only "proof"
    target = next(s for s in samples if s["verdict"] == "falsified" and s["method"] != "clean")

    def claim(s, c):
        s.update(verdict="verified", method="bab", bab={
            "domains": 1, "heuristic": "babsr", "open": list(range(9)), "leaves": [[]]})
        s.pop("counterexample", None)

    path = forged(claim, "forged.json")
    out = runner.invoke(cli, ["-q", "verify", str(root / "model.vst"), "--data",
                              str(root / "tiny.npz"), "--certificate", str(path)])
    assert out.exit_code == 1, out.output
    assert "bab" in out.output
    # a malformed tree is a structural error (exit 2)
    path = forged(lambda s, c: s.update(bab={"domains": 0, "leaves": []}), "bad.json")
    from toolchain.errors import VstError
    with pytest.raises(VstError, match="domains"):
        load_certificate(path)


def test_vnnlib_certificate_replays_bab_proofs(mlp, tmp_path):
    """The exporter's ONNX + VNN-LIB files: `vst verify --vnnlib` records the split
    trees, `vst certificate check` replays them and rejects one with a leaf gone."""
    from click.testing import CliRunner

    from toolchain.cli import cli
    from toolchain.export.onnx import export_onnx
    from toolchain.export.vnnlib import write_vnnlib

    _, model, dataset = mlp
    export_onnx(model, tmp_path / "net.onnx")
    write_vnnlib(tmp_path, "net.onnx", dataset.x_test, dataset.y_test, EPS, timeout=20)
    runner = CliRunner()
    out = runner.invoke(cli, ["-q", "verify", "--vnnlib", str(tmp_path / "instances.csv"),
                              "--method", "all", "--json", str(tmp_path / "c.json")])
    assert out.exit_code == 0, out.output
    cert = json.loads((tmp_path / "c.json").read_text())
    proved = [e for e in cert["instances"] if e["procedure"] == "bab"]
    assert proved and all(e["verdict"] == "verified" and e["bab"]["leaves"] for e in proved)
    out = runner.invoke(cli, ["-q", "certificate", "check", str(tmp_path / "c.json")])
    assert out.exit_code == 0, out.output
    target = max(proved, key=lambda e: len(e["bab"]["leaves"]))
    assert len(target["bab"]["leaves"]) > 1
    target["bab"]["leaves"].pop(0)
    (tmp_path / "f.json").write_text(json.dumps(cert))
    out = runner.invoke(cli, ["-q", "certificate", "check", str(tmp_path / "f.json")])
    assert out.exit_code == 1 and "missing leaf" in out.output, out.output
