"""Sharded verification: `vst verify --shard I/N` and `vst certificate merge`.

N shard certificates of a tiny trained model, merged, must give exactly the
certificate of one unsharded run (verdicts, methods, counterexamples; margins
to 1e-6; timing aside) and pass the checker; shards that do not belong
together (other weights, data, eps, shard layout; overlapping or missing
samples) are one-line errors with exit 2; forged claims in a merged or shard
certificate fail the check with exit 1. Everything runs in-process through
click's runner (the same code path as `python -m toolchain`).
"""

import base64
import copy
import json

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import assert_one_line, resum, train_certified_tiny
from helpers import set_at
from toolchain.cli import cli
from toolchain.verify.shard import TIMING, parse_shard, shard_indices

EPS = "0.03,0.05"
N = 61          # not a multiple of the shard count: the shards differ in size
SHARDS = 3


def vst(*args):
    res = CliRunner().invoke(cli, ["-q", *map(str, args)])
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny model, one unsharded certificate and SHARDS shard certificates."""
    root = tmp_path_factory.mktemp("shard")
    data_path, _ = train_certified_tiny(root)
    model = root / "run" / "model.vst"
    common = ["--eps", EPS, "--method", "crown", "--n", N]
    code, _, err = vst("verify", model, *common, "--json", root / "single.json")
    assert code == 0, err
    shards = []
    for i in range(SHARDS):
        path = root / f"shard{i}.json"
        code, _, err = vst("verify", model, *common, "--shard", f"{i}/{SHARDS}",
                           "--json", path)
        assert code == 0, err
        shards.append(path)
    single = json.loads((root / "single.json").read_text())
    kinds = {(s["verdict"], s["method"]) for r in single["results"] for s in r["samples"]}
    for need in (("verified", "crown"), ("falsified", "pgd"), ("falsified", "clean")):
        assert need in kinds, f"the tiny certificate needs a {need} sample: {kinds}"
    return root, model, single, shards


def load(path):
    return json.loads(path.read_text())


def write(path, cert):
    path.write_text(json.dumps(cert))
    return path


def without_timing(cert):
    out = {k: v for k, v in cert.items() if k not in ("merged", "shard")}
    out["results"] = [{k: v for k, v in r.items() if k not in TIMING + ("samples",)}
                      for r in cert["results"]]
    return out


def r_method(result):
    return result.get("method", "")


def assert_same_as_single(merged, single):
    assert without_timing(merged) == without_timing(single)
    for rm, rs in zip(merged["results"], single["results"]):
        assert len(rm["samples"]) == len(rs["samples"])
        for a, b in zip(rm["samples"], rs["samples"]):
            # PGD seeds each sample's random starts from its global index, so a shard
            # attacks a sample exactly as the single run does
            skip = ("margin_lower", "counterexample", "seconds")   # timing differs
            assert {k: v for k, v in a.items() if k not in skip} == \
                   {k: v for k, v in b.items() if k not in skip}, a["index"]
            assert ("counterexample" in a) == ("counterexample" in b), a["index"]
            if "counterexample" in a:
                ca, cb = (np.frombuffer(base64.b64decode(s["counterexample"]), np.float32)
                          for s in (a, b))
                assert np.max(np.abs(ca - cb)) <= 1e-5, a["index"]
            assert len(a["margin_lower"]) == len(b["margin_lower"])
            # auto_LiRPA's CROWN depends a little on which samples share a batch
            # (measured up to 1.1e-4 on a soft-pruned model, 0 on others); IBP does not
            tol = 1e-6 if r_method(rs) == "ibp" else 1e-3
            assert all(abs(x - y) <= tol for x, y in zip(a["margin_lower"], b["margin_lower"])), \
                (a["index"], a["margin_lower"], b["margin_lower"])


# -- shards and the merge ------------------------------------------------------------


def test_shards_are_their_slices_with_global_indices(run):
    _, _, _, shards = run
    for i, path in enumerate(shards):
        cert = load(path)
        assert cert["shard"]["index"] == i and cert["shard"]["count"] == SHARDS
        assert cert["shard"]["total"] == N
        for r in cert["results"]:
            assert [s["index"] for s in r["samples"]] == list(range(i, N, SHARDS))
            assert r["n"] == len(shard_indices(i, SHARDS, N))


def test_merged_shards_equal_the_single_run_and_pass_the_check(run, tmp_path):
    root, model, single, shards = run
    out = tmp_path / "merged.json"
    # any order of the files
    code, stdout, err = vst("certificate", "merge", *reversed(shards), "--out", out)
    assert code == 0, err
    assert f"n={N}" in stdout
    merged = load(out)
    assert merged["merged"] == {"shards": SHARDS, "total": N}
    assert_same_as_single(merged, single)
    code, stdout, err = vst("verify", model, "--certificate", out)
    assert code == 0, err
    assert "certificate matches model" in stdout
    # the gate on the merged result: merge and check alike
    acc = merged["results"][0]["verified_acc"]
    assert 0 < acc < 1
    code, _, err = vst("verify", model, "--certificate", out, "--min-verified", acc)
    assert code == 0, err
    code, _, err = vst("verify", model, "--certificate", out, "--min-verified", acc + 0.01)
    assert_one_line(code, err, 1, f"n={N}")
    code, _, err = vst("certificate", "merge", *shards, "--out", tmp_path / "g.json",
                       "--min-verified", min(1.0, acc + 0.01))
    assert_one_line(code, err, 1, "gate failed")
    assert (tmp_path / "g.json").is_file()       # written, then gated


def test_a_shard_certificate_passes_the_check_as_a_shard(run):
    _, model, _, shards = run
    code, stdout, err = vst("verify", model, "--certificate", shards[1])
    assert code == 0, err
    assert "certificate matches model" in stdout


def test_the_gate_on_a_shard_applies_to_the_shard(run, tmp_path):
    _, model, _, shards = run
    acc = load(shards[0])["results"][0]["verified_acc"]
    code, _, err = vst("verify", model, "--eps", EPS, "--n", N, "--shard", f"0/{SHARDS}",
                       "--min-verified", min(1.0, acc + 0.01))
    assert_one_line(code, err, 1, f"shard 0/{SHARDS}")


@pytest.mark.parametrize("text", ["3/3", "0/0", "3", "a/2", "1.5/2", "-1/2", "1/2/3", ""])
def test_bad_shard_values_are_one_line_errors(run, text):
    _, model, _, _ = run
    code, _, err = vst("verify", model, "--shard", text)
    assert_one_line(code, err, 2, "--shard")


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1) and parse_shard(" 2 / 5 ") == (2, 5)


def test_an_empty_shard_is_an_error(run):
    _, model, _, _ = run
    code, _, err = vst("verify", model, "--n", 2, "--shard", "2/3")
    assert_one_line(code, err, 2, "empty")


# -- shards that do not belong together: exit 2 -----------------------------------------


def edit(path, tmp_path, fn, name=None):
    cert = load(path)
    fn(cert)
    return write(tmp_path / (name or f"edited_{path.name}"), cert)


def move_sample(src_shard, r=0):
    """Give shard 1 a sample of another shard (overlap), or take one away (gap)."""
    def fn(c):
        c["results"][r]["samples"].append(copy.deepcopy(src_shard["results"][r]["samples"][0]))
    return fn


def drop_sample(c):
    c["results"][0]["samples"].pop()


MISMATCH = {
    "other weights": (set_at(["model", "weights_sha256"], "0" * 64), "other weights"),
    "other data": (set_at(["dataset", "sha256"], "1" * 64), "other data"),
    "other eps": (set_at(["results", 1, "eps"], 0.07), "other eps list"),
    "other method": (set_at(["results", 0, "method"], "ibp"), "other method"),
    "other versions": (set_at(["versions", "vst"], "0.0.0"), "other versions"),
    "other shard count": (set_at(["shard", "count"], SHARDS + 1), f"one of {SHARDS} shards"),
    "other total": (set_at(["shard", "total"], N - 1), "slices"),
    "shard given twice": (set_at(["shard", "index"], 0), "given twice"),
    "missing sample": (drop_sample, "missing"),
}


@pytest.mark.parametrize("case", MISMATCH)
def test_mismatched_shards_exit_2(run, tmp_path, case):
    _, _, _, shards = run
    fn, needle = MISMATCH[case]
    bad = edit(shards[1], tmp_path, fn)
    out = tmp_path / "m.json"
    code, _, err = vst("certificate", "merge", shards[0], bad, shards[2], "--out", out)
    assert_one_line(code, err, 2, needle)
    assert not out.exists()


def test_overlapping_and_missing_shards_exit_2(run, tmp_path):
    _, _, _, shards = run
    out = tmp_path / "m.json"
    code, _, err = vst("certificate", "merge", *shards[:2], "--out", out)
    assert_one_line(code, err, 2, f"shard 2/{SHARDS} missing")
    code, _, err = vst("certificate", "merge", *shards, shards[0], "--out", out)
    assert_one_line(code, err, 2, "given twice")
    overlap = edit(shards[1], tmp_path, move_sample(load(shards[0])))
    code, _, err = vst("certificate", "merge", shards[0], overlap, shards[2], "--out", out)
    assert_one_line(code, err, 2, "overlaps")
    code, _, err = vst("certificate", "merge", overlap, shards[0], shards[2], "--out", out)
    assert_one_line(code, err, 2, "outside its shard")
    assert not out.exists()


def test_an_unsharded_certificate_is_not_a_shard(run, tmp_path):
    root, _, _, shards = run
    code, _, err = vst("certificate", "merge", root / "single.json", *shards,
                       "--out", tmp_path / "m.json")
    assert_one_line(code, err, 2, "not a shard certificate")


# -- forged claims: exit 1 -----------------------------------------------------------


def forge_verified(c):
    s = next(s for r in c["results"] for s in r["samples"] if s["verdict"] != "verified")
    s.pop("counterexample", None)
    s.update(verdict="verified", method="crown", margin_lower=[1.0] * 9)
    resum(c)


def test_a_forged_merged_certificate_fails_the_check(run, tmp_path):
    _, model, _, shards = run
    out = tmp_path / "merged.json"
    assert vst("certificate", "merge", *shards, "--out", out)[0] == 0
    forged = edit(out, tmp_path, forge_verified)
    code, _, err = vst("verify", model, "--certificate", forged)
    assert_one_line(code, err, 1, "claim does not re-check")
    # a shard certificate passed off as the whole run, or missing a sample
    as_whole = edit(shards[0], tmp_path, lambda c: c.pop("shard"), "as_whole.json")
    code, _, err = vst("verify", model, "--certificate", as_whole)
    assert_one_line(code, err, 1, "must be the first n=")
    short = edit(shards[0], tmp_path, lambda c: (drop_sample(c), resum(c)), "short.json")
    code, _, err = vst("verify", model, "--certificate", short)
    assert_one_line(code, err, 1, f"must be shard 0/{SHARDS}")
    forged_shard = edit(shards[2], tmp_path, forge_verified, "forged_shard.json")
    code, _, err = vst("verify", model, "--certificate", forged_shard)
    assert_one_line(code, err, 1, "claim does not re-check")
    bad = edit(shards[0], tmp_path, set_at(["shard", "index"], SHARDS), "bad_shard.json")
    code, _, err = vst("verify", model, "--certificate", bad)
    assert_one_line(code, err, 2, "shard.index")
