"""`vst verify MODEL --certificate F`: every claim re-checked; forgeries exit 1, junk exit 2.

Each tamper case edits a real certificate of a tiny trained model. Forged
claims must fail with exit 1, malformed files with exit 2; either way one line
on stderr and never a traceback (nor the CLI's "unexpected" catch-all). The
table runs through the CLI in-process (click's runner, the same code path);
a few cases also run as a real ``python -m toolchain`` subprocess. The int8
certificate (``vst verify MODEL.tflite --certificate F``) obeys the same
sample rules and gets its own tables.
"""

import copy
import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from helpers import assert_one_line, resum, train_certified_tiny
from helpers import set_at
from toolchain.cli import cli
from toolchain.data import load_dataset
from toolchain.verify import verify_model
from toolchain.verify.certificate import build_certificate, save_certificate
from toolchain.verify.engine import encode_input

EPS = 0.05
N = 60


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("certcheck")
    data_path, model = train_certified_tiny(root)
    dataset = load_dataset(str(data_path))
    results = verify_model(model, dataset, [EPS], "crown", N, show_progress=False)
    cert = build_certificate(model, dataset, results)
    save_certificate(root / "cert.json", cert)
    kinds = {(s["verdict"], s["method"]) for s in cert["results"][0]["samples"]}
    for need in (("verified", "crown"), ("falsified", "pgd"), ("falsified", "clean")):
        assert need in kinds, f"the tiny certificate needs a {need} sample: {kinds}"
    return root, root / "run" / "model.vst", cert, dataset


def run_cli(model, cert_path):
    res = CliRunner().invoke(cli, ["-q", "verify", str(model), "--certificate", str(cert_path)])
    return res.exit_code, res.stdout, res.stderr


def run_proc(model, cert_path):
    res = subprocess.run([sys.executable, "-m", "toolchain", "verify", str(model),
                          "--certificate", str(cert_path)],
                         capture_output=True, text=True, timeout=300)
    return res.returncode, res.stdout, res.stderr


# -- helpers that edit a certificate -------------------------------------------------


def res0(c):
    return c["results"][0]


def first(c, verdict, method=None):
    return next(s for s in res0(c)["samples"]
                if s["verdict"] == verdict and (method is None or s["method"] == method))


def make_verified(s, k=9):
    s.update(verdict="verified", method="crown", margin_lower=[1.0] * k)
    s.pop("counterexample", None)


def flip_pgd_to_verified(c):
    make_verified(first(c, "falsified", "pgd"))
    resum(c)


def flip_clean_to_verified(c):
    make_verified(first(c, "falsified", "clean"))
    resum(c)


def flip_all_to_verified(c):
    for s in res0(c)["samples"]:
        if s["verdict"] != "verified":
            make_verified(s)
    resum(c)


def flip_unverified_no_resum(c):
    make_verified(first(c, "falsified", "pgd"))


def raise_one_margin(c):
    s = first(c, "verified")
    s["margin_lower"][0] += 0.5


def negative_own_margin(c):
    first(c, "verified")["margin_lower"][0] = -0.1


def hide_misclassified_as_unknown(c):
    first(c, "falsified", "clean").update(verdict="unknown", method="none")
    resum(c)


def verified_to_pgd_without_counterexample(c):
    first(c, "verified").update(verdict="falsified", method="pgd")
    resum(c)


def counterexample_is_clean_input(c, dataset):
    s = first(c, "falsified", "pgd")
    s["counterexample"] = encode_input(torch.from_numpy(dataset.x_test[s["index"]]))


def counterexample_outside_box(c, dataset):
    s = first(c, "falsified", "pgd")
    x = torch.from_numpy(dataset.x_test[s["index"]])
    s["counterexample"] = encode_input(1.0 - x)       # far outside the eps-box


def drop_unverified_samples(c):
    r = res0(c)
    r["samples"] = [s for s in r["samples"] if s["verdict"] == "verified"]
    resum(c)


def duplicate_verified_sample(c):
    r = res0(c)
    good = first(c, "verified")
    r["samples"] = [copy.deepcopy(good) if s["verdict"] != "verified" else s
                    for s in r["samples"]]
    resum(c)


def bump(key, delta):
    def edit(c):
        r = res0(c)
        if key in r["counts"]:
            r["counts"][key] += delta
        else:
            r[key] += delta
    return edit


def delete_key(path):
    def edit(c):
        obj = c
        for k in path[:-1]:
            obj = obj[k]
        del obj[path[-1]]
    return edit


def on_sample(key, value, verdict="verified"):
    def edit(c):
        first(c, verdict)[key] = value
    return edit


def empty_samples(c):
    res0(c)["samples"] = []
    resum(c)


def wrong_label(c):
    s = first(c, "verified")
    s["label"] = (s["label"] + 1) % 10


def bigger_eps(c):
    res0(c)["eps"] = 0.2


def bad_counterexample_bytes(c):
    first(c, "falsified", "pgd")["counterexample"] = "AAAA"


FORGED = {   # exit 1
    "pgd-falsified flipped to verified": (flip_pgd_to_verified, "re-computes to"),
    "clean-falsified flipped to verified": (flip_clean_to_verified, "misclassifies it"),
    "every sample flipped to verified (100%)": (flip_all_to_verified, "sample"),
    "flip without fixing the summaries": (flip_unverified_no_resum, "but its samples give"),
    "counts edited": (bump("verified", 1), "claims counts"),
    "verified_acc edited": (bump("verified_acc", 0.01), "claims verified_acc"),
    "robust_acc_upper edited": (bump("robust_acc_upper", 0.01), "claims robust_acc_upper"),
    "n edited": (bump("n", 1), "claims n="),
    "results emptied": (set_at(["results"], []), "results is empty"),
    "samples emptied": (empty_samples, "no samples"),
    "one margin raised": (raise_one_margin, "is higher than the re-computed"),
    "own margin not positive": (negative_own_margin, "its own margins are not all > 0"),
    "misclassified hidden as unknown": (hide_misclassified_as_unknown, "misclassifies it"),
    "verified relabelled pgd, no counterexample": (verified_to_pgd_without_counterexample,
                                                   "no counterexample is stored"),
    "counterexample replaced by the clean input": (counterexample_is_clean_input,
                                                   "classified correctly"),
    "counterexample outside the box": (counterexample_outside_box, "outside the eps-box"),
    "hard samples dropped": (drop_unverified_samples, "must be the first n="),
    "a verified sample duplicated": (duplicate_verified_sample, "appears twice"),
    "label edited": (wrong_label, "label"),
    "eps raised": (bigger_eps, "eps=0.2"),
    "params edited": (set_at(["model", "params"], 7), "parameters"),
}

MALFORMED = {  # exit 2
    "version a string": (set_at(["version"], "1"), "'version'"),
    "version newer": (set_at(["version"], 99), "newer"),
    "model missing": (delete_key(["model"]), "'model' is missing"),
    "model null": (set_at(["model"], None), "'model'"),
    "weights hash not hex": (set_at(["model", "weights_sha256"], 5), "'model.weights_sha256'"),
    "results missing": (delete_key(["results"]), "'results' is missing"),
    "results null": (set_at(["results"], None), "'results'"),
    "results a dict": (set_at(["results"], {"eps": 0.05}), "'results'"),
    "result not an object": (set_at(["results"], [3]), "'results[0]'"),
    "sample index 99999": (on_sample("index", 99999), "index"),
    "sample index a string": (on_sample("index", "0"), "index"),
    "sample index negative": (on_sample("index", -1), "index"),
    "sample index a bool": (on_sample("index", True), "index"),
    "margins of the wrong length": (on_sample("margin_lower", [1.0, 2.0]), "margin_lower"),
    "margins a string": (on_sample("margin_lower", "big"), "margin_lower"),
    "margin NaN": (on_sample("margin_lower", [float("nan")] * 9), "margin_lower"),
    "verdict unknown word": (on_sample("verdict", "proven"), "verdict"),
    "method unknown word": (on_sample("method", "magic"), "method"),
    "label too large": (on_sample("label", 10), "label"),
    "eps a string": (set_at(["results", 0, "eps"], "0.05"), "eps"),
    "eps negative": (set_at(["results", 0, "eps"], -0.1), "eps"),
    "eps infinite": (set_at(["results", 0, "eps"], float("inf")), "eps"),
    "cascade unknown": (set_at(["results", 0, "method"], "magic"), "method"),
    "counts not an object": (set_at(["results", 0, "counts"], 5), "counts"),
    "counts key missing": (delete_key(["results", 0, "counts", "unknown"]), "counts.unknown"),
    "verified_acc above 1": (set_at(["results", 0, "verified_acc"], 1.5), "verified_acc"),
    "norm not Linf": (set_at(["norm"], "L2"), "norm"),
    "train split": (set_at(["dataset", "split"], "train"), "split"),
    "counterexample garbage": (bad_counterexample_bytes, "counterexample"),
    "sample not an object": (set_at(["results", 0, "samples"], [1]), "samples[0]"),
}


def write_tampered(root, cert, dataset, name, edit):
    c = copy.deepcopy(cert)
    if edit.__code__.co_argcount == 2:      # edits that need the data
        edit(c, dataset)
    else:
        edit(c)
    path = root / (name.replace(" ", "_").replace("(", "").replace(")", "")
                   .replace("%", "") + ".json")
    path.write_text(json.dumps(c))
    return path


def test_genuine_certificate_re_checks_every_claim(setup):
    root, model, cert, _ = setup
    code, out, err = run_cli(model, root / "cert.json")
    assert code == 0, err
    claims = sum(s["verdict"] != "unknown" for s in res0(cert)["samples"])
    assert f"all {claims} claims re-checked" in out


@pytest.mark.parametrize("name", list(FORGED))
def test_forgery_exits_1(setup, name):
    root, model, cert, dataset = setup
    edit, needle = FORGED[name]
    path = write_tampered(root, cert, dataset, name, edit)
    code, _, err = run_cli(model, path)
    assert_one_line(code, err, 1, needle)
    assert err.startswith("vst: gate failed: ") and str(path) in err


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_exits_2(setup, name):
    root, model, cert, dataset = setup
    edit, needle = MALFORMED[name]
    path = write_tampered(root, cert, dataset, name, edit)
    code, _, err = run_cli(model, path)
    assert_one_line(code, err, 2, needle)
    assert str(path) in err


@pytest.mark.parametrize("name,edit", [("not json", "{"), ("a list", "[1, 2]")])
def test_not_a_certificate_exits_2(setup, name, edit):
    root, model, _, _ = setup
    path = root / f"{name.replace(' ', '_')}.json"
    path.write_text(edit)
    code, _, err = run_cli(model, path)
    assert_one_line(code, err, 2, str(path))


def test_lower_margins_and_old_certificates_still_check(setup):
    """A lower claimed margin is still true; no stored counterexample: attacked again."""
    root, model, cert, _ = setup
    c = copy.deepcopy(cert)
    first(c, "verified")["margin_lower"] = [m / 2 for m in first(c, "verified")["margin_lower"]]
    for s in res0(c)["samples"]:
        s.pop("counterexample", None)
    (root / "old.json").write_text(json.dumps(c))
    code, out, err = run_cli(model, root / "old.json")
    assert code == 0, err
    assert "attacked again" in out


@pytest.mark.parametrize("name,expected", [("pgd-falsified flipped to verified", 1),
                                           ("sample index 99999", 2),
                                           ("results null", 2)])
def test_real_subprocess(setup, name, expected):
    root, model, cert, dataset = setup
    edit, needle = {**FORGED, **MALFORMED}[name]
    path = write_tampered(root, cert, dataset, name, edit)
    code, _, err = run_proc(model, path)
    assert_one_line(code, err, expected, needle)


def test_alpha_crown_certificate_re_checks(setup, tmp_path):
    """alpha-CROWN claims re-check (sound fallback), and a raised alpha margin fails."""
    root, model, _, _ = setup
    path = tmp_path / "alpha.json"
    res = subprocess.run([sys.executable, "-m", "toolchain", "-q", "verify", str(model),
                          "--n", "15", "--eps", str(EPS), "--method", "alpha-crown",
                          "--json", str(path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    c = json.loads(path.read_text())
    code, out, err = run_cli(model, path)
    assert code == 0 and "re-checked" in out, err
    claims = [s for s in res0(c)["samples"] if s["verdict"] == "verified"]
    if not claims:
        pytest.skip("no alpha-CROWN claim among 15 samples")
    claims[0]["margin_lower"][0] = claims[0]["margin_lower"][0] * 2 + 1.0
    path.write_text(json.dumps(c))
    code, _, err = run_cli(model, path)
    assert_one_line(code, err, 1, "higher than the re-computed alpha-crown bound")


def test_the_checker_bounds_a_complete_claims_re_proof(setup, monkeypatch):
    """A MILP claim that says it took 1e300 s is redone within the checker's limit
    (300 s, or --timeout), not 3x what the certificate says."""
    from toolchain.verify import complete

    root, model, cert, _ = setup
    c = copy.deepcopy(cert)
    first(c, "verified").update(method="milp", seconds=1e300)
    resum(c)
    path = root / "milp_claim.json"
    path.write_text(json.dumps(c))
    asked = []

    def proved(*args, timeout, **kwargs):
        asked.append(timeout)
        return complete.Decision("verified", "milp", 0.0)

    monkeypatch.setattr(complete, "decide", proved)
    assert run_cli(model, path)[0] == 0
    res = CliRunner().invoke(cli, ["-q", "verify", str(model), "--certificate", str(path),
                                   "--timeout", "5"])
    assert res.exit_code == 0, res.stderr
    assert asked == [300.0, 5.0]


# -- the int8 certificate (vst verify MODEL.tflite --certificate F): the same rules ----

EPS8 = 0.02


@pytest.fixture(scope="module")
def int8_setup(setup):
    """The tiny model's int8 .tflite, a stand-in C source it names, and a genuine
    int8 certificate with every verdict."""
    from toolchain.export.tflite import export_tflite
    from toolchain.models.modelfile import load_model
    from toolchain.verify.int8_bounds import Int8Bounds
    from toolchain.verify.int8_certificate import (build_int8_certificate,
                                                   save_int8_certificate, verify_int8_samples)

    root, model_path, _, dataset = setup
    tflite = export_tflite(load_model(model_path), root / "int8", dataset.x_train,
                           name="m")["int8"]
    c_source = root / "int8" / "m_int8.c"
    c_source.write_text("/* generated by vst: stands in for the int8 C */\n")
    res = verify_int8_samples(Int8Bounds.from_tflite(tflite), dataset.x_test[:N],
                              dataset.y_test[:N], EPS8)
    cert = build_int8_certificate(tflite, dataset, [res], c_source)
    assert 0 < res["counts"]["verified"] and res["counts"]["falsified"] \
        and res["counts"]["unknown"], res["counts"]
    save_int8_certificate(root / "cert8.json", cert)
    return root, tflite, c_source, cert, dataset


def run_int8(tflite, data, cert_path, *extra):
    res = CliRunner().invoke(cli, ["-q", "verify", str(tflite), "--data", str(data),
                                   "--certificate", str(cert_path), *map(str, extra)])
    return res.exit_code, res.stdout, res.stderr


def keep_verified_only(c):
    r = res0(c)
    r["samples"] = [s for s in r["samples"] if s["verdict"] == "verified"]
    resum(c)


def inflate_a_margin(c):
    s = first(c, "verified")
    j = next(j for j in range(len(s["margin_lower"])) if j != s["label"])
    s["margin_lower"][j] += 7.0


def verified_with_small_own_margins(c):
    s = first(c, "verified")
    s["margin_lower"] = [0.0] * len(s["margin_lower"])


FORGED8 = {   # exit 1
    "only the verified samples kept (100%)": (keep_verified_only, "must be the first n="),
    "results emptied": (set_at(["results"], []), "results is empty"),
    "samples emptied": (empty_samples, "no samples"),
    "a verified sample duplicated": (duplicate_verified_sample, "appears twice"),
    "n edited": (bump("n", 1), "claims n="),
    "clean_acc edited": (bump("clean_acc", 0.05), "claims clean_acc"),
    "verified_acc edited": (bump("verified_acc", 0.01), "claims verified_acc"),
    "counts edited": (bump("verified", 1), "claims counts"),
    "a margin inflated": (inflate_a_margin, "higher than the recomputed int8 bound"),
    "verified, own margins below 1": (verified_with_small_own_margins, "not all >= 1"),
    "label edited": (wrong_label, "label"),
}

MALFORMED8 = {  # exit 2
    "eps negative": (set_at(["results", 0, "eps"], -0.02), "eps"),
    "eps NaN": (set_at(["results", 0, "eps"], float("nan")), "eps"),
    "sample index fractional": (on_sample("index", 1.5), "index"),
    "sample index 99999": (on_sample("index", 99999), "index"),
    "margin NaN": (on_sample("margin_lower", [float("nan")] * 10), "margin_lower"),
    "margins of the wrong length": (on_sample("margin_lower", [1.0, 2.0]), "margin_lower"),
    "label too large": (on_sample("label", 10), "label"),
    "tflite hash not hex": (set_at(["tflite", "sha256"], "abc"), "'tflite.sha256'"),
    "method not int8": (set_at(["results", 0, "method"], "crown"), "method"),
    "c_source a string": (set_at(["c_source"], "m.c"), "'c_source'"),
}


@pytest.mark.parametrize("name,expected",
                         [(n, 1) for n in FORGED8] + [(n, 2) for n in MALFORMED8])
def test_int8_tampered_exits_1_or_2(int8_setup, name, expected):
    """A forgery is exit 1, a malformed file exit 2; one line naming the file."""
    root, tflite, _, cert, dataset = int8_setup
    edit, needle = {**FORGED8, **MALFORMED8}[name]
    path = write_tampered(root, cert, dataset, "int8 " + name, edit)
    code, _, err = run_int8(tflite, root / "tiny.npz", path)
    assert_one_line(code, err, expected, needle)
    assert str(path) in err


def test_int8_genuine_checks_and_the_gate_applies(int8_setup, tmp_path):
    root, tflite, c_source, cert, _ = int8_setup
    data, path = root / "tiny.npz", root / "cert8.json"
    code, out, err = run_int8(tflite, data, path, "--c-source", c_source)
    assert code == 0 and f"all {N} verdicts and their margins recomputed" in out, err
    acc = res0(cert)["verified_acc"]
    code, _, err = run_int8(tflite, data, path, "--min-verified", acc + 0.01)
    assert_one_line(code, err, 1, f"verified {acc:.1%} < required")
    assert run_int8(tflite, data, path, "--min-verified", acc)[0] == 0
    # the C source it names is checked when given: another C file is refused
    other = tmp_path / "other_int8.c"
    other.write_text(c_source.read_text() + "/* edited */\n")
    code, _, err = run_int8(tflite, data, path, "--c-source", other)
    assert_one_line(code, err, 1, "does not belong to other_int8.c")
    # a float certificate is not an int8 one
    code, _, err = run_int8(tflite, data, root / "cert.json")
    assert_one_line(code, err, 2, "not an int8 certificate")
