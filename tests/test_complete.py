"""Complete verification (verify/complete.py, verify/milp.py): soundness and
completeness on tiny nets against fine-grid enumeration, counterexamples,
disjunctions of conjunctions, timeouts, and the cascade / certificate wiring."""

import json
import time

import numpy as np
import pytest
import torch

from helpers import assert_one_line, natural_model, tiny_mnist
from toolchain.epsbox import eps_box
from toolchain.errors import VstError
from toolchain.verify.complete import classification_spec, decide
from toolchain.verify.spec_attack import unsafe_at

GRID = 201


def tiny_net(seed, n_in=2, hidden=(12, 12), n_out=3):
    """A random ReLU MLP with weights large enough to give many unstable ReLUs."""
    gen = torch.Generator().manual_seed(seed)
    sizes = (n_in,) + tuple(hidden)
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(sizes[-1], n_out))
    net = torch.nn.Sequential(*layers).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.7)
        # centre the outputs over the unit box so that every class wins somewhere
        xs = torch.rand((2000, n_in), generator=gen)
        net[-1].bias -= net(xs).mean(0)
    return net


def grid_outputs(net, lower, upper):
    """The net on a GRID x GRID grid of the 2-D box (corners included)."""
    axes = [np.linspace(lo, hi, GRID, dtype=np.float32) for lo, hi in zip(lower, upper)]
    pts = np.stack(np.meshgrid(*axes), -1).reshape(-1, 2).astype(np.float32)
    with torch.no_grad():
        return pts, net(torch.from_numpy(pts)).double().numpy()


def grid_unsafe(ys, disjuncts) -> bool:
    return any(bool(np.all(ys @ a.T <= c, axis=1).any()) for a, c in disjuncts)


def check_against_grid(net, lower, upper, disjuncts, d):
    """Never verified when a grid point is unsafe; a counterexample is really unsafe."""
    _, ys = grid_outputs(net, lower, upper)
    if d.status == "verified":
        assert not grid_unsafe(ys, disjuncts), f"verified by {d.procedure}, grid finds unsafe"
    if d.status == "falsified":
        cex = d.counterexample
        assert cex.dtype == np.float32 and cex.shape == (2,)
        assert np.all(cex >= lower) and np.all(cex <= upper)
        assert unsafe_at(net, cex, (2,), lower, upper, disjuncts)
    return grid_unsafe(ys, disjuncts)


def box(seed, eps=0.15):
    centre = np.random.default_rng(seed).uniform(0, 1, 2).astype(np.float32)
    return *eps_box(centre, eps), centre


def boundary_eps(net, centre, label) -> float:
    """L-inf distance from ``centre`` to the nearest grid point of [0, 1]^2 that is
    not classified as ``label``: the robustness radius, up to the grid step."""
    pts, ys = grid_outputs(net, [0, 0], [1, 1])
    others = np.delete(ys, label, axis=1).max(1)
    wrong = others >= ys[:, label]
    return float(np.abs(pts[wrong] - centre).max(1).min()) if wrong.any() else 1.0


@pytest.mark.parametrize("factor", [0.9, 0.98, 1.02, 1.1])
@pytest.mark.parametrize("seed", range(8))
def test_milp_alone_is_sound_and_complete_on_tiny_nets(seed, factor):
    """Boxes just inside and just beyond the robustness radius: the hard cases."""
    net = tiny_net(seed, hidden=(8, 16) if seed % 2 else (12, 12))
    rng = np.random.default_rng(seed)
    for _ in range(100):             # a centre with a decision boundary nearby
        centre = rng.uniform(0.2, 0.8, 2).astype(np.float32)
        with torch.no_grad():
            label = int(net(torch.from_numpy(centre)[None]).argmax())
        radius = boundary_eps(net, centre, label)
        if 0.03 < radius < 0.3:
            break
    eps = factor * radius
    lower, upper = eps_box(centre, eps)
    spec = classification_spec(label, 3)
    d = decide(net, (2,), lower, upper, spec, timeout=30, cheap=False, procedure="milp")
    assert d.status in ("verified", "falsified"), d.reason       # tiny: always decided
    assert d.procedure == "milp"
    unsafe = check_against_grid(net, lower, upper, spec, d)
    if unsafe:
        assert d.status == "falsified"
    # the full cascade (bounds, PGD, then MILP) agrees with the MILP alone
    full = decide(net, (2,), lower, upper, spec, timeout=30)
    assert full.status == d.status, (full.procedure, d.procedure)


def pruned_pair(seed):
    """A tiny net with five first-layer neurons pruned (no weights, zero bias),
    the same net with them removed, and a classification property on a box:
    ``(masked, compacted, lower, upper, spec)``."""
    net = tiny_net(200 + seed, hidden=(16, 16))
    pruned = [1, 4, 5, 9, 12]
    keep = [i for i in range(16) if i not in pruned]
    with torch.no_grad():
        net[0].weight[pruned] = 0.0
        net[0].bias[pruned] = 0.0
    small = torch.nn.Sequential(torch.nn.Linear(2, len(keep)), torch.nn.ReLU(),
                                torch.nn.Linear(len(keep), 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 3)).eval()
    with torch.no_grad():
        small[0].weight.copy_(net[0].weight[keep])
        small[0].bias.copy_(net[0].bias[keep])
        small[2].weight.copy_(net[2].weight[:, keep])
        small[2].bias.copy_(net[2].bias)
        small[4].load_state_dict(net[4].state_dict())
    lower, upper, centre = box(200 + seed, eps=0.3)
    with torch.no_grad():
        label = int(net(torch.from_numpy(centre)[None]).argmax())
    spec = classification_spec(label, 3)
    return net, small, lower, upper, spec


@pytest.mark.parametrize("seed", range(4))
def test_pruned_neurons_masked_and_compacted_agree(seed):
    """Neurons with no weights and zero bias (a masked model's pruned channels) are
    constant 0: the MILP fixes them, and the net without them decides alike."""
    net, small, lower, upper, spec = pruned_pair(seed)
    masked = decide(net, (2,), lower, upper, spec, timeout=30, cheap=False, procedure="milp")
    compacted = decide(small, (2,), lower, upper, spec, timeout=30, cheap=False,
                       procedure="milp")
    assert masked.status == compacted.status != "unknown", (masked.reason, compacted.reason)
    check_against_grid(net, lower, upper, spec, masked)


@pytest.mark.parametrize("seed", range(8))
def test_disjunction_of_conjunctions_against_the_grid(seed):
    """Two disjuncts of two or three rows, thresholds cut through the output range."""
    net = tiny_net(100 + seed)
    lower, upper, _ = box(100 + seed, eps=0.25)
    _, ys = grid_outputs(net, lower, upper)
    rng = np.random.default_rng(seed)
    disjuncts = []
    for rows in (2, 3):
        a = rng.normal(size=(rows, 3))
        vals = ys @ a.T
        # thresholds around the low quantiles: sometimes reachable, often barely not
        c = np.quantile(vals, 0.02 + 0.1 * rng.random(), axis=0) - 0.05 * vals.std(0)
        disjuncts.append((a, c))
    for procedure in ("milp", "bab"):
        d = decide(net, (2,), lower, upper, disjuncts, timeout=30, cheap=False,
                   procedure=procedure)
        assert d.status in ("verified", "falsified"), d.reason
        unsafe = check_against_grid(net, lower, upper, disjuncts, d)
        if unsafe:
            assert d.status == "falsified"
        full = decide(net, (2,), lower, upper, disjuncts, timeout=30, procedure=procedure)
        assert full.status == d.status


def test_a_sat_property_gives_a_rechecked_counterexample_from_each_procedure():
    net = tiny_net(7)
    lower, upper, centre = box(7, eps=0.3)
    with torch.no_grad():
        y = net(torch.from_numpy(centre)[None]).double().numpy()[0]
    # y0 - y1 <= (its value at the centre) + 0.01: the centre itself is unsafe
    spec = [(np.array([[1.0, -1.0, 0.0]]), np.array([y[0] - y[1] + 0.01]))]
    for cheap, procedure in ((True, "pgd"), (False, "milp"), (False, "bab")):
        d = decide(net, (2,), lower, upper, spec, timeout=30, cheap=cheap,
                   procedure="bab" if procedure == "pgd" else procedure)
        assert (d.status, d.procedure) == ("falsified", procedure)
        assert unsafe_at(net, d.counterexample, (2,), lower, upper, spec)
        assert d.seconds >= 0 and d.reason == ""


def test_timeout_gives_unknown_with_the_reason():
    net = tiny_net(3, n_in=40, hidden=(64, 64, 64), n_out=4)
    lower, upper = np.zeros(40, np.float32), np.ones(40, np.float32)
    rng = np.random.default_rng(0)
    xs = torch.from_numpy(rng.uniform(0, 1, (4000, 40)).astype(np.float32))
    with torch.no_grad():
        diff = (net(xs)[:, 0] - net(xs)[:, 1]).numpy()
    # just below everything sampled: the MILP has to close a big gap to decide
    spec = [(np.array([[1.0, -1.0, 0.0, 0.0]]), np.array([float(diff.min()) - 1e-3]))]
    # CPU time, so that a busy machine does not change what is measured
    d = decide(net, (40,), lower, upper, spec, timeout=1.0, cheap=False,
               clock=time.process_time, procedure="milp")
    assert d.status == "unknown" and d.procedure == "none"
    assert "timeout" in d.reason and "unstable ReLUs" in d.reason
    assert d.seconds < 10


@pytest.mark.parametrize("bad,needle", [
    (lambda: decide(tiny_net(0), (2,), [0.5, 0.5], [0.4, 0.6], classification_spec(0, 3),
                    timeout=5), "empty"),
    (lambda: decide(tiny_net(0), (2,), [0, 0, 0], [1, 1, 1], classification_spec(0, 3),
                    timeout=5), "inputs"),
    (lambda: decide(tiny_net(0), (2,), [0, 0], [1, 1], [(np.ones((1, 4)), np.zeros(1))],
                    timeout=5), "disjunct 0"),
    (lambda: decide(tiny_net(0), (2,), [0, 0], [1, 1], [], timeout=5), "no disjunct"),
    (lambda: decide(tiny_net(0), (2,), [0, 0], [1, 1], classification_spec(0, 3),
                    timeout=0), "timeout"),
])
def test_bad_properties_are_one_line_errors(bad, needle):
    with pytest.raises(VstError, match=needle):
        bad()


EPS = 0.045          # where the MILP decides three of the samples below in seconds


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A tiny cnn_small trained naturally (cross-entropy, seeded, about a second) on
    a slice of mnist5k, saved as root/model.vst: a net that was never certified.
    Its test split (root/tiny.npz) is 16 samples where every verdict occurs."""
    from toolchain.models.zoo import build_network

    root = tmp_path_factory.mktemp("complete")
    data = dict(np.load(tiny_mnist(root / "tiny.npz")))
    data["x_test"], data["y_test"] = data["x_test"][24:40], data["y_test"][24:40]
    np.savez(root / "tiny.npz", **data)
    net = build_network("cnn_small", (1, 28, 28), 10, channels=(4, 8), widths=(16,))
    model, dataset = natural_model(root, net, data, epochs=8)
    return root, model, dataset


@pytest.fixture(scope="module")
def runs(small):
    """The cascade with CROWN only and with everything (``all``) on the 16 samples,
    and ``complete`` alone on the first 8 (one of them needs the MILP)."""
    from toolchain.lirpa.bounds import Bounder
    from toolchain.verify.engine import verify_samples

    _, model, data = small
    module = model.torch_module().eval()
    x, y = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    bounder = Bounder(module, x.shape[1:])
    out = {m: verify_samples(module, bounder, x, y, EPS, m, timeout=20)
           for m in ("crown", "all")}
    out["complete"] = verify_samples(module, bounder, x[:8], y[:8], EPS, "complete",
                                     timeout=20)
    return out


def test_cascade_steps_never_disagree_with_each_other_or_a_strong_pgd(small, runs):
    from toolchain.verify.attack import AttackConfig, in_box, pgd

    _, model, data = small
    module = model.torch_module().eval()
    x, y = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    for m, res in runs.items():
        for s in res.samples:
            assert s.seconds >= 0
            if s.counterexample is not None:         # pgd / milp: in the box, misclassified
                adv = s.counterexample[None]
                assert bool(in_box(adv, x[s.index:s.index + 1], EPS))
                assert int(module(adv).argmax()) != s.label
    verdicts = {m: [s.verdict for s in r.samples] for m, r in runs.items()}
    for i in range(len(x)):
        seen = {verdicts[m][i] for m in runs if i < len(verdicts[m])} - {"unknown"}
        assert seen != {"verified", "falsified"}, f"sample {i}: procedures disagree"
    # complete verification decides every sample of this tiny net in time
    assert runs["all"].count("unknown") == 0 and runs["complete"].count("unknown") == 0
    assert runs["crown"].count("unknown") > 0       # ... which CROWN and PGD do not
    assert verdicts["all"][:8] == verdicts["complete"]
    assert {s.method for s in runs["all"].samples} & {"bab", "milp"}, \
        "the complete step was not reached"
    verified = torch.tensor([v == "verified" for v in verdicts["all"]])
    found, _ = pgd(module, x[verified], y[verified], EPS,
                   AttackConfig(steps=200, restarts=20, seed=3))
    assert not found.any(), "a strong PGD broke a verified sample"


def test_certificate_records_procedure_and_time_and_rechecks_milp_claims(small, runs,
                                                                          tmp_path):
    from helpers import resum
    from toolchain.errors import GateFailed
    from toolchain.verify.certificate import (build_certificate, check_certificate,
                                              load_certificate, save_certificate)

    _, model, dataset = small
    cert = build_certificate(model, dataset, [runs["complete"]])
    res = cert["results"][0]
    assert res["method"] == "complete" and res["verified_by"].get("bab", 0) >= 1
    assert sum(res["falsified_by"].values()) == res["counts"]["falsified"]
    assert all("seconds" in s and s["seconds"] >= 0 for s in res["samples"])
    path = tmp_path / "c.json"
    save_certificate(path, cert)
    assert "re-checked" in check_certificate(load_certificate(path), model, dataset)
    # a falsified sample claimed verified by the MILP does not re-check
    forged = json.loads(path.read_text())
    r = forged["results"][0]
    target = next(s for s in r["samples"] if s["verdict"] == "falsified"
                  and s["method"] != "clean")
    target.update(verdict="verified", method="milp")
    target.pop("counterexample", None)
    resum(forged)
    (tmp_path / "f.json").write_text(json.dumps(forged))
    with pytest.raises(GateFailed, match="does not prove it"):
        check_certificate(load_certificate(tmp_path / "f.json"), model, dataset)
    # an unknown procedure name is a structural error
    r["samples"][0]["method"] = "magic"
    (tmp_path / "g.json").write_text(json.dumps(forged))
    with pytest.raises(VstError, match="method"):
        load_certificate(tmp_path / "g.json")


def test_cli_complete_and_timeout(small, tmp_path):
    from click.testing import CliRunner

    from toolchain.cli import cli

    root, _, _ = small
    model, data = str(root / "model.vst"), str(root / "tiny.npz")
    runner = CliRunner()
    out = runner.invoke(cli, ["-q", "verify", model, "--data", data, "--eps", str(EPS),
                              "--n", "3", "--method", "complete", "--timeout", "20",
                              "--json", str(tmp_path / "c.json")])
    assert out.exit_code == 0, out.output
    assert "falsified by" in out.output
    cert = json.loads((tmp_path / "c.json").read_text())
    assert {s["method"] for s in cert["results"][0]["samples"]} <= {
        "clean", "crown", "alpha-crown", "pgd", "milp", "bab", "none"}
    bad = runner.invoke(cli, ["-q", "verify", model, "--data", data,
                              "--method", "complete", "--timeout", "0"])
    assert_one_line(bad.exit_code, bad.output, 2, "--timeout")
