"""Verification: verdicts, soundness against attacks, certificates and the CI gate."""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

from helpers import train_certified_tiny
from toolchain.data import load_dataset
from toolchain.lirpa.bounds import Bounder
from toolchain.verify.attack import AttackConfig, in_box, pgd
from toolchain.verify.engine import verify_samples

EPS = 0.05


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    data_path, model = train_certified_tiny(root)
    return root, data_path, model


def vst(*args):
    return subprocess.run([sys.executable, "-m", "toolchain", "-q", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def _xy(data_path, n=80):
    d = load_dataset(str(data_path))
    return torch.from_numpy(d.x_test[:n]), torch.from_numpy(d.y_test[:n])


@pytest.mark.parametrize("method", ["ibp", "crown", "all"])
def test_verdicts_are_ordered_and_attack_never_breaks_verified(trained, method):
    _, data_path, model = trained
    x, y = _xy(data_path)
    module = model.torch_module().eval()
    res = verify_samples(module, Bounder(module, x.shape[1:]), x, y, EPS, method)
    clean = float((module(x).argmax(1) == y).float().mean())
    assert res.verified_acc <= res.robust_upper + 1e-9 <= clean + 2e-9
    assert res.count("verified") > 0, "the tiny model should certify something at eps=0.05"
    verified = torch.tensor([s.verdict == "verified" for s in res.samples])
    strong = AttackConfig(steps=100, restarts=10, seed=1)
    found, adv = pgd(module, x[verified], y[verified], EPS, strong)
    assert not found.any(), "a strong attack broke a sample we called verified"
    for s in res.samples:
        if s.verdict == "verified" and s.method not in ("milp", "bab"):
            assert min(s.margin_lower) > 0       # a complete proof needs no positive bound


def test_falsified_counterexamples_are_real(trained):
    _, data_path, model = trained
    x, y = _xy(data_path)
    module = model.torch_module().eval()
    eps = 0.3                                  # large: the attack must succeed somewhere
    found, adv = pgd(module, x, y, eps)
    assert found.any()
    assert in_box(adv[found], x[found], eps).all()
    assert (module(adv[found]).argmax(1) != y[found]).all()
    assert (adv >= 0).all() and (adv <= 1).all()
    assert ((adv - x).abs() <= eps + 1e-6).all()


def test_gate_both_directions_and_reports(trained, tmp_path):
    root, data_path, _ = trained
    model = root / "run" / "model.vst"
    ok = vst("verify", model, "--n", 40, "--eps", EPS, "--min-verified", 0.0,
             "--json", tmp_path / "c.json", "--junit", tmp_path / "ok.xml",
             "--plot", tmp_path / "v.png")
    assert ok.returncode == 0, ok.stderr
    cert = json.loads((tmp_path / "c.json").read_text())
    acc = cert["results"][0]["verified_acc"]
    assert 0 < acc < 1 and cert["results"][0]["n"] == 40
    assert ET.parse(tmp_path / "ok.xml").getroot().get("failures") == "0"
    assert (tmp_path / "v.png").stat().st_size > 5000
    bad = vst("verify", model, "--n", 40, "--eps", EPS, "--min-verified", 0.999,
              "--junit", tmp_path / "bad.xml")
    assert bad.returncode == 1
    line = bad.stderr.strip().splitlines()[-1]
    assert f"verified {acc:.1%} < required 99.9% at eps=0.05 (crown, n=40)" in line
    assert ET.parse(tmp_path / "bad.xml").getroot().get("failures") == "1"


def test_certificate_round_trip_and_model_swap(trained, tmp_path):
    root, data_path, model = trained
    path = root / "run" / "model.vst"
    assert vst("verify", path, "--n", 30, "--eps", EPS, "--json", tmp_path / "c.json"
               ).returncode == 0
    good = vst("verify", path, "--certificate", tmp_path / "c.json")
    assert good.returncode == 0 and "re-checked" in good.stdout, good.stderr
    # another model (one weight changed) must be refused
    from toolchain.models.modelfile import save_model
    model.state["0.weight"].view(-1)[0] += 0.01
    save_model(tmp_path / "other.vst", model)
    model.state["0.weight"].view(-1)[0] -= 0.01
    swap = vst("verify", tmp_path / "other.vst", "--certificate", tmp_path / "c.json")
    assert swap.returncode == 1 and "does not belong" in swap.stderr
    # a forged claim must not re-check
    cert = json.loads((tmp_path / "c.json").read_text())
    res = cert["results"][0]
    forged = [s for s in res["samples"] if s["verdict"] != "verified"]
    assert forged, "need an unverified sample to forge"
    for s in res["samples"]:
        s.update(verdict="verified", method="ibp", margin_lower=[1.0] * 9)
    (tmp_path / "forged.json").write_text(json.dumps(cert))
    bad = vst("verify", path, "--certificate", tmp_path / "forged.json")
    assert bad.returncode == 1 and "but its samples give" in bad.stderr   # the counts lie
    res["counts"] = {"verified": len(res["samples"]), "falsified": 0, "unknown": 0}
    res.update(verified_by={"ibp": len(res["samples"])}, falsified_by={}, verified_acc=1.0,
               robust_acc_upper=1.0, clean_acc=1.0)
    (tmp_path / "forged.json").write_text(json.dumps(cert))
    bad = vst("verify", path, "--certificate", tmp_path / "forged.json")
    assert bad.returncode == 1 and "does not re-check" in bad.stderr      # and so do the claims


@pytest.mark.parametrize("args,needle", [
    (["--eps", "-0.1"], "--eps must be >= 0"),
    (["--eps", "abc"], "--eps must be numbers"),
    (["--min-verified", "1.5"], "--min-verified must lie in [0, 1]"),
    (["--data", "mnist6k"], "mnist6k"),
])
def test_bad_input_is_one_line_exit_2(trained, args, needle):
    root, _, _ = trained
    res = vst("verify", root / "run" / "model.vst", *args)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr


def test_missing_model_exit_2(tmp_path):
    res = vst("verify", tmp_path / "nope.vst")
    assert res.returncode == 2 and "not found" in res.stderr


def test_onnx_reimport_verifies_the_same(trained, tmp_path):
    """A network exported to ONNX and gated from there gets the same verdicts."""
    root, data_path, model = trained
    from toolchain.export.onnx import export_onnx
    export_onnx(model, tmp_path / "m.onnx")
    for path, out in ((root / "run" / "model.vst", "a.json"), (tmp_path / "m.onnx", "b.json")):
        res = vst("verify", path, "--data", data_path, "--eps", EPS, "--n", 40,
                  "--method", "ibp", "--json", tmp_path / out)
        assert res.returncode == 0, res.stderr
    a, b = (json.loads((tmp_path / f).read_text())["results"][0] for f in ("a.json", "b.json"))
    assert [s["verdict"] for s in a["samples"]] == [s["verdict"] for s in b["samples"]]
    assert a["verified_acc"] == b["verified_acc"] > 0
    for sa, sb in zip(a["samples"], b["samples"]):
        if sa["margin_lower"]:
            assert max(abs(p - q) for p, q in zip(sa["margin_lower"], sb["margin_lower"])) < 1e-4
    bad = vst("verify", tmp_path / "m.onnx", "--eps", EPS)
    assert bad.returncode == 2 and "--data" in bad.stderr
