"""VNN-LIB and VNN-COMP I/O: `vst verify --vnnlib PROP.vnnlib|instances.csv`,
result files, property certificates, unit-dimension ONNX inputs, --data reshape."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from helpers import assert_one_line, train_tiny
from toolchain.cli import cli
from toolchain.models.onnx_import import import_onnx
from toolchain.verify.engine import decode_input
from toolchain.verify.vnncomp import plan_instances, read_instances
from toolchain.verify.vnnlib_reader import read_vnnlib

EPS = 0.08      # the tiny model gives every verdict here: verified, attacked, misclassified
N = 12


def vst(*args):
    result = CliRunner().invoke(cli, ["-q", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    return result


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny trained model, its ONNX export and N VNN-LIB properties (vst export)."""
    root = tmp_path_factory.mktemp("vnncomp")
    model, _ = train_tiny(root)
    res = vst("export", root / "run" / "model.vst", "--format", "onnx,vnnlib",
              "--out", root / "exp", "--eps", EPS, "--vnnlib-n", N)
    assert res.exit_code == 0, res.stderr
    return root, model


def _property(path, lower, upper, n_out, unsafe: str) -> None:
    rows = [f"(declare-const X_{i} Real)" for i in range(len(lower))]
    rows += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        rows += [f"(assert (>= X_{i} {float(lo)!r}))", f"(assert (<= X_{i} {float(hi)!r}))"]
    path.write_text("\n".join(rows + [unsafe]) + "\n")


# ------------------------------------------------------------------ round trip

def test_own_export_round_trips_with_the_data_set_verdicts(exported, tmp_path):
    root, _ = exported
    exp = root / "exp"
    res = vst("verify", root / "run" / "model.vst", "--eps", EPS, "--n", N,
              "--json", tmp_path / "data.json")
    assert res.exit_code == 0, res.stderr
    res = vst("verify", "--vnnlib", exp / "instances.csv", "--json", tmp_path / "prop.json",
              "--results", tmp_path / "res")
    assert res.exit_code == 0, res.stderr
    data = json.loads((tmp_path / "data.json").read_text())["results"][0]["samples"]
    prop = json.loads((tmp_path / "prop.json").read_text())
    assert prop["format"] == "vst-property-certificate" and prop["n"] == N
    verdicts = [s["verdict"] for s in data]
    results = [e["result"] for e in prop["instances"]]
    assert {"verified", "falsified"} <= set(verdicts)
    for v, r in zip(verdicts, results):
        # the same proofs; what the data-set attack breaks, the property attack breaks too
        assert (v == "verified") == (r == "unsat"), (verdicts, results)
        if v == "falsified":
            assert r == "sat", (verdicts, results)
    for k, e in enumerate(prop["instances"]):
        assert e["vnnlib"].endswith(f"vnnlib/prop_{k}.vnnlib") and e["model"].endswith(".onnx")
        first = (tmp_path / "res" / f"model__prop_{k}.txt").read_text().splitlines()[0]
        assert first == e["result"]
    rows = (tmp_path / "res" / "results.csv").read_text().splitlines()
    assert [r.split(",")[2] for r in rows] == results
    # MODEL given with a csv replaces its networks: the .vst gives the same answers
    res = vst("verify", root / "run" / "model.vst", "--vnnlib", exp / "instances.csv",
              "--json", tmp_path / "vst.json", "--n", 4)
    assert res.exit_code == 0, res.stderr
    again = json.loads((tmp_path / "vst.json").read_text())["instances"]
    assert [e["result"] for e in again] == results[:4]
    assert all(e["model"].endswith("model.vst") for e in again)
    # the gate counts unsat (here on the re-checked certificate)
    frac = results.count("unsat") / N
    res = vst("verify", "--vnnlib", exp / "instances.csv", "--certificate",
              tmp_path / "prop.json", "--min-verified", frac + 0.01)
    assert_one_line(res.exit_code, res.stderr, 1, "verified (unsat)")


def test_instances_csv_paths_and_timeouts(tmp_path):
    (tmp_path / "b").mkdir()
    csv = tmp_path / "b" / "instances.csv"
    csv.write_text("net.onnx,props/p0.vnnlib,30\n\n../other.onnx, p1.vnnlib ,5.5\n")
    rows = read_instances(csv)
    assert [(r.model, r.vnnlib, r.timeout, r.row) for r in rows] == [
        (tmp_path / "b" / "net.onnx", tmp_path / "b" / "props" / "p0.vnnlib", 30.0, 1),
        (tmp_path / "b" / "../other.onnx", tmp_path / "b" / "p1.vnnlib", 5.5, 3)]
    assert [i.timeout for i in plan_instances(csv, None, 10.0)] == [10.0, 5.5]  # --timeout caps
    single = plan_instances(tmp_path / "p.vnnlib", tmp_path / "m.onnx", None)
    assert single[0].timeout == 60.0


# ------------------------------------------------------------------ sat / unsat files

def test_sat_result_file_and_certificate(exported, tmp_path):
    root, model = exported
    onnx_path = root / "exp" / "model.onnx"
    x = np.load(root / "tiny.npz")["x_test"][0].reshape(-1)
    n_out = model.network.num_classes
    unsafe = "(assert (or " + " ".join(f"(and (>= Y_{j} Y_0))" for j in range(1, n_out)) + "))"
    _property(tmp_path / "wide.vnnlib", np.zeros_like(x), np.ones_like(x), n_out, unsafe)
    _property(tmp_path / "point.vnnlib", x, x, n_out, _robust(model, x))
    (tmp_path / "instances.csv").write_text(f"{onnx_path},wide.vnnlib,20\n"
                                            f"{onnx_path},point.vnnlib,20\n")
    res = vst("verify", "--vnnlib", tmp_path / "instances.csv", "--results", tmp_path / "r",
              "--json", tmp_path / "c.json")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "r" / "model__point.txt").read_text() == "unsat\n"
    text = (tmp_path / "r" / "model__wide.txt").read_text()
    lines = text.splitlines()
    assert text.endswith(")\n") and lines[0] == "sat"
    pairs = [re.fullmatch(r"(?:\(\(| \()([XY])_(\d+) ([^\s()]+)\)\)?", line) for line in lines[1:]]
    assert all(pairs), lines[:3]
    names = [(m.group(1), int(m.group(2))) for m in pairs]
    assert names == [("X", i) for i in range(x.size)] + [("Y", j) for j in range(n_out)]
    assert lines[1].startswith("((X_0 ") and lines[-1].endswith("))")
    values = np.array([float(m.group(3)) for m in pairs])
    adv, out = values[:x.size].astype(np.float32), values[x.size:].astype(np.float32)
    assert np.array_equal(adv.astype(np.float64), values[:x.size])   # exact float32 values
    entry = json.loads((tmp_path / "c.json").read_text())["instances"][0]
    assert entry["verdict"] == "falsified" and entry["result"] == "sat"
    shape = model.network.input_shape
    assert np.array_equal(decode_input(entry["counterexample"], shape).numpy().ravel(), adv)
    with torch.no_grad():       # the Y values are the network's outputs on X: re-checked
        y = import_onnx(onnx_path).torch_module().eval()(torch.from_numpy(adv.reshape(
            (1,) + shape))).numpy().ravel()
    assert np.allclose(y, out, atol=1e-5)
    assert read_vnnlib(tmp_path / "wide.vnnlib").unsafe(y)
    assert vst("certificate", "check", tmp_path / "c.json").exit_code == 0
    res = vst("verify", "--vnnlib", tmp_path / "instances.csv", "--min-verified", 0.6)
    assert_one_line(res.exit_code, res.stderr, 1, "verified (unsat) 50.0% < required 60.0%")
    # complete verification gives the same answers, in the same files
    res = vst("verify", "--vnnlib", tmp_path / "instances.csv", "--method", "complete",
              "--results", tmp_path / "rc", "--timeout", 20)
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "rc" / "model__point.txt").read_text() == "unsat\n"
    assert (tmp_path / "rc" / "model__wide.txt").read_text().startswith("sat\n((X_0 ")


def test_undecided_result_files_are_one_word(tmp_path):
    from toolchain.verify.vnncomp import Instance, Outcome
    from toolchain.verify.vnncomp_results import result_names, result_text

    inst = Instance(tmp_path / "a" / "net.onnx", tmp_path / "p.vnnlib", 10.0)
    for word in ("unsat", "unknown", "timeout"):
        assert result_text(Outcome(inst, word, "none", 1.0)) == word + "\n"


def test_result_names_are_unique_per_instance_and_deterministic(tmp_path):
    """Same base names in other folders, the same instance twice, a stem that looks
    like a numbered twin, names that differ only in case: one file each."""
    from toolchain.verify.vnncomp import Instance
    from toolchain.verify.vnncomp_results import result_names

    inst = lambda m, p: Instance(tmp_path / m, tmp_path / p, 10.0)  # noqa: E731
    plan = [inst("a/net.onnx", "a/p.vnnlib"), inst("b/net.onnx", "b/p.vnnlib"),
            inst("net.onnx", "p__2.vnnlib"), inst("a/net.onnx", "a/p.vnnlib"),
            inst("NET.onnx", "P.vnnlib"), inst("net.onnx", "other.vnnlib")]
    names = result_names(plan)
    assert len({n.casefold() for n in names}) == len(plan)
    assert names == result_names(list(plan))                       # the same every run
    assert names[2] == "net__p__2.txt" and names[5] == "net__other.txt"  # unique: kept plain
    assert all(re.fullmatch(r"(net|NET)__(p|P)__[0-9a-f]{8}\.txt", n)
               for n in names[:2] + names[3:5]), names


def test_results_csv_quotes_names_with_commas(exported, tmp_path):
    import csv

    root, _ = exported
    odd = tmp_path / 'net,"1".onnx'
    odd.write_bytes((root / "exp" / "model.onnx").read_bytes())
    prop = tmp_path / "p,1.vnnlib"
    prop.write_text((root / "exp" / "vnnlib" / "prop_0.vnnlib").read_text())
    res = vst("verify", odd, "--vnnlib", prop, "--method", "crown", "--results", tmp_path / "r")
    assert res.exit_code in (0, 1), res.stderr
    rows = list(csv.reader((tmp_path / "r" / "results.csv").open(newline="")))
    assert len(rows) == 1 and len(rows[0]) == 6, rows
    network, prop_name, result, _, _, name = rows[0]
    assert network == str(odd) and prop_name == str(prop)
    assert (tmp_path / "r" / name).read_text().splitlines()[0] == result


def test_ctrl_c_writes_results_csv_for_the_instances_done(exported, tmp_path, monkeypatch):
    from toolchain.verify import vnncomp

    root, _ = exported
    real, calls = vnncomp._bounds_then_attack, []

    def interrupted_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(vnncomp, "_bounds_then_attack", interrupted_third)
    out = tmp_path / "r"
    res = vst("verify", "--vnnlib", root / "exp" / "instances.csv", "--method", "crown",
              "--results", out, "--n", 5)
    assert res.exit_code == 130, res.stderr
    rows = (out / "results.csv").read_text().splitlines()
    assert [r.split(",")[-1] for r in rows] == ["model__prop_0.txt", "model__prop_1.txt"]
    assert sorted(p.name for p in out.iterdir()) == ["model__prop_0.txt", "model__prop_1.txt",
                                                      "results.csv"]


def test_outputs_that_are_inputs_or_each_other_are_refused_first(exported, tmp_path):
    root, _ = exported
    csv_path = root / "exp" / "instances.csv"
    prop = root / "exp" / "vnnlib" / "prop_1.vnnlib"
    before = prop.read_text()
    (tmp_path / "link.vnnlib").symlink_to(prop)
    for args, needle in (
            (["--json", tmp_path / "r" / "results.csv", "--results", tmp_path / "r"],
             "are the same file"),
            (["--json", tmp_path / "r" / "model__prop_0.txt", "--results", tmp_path / "r"],
             "are the same file"),
            (["--json", tmp_path / "link.vnnlib"], "would overwrite the property of instance 2"),
            (["--json", csv_path], "would overwrite --vnnlib")):
        res = vst("verify", "--vnnlib", csv_path, "--n", 3, "--method", "crown", *args)
        assert_one_line(res.exit_code, res.stderr, 2, needle)
    assert prop.read_text() == before and not (tmp_path / "r").exists()


def _robust(model, x):
    """The unsafe region 'another class is at least the predicted one' at x."""
    with torch.no_grad():
        label = int(model.torch_module().eval()(torch.from_numpy(
            x.reshape((1,) + model.network.input_shape))).argmax())
    others = [j for j in range(model.network.num_classes) if j != label]
    return "(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in others) + "))"


# ------------------------------------------------------------------ certificate check

def test_certificate_check_accepts_good_and_rejects_tampered(exported, tmp_path):
    root, _ = exported
    csv = root / "exp" / "instances.csv"
    cert = tmp_path / "c.json"
    assert vst("verify", "--vnnlib", csv, "--json", cert, "--n", 6).exit_code == 0
    good = json.loads(cert.read_text())
    res = vst("certificate", "check", cert)
    assert res.exit_code == 0 and "re-checked: 6 properties" in res.stdout, res.stderr
    assert vst("verify", "--vnnlib", csv, "--n", 6, "--certificate", cert).exit_code == 0
    sat = next(k for k, e in enumerate(good["instances"]) if e["verdict"] == "falsified")

    def tampered(edit):
        c = json.loads(json.dumps(good))
        edit(c)
        c["counts"] = {v: sum(e["verdict"] == v for e in c["instances"])
                       for v in ("verified", "falsified", "unknown")}
        c["verified_acc"] = c["counts"]["verified"] / c["n"]
        path = tmp_path / "t.json"
        path.write_text(json.dumps(c))
        return vst("certificate", "check", path)

    def claim_verified(c):
        e = c["instances"][sat]
        e.update(verdict="verified", result="unsat", procedure="crown")
        del e["counterexample"]

    def move_counterexample(c):
        e = c["instances"][sat]
        x = decode_input(e["counterexample"], (1, 28, 28))
        from toolchain.verify.engine import encode_input
        e["counterexample"] = encode_input(x * 0 + 2.0)          # outside the box

    for edit, needle in ((claim_verified, "claimed verified"),
                         (move_counterexample, "not a counterexample")):
        res = tampered(edit)
        assert_one_line(res.exit_code, res.stderr, 1, needle)
    forged = json.loads(json.dumps(good))
    forged["verified_acc"] = 1.0
    (tmp_path / "f.json").write_text(json.dumps(forged))
    res = vst("certificate", "check", tmp_path / "f.json")
    assert_one_line(res.exit_code, res.stderr, 1, "claims verified_acc")
    # the certificate names its files by hash: a changed property does not pass
    moved = tmp_path / "copy"
    moved.mkdir()
    (moved / "vnnlib").mkdir()
    (moved / "model.onnx").write_bytes((root / "exp" / "model.onnx").read_bytes())
    for k in range(6):
        text = (root / "exp" / "vnnlib" / f"prop_{k}.vnnlib").read_text()
        (moved / "vnnlib" / f"prop_{k}.vnnlib").write_text(text + ("; edited\n" if k == 0 else ""))
    c = json.loads(json.dumps(good))
    for k, e in enumerate(c["instances"]):
        e["model"], e["vnnlib"] = "model.onnx", f"vnnlib/prop_{k}.vnnlib"
    (moved / "c.json").write_text(json.dumps(c))
    res = vst("certificate", "check", moved / "c.json")
    assert_one_line(res.exit_code, res.stderr, 1, "vnnlib_sha256")
    res = vst("verify", root / "run" / "model.vst", "--certificate", cert)
    assert_one_line(res.exit_code, res.stderr, 2, "certificate check")


def test_the_checker_not_the_certificate_bounds_the_re_check_time(exported, tmp_path,
                                                                   monkeypatch):
    """A claimed proof with ``timeout: 1e12`` is redone within the checker's limit
    (300 s, or --timeout); not proved again in that time is exit 1."""
    from toolchain.verify import complete

    root, _ = exported
    cert = tmp_path / "c.json"
    assert vst("verify", "--vnnlib", root / "exp" / "instances.csv", "--json", cert,
               "--n", 6).exit_code == 0
    c = json.loads(cert.read_text())
    e = next(e for e in c["instances"] if e["verdict"] == "verified")
    e.update(procedure="milp", timeout=1e12)        # no bound is tried: the proof is redone
    cert.write_text(json.dumps(c))
    asked = []

    def out_of_time(*args, timeout, **kwargs):
        asked.append(timeout)
        return complete.Decision("unknown", "none", timeout, reason=f"timeout after "
                                 f"{timeout:.0f} s: disjunct 1 of 9 open")

    monkeypatch.setattr(complete, "decide", out_of_time)
    res = vst("certificate", "check", cert)
    assert_one_line(res.exit_code, res.stderr, 1, "not proved again within 300 s")
    res = vst("certificate", "check", cert, "--timeout", 2)
    assert_one_line(res.exit_code, res.stderr, 1, "not proved again within 2 s")
    assert asked == [300.0, 2.0]
    res = vst("certificate", "check", cert, "--timeout", "inf")
    assert_one_line(res.exit_code, res.stderr, 2, "--timeout")


# ------------------------------------------------------------------ unit-dimension ONNX

def _graph(tmp_path, name, in_shape, front, weight, bias):
    """x (in_shape) -> front nodes -> Gemm(weight, bias) -> y (1, K)."""
    inits = {"w": weight, "b": bias}
    nodes = []
    current = "x"
    for k, (op, target) in enumerate(front):
        out = f"f{k}"
        if op == "Reshape":
            inits[f"s{k}"] = np.array(target, np.int64)
            nodes.append(helper.make_node("Reshape", [current, f"s{k}"], [out]))
        else:
            nodes.append(helper.make_node("Flatten", [current], [out], axis=1))
        current = out
    if len(in_shape) == 1:
        nodes += [helper.make_node("MatMul", [current, "wt"], ["h"]),
                  helper.make_node("Add", ["h", "b"], ["y"])]
        inits["wt"] = weight.T
        del inits["w"]
    else:
        nodes.append(helper.make_node("Gemm", [current, "w", "b"], ["y"], transB=1))
    out_shape = [weight.shape[0]] if len(in_shape) == 1 else [1, weight.shape[0]]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v, v.dtype if v.dtype == np.int64 else np.float32), k)
         for k, v in inits.items()])
    path = tmp_path / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


UNIT_DIM_GRAPHS = {
    "n784x1": ([1, 784, 1], [("Reshape", [1, 784])], (784, 1)),
    "n1x1x28x28": ([1, 1, 28, 28], [("Flatten", None)], (1, 28, 28)),
    "flat784": ([784], [], (784,)),
    "reshape_front": ([1, 784], [("Reshape", [1, 1, 28, 28]), ("Reshape", [1, -1])], (1, 28, 28)),
    "batch_flatten": (["N", 784], [("Flatten", None)], (784,)),
}


def test_unit_dimension_inputs_import_and_take_the_same_box(exported, tmp_path):
    import onnxruntime as ort

    root, _ = exported
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(0, 0.05, (10, 784)), rng.normal(0, 0.1, 10)
    x = np.load(root / "tiny.npz")["x_test"][:4].reshape(4, -1)
    texts = {}
    for name, (in_shape, front, shape) in UNIT_DIM_GRAPHS.items():
        path = _graph(tmp_path, name, in_shape, front, weight, bias)
        model = import_onnx(path)
        assert model.network.input_shape == shape, name
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed_shape = [d if isinstance(d, int) else 1 for d in in_shape]
        for sample in x:
            want = sess.run(None, {"x": sample.reshape(feed_shape)})[0].ravel()
            with torch.no_grad():
                got = model.torch_module().eval()(torch.from_numpy(
                    sample.reshape((1,) + shape))).numpy().ravel()
            assert np.allclose(got, want, atol=1e-5), name
        # one 784-input property (vst's own export) runs on every layout, C order
        res = vst("verify", path, "--vnnlib", root / "exp" / "vnnlib" / "prop_0.vnnlib",
                  "--results", tmp_path / name, "--method", "ibp")
        assert res.exit_code == 0, (name, res.stderr)
        texts[name] = (tmp_path / name / f"{name}__prop_0.txt").read_text()
    assert len(set(texts.values())) == 1, texts      # the same answer, to the last digit


def test_data_is_reshaped_to_the_model_input(exported, tmp_path):
    root, _ = exported
    rng = np.random.default_rng(1)
    path = _graph(tmp_path, "unit", [1, 784, 1], [("Reshape", [1, 784])],
                  rng.normal(0, 0.05, (10, 784)), np.zeros(10))
    res = vst("verify", path, "--data", root / "tiny.npz", "--eps", 0.01, "--n", 8,
              "--method", "ibp")
    assert res.exit_code == 0, res.stderr
    small = _graph(tmp_path, "small", [1, 100, 1], [("Reshape", [1, 100])],
                   rng.normal(size=(10, 100)), np.zeros(10))
    res = vst("verify", small, "--data", root / "tiny.npz", "--eps", 0.01)
    assert_one_line(res.exit_code, res.stderr, 2, "784 values")


# ------------------------------------------------------------------ bad input

def test_bad_inputs_are_one_line_and_write_nothing(exported, tmp_path):
    root, _ = exported
    onnx_path, prop = root / "exp" / "model.onnx", root / "exp" / "vnnlib" / "prop_0.vnnlib"
    few = tmp_path / "few.vnnlib"
    _property(few, [0, 0], [1, 1], 10, "(assert (>= Y_1 Y_0))")
    outs = tmp_path / "few_outputs.vnnlib"
    _property(outs, np.zeros(784), np.ones(784), 3, "(assert (>= Y_1 Y_0))")
    cols = tmp_path / "cols.csv"
    cols.write_text(f"{onnx_path},{prop}\n")
    badt = tmp_path / "badt.csv"
    badt.write_text(f"{onnx_path},{prop},soon\n")
    missing = tmp_path / "missing.csv"
    missing.write_text(f"{onnx_path},{prop},10\n{onnx_path},nope.vnnlib,10\n")
    cases = [
        ((onnx_path, "--vnnlib", tmp_path / "nope.vnnlib"), "property file not found"),
        (("--vnnlib", tmp_path / "nope.csv"), "instances file not found"),
        (("--vnnlib", prop), "pass MODEL"),
        ((), "pass MODEL"),
        ((tmp_path / "nope.onnx", "--vnnlib", prop), "model not found"),
        ((onnx_path, "--vnnlib", few), "declares 2 inputs X_i"),
        ((onnx_path, "--vnnlib", outs), "declares 3 outputs Y_j"),
        (("--vnnlib", cols), "expected onnx,vnnlib,timeout"),
        (("--vnnlib", badt), "timeout must be"),
        (("--vnnlib", missing), "property file not found"),
        ((onnx_path, "--vnnlib", prop, "--eps", "0.1"), "--eps does not apply"),
        ((onnx_path, "--vnnlib", prop, "--timeout", "0"), "--timeout must be"),
        ((onnx_path, "--results", tmp_path / "r"), "--results applies with --vnnlib"),
    ]
    for args, needle in cases:
        res = vst("verify", *args, "--results", tmp_path / "r", "--json", tmp_path / "c.json")
        assert_one_line(res.exit_code, res.stderr, 2, needle)
        assert not (tmp_path / "r").exists() and not (tmp_path / "c.json").exists(), args


def test_a_counterexample_must_also_hold_on_onnxruntime(tmp_path, monkeypatch):
    """A sat is only reported when onnxruntime, running the file itself, agrees."""
    from toolchain.verify import ort_check
    from toolchain.verify.vnncomp import load_instances, plan_instances, run_instances

    rng = np.random.default_rng(2)
    path = _graph(tmp_path, "lin", [1, 16], [], rng.normal(size=(3, 16)), np.zeros(3))
    prop = tmp_path / "p.vnnlib"
    _property(prop, np.zeros(16), np.ones(16), 3, "(assert (or (and (>= Y_1 Y_0)) "
                                                   "(and (>= Y_2 Y_0))))")
    loaded = load_instances(plan_instances(prop, path, 10.0))
    assert run_instances(loaded, "crown")[0].result == "sat"
    real = ort_check.unsafe_on_onnxruntime
    monkeypatch.setattr(ort_check, "unsafe_on_onnxruntime",
                        lambda runner, p, x: (False, real(runner, p, x)[1]))
    outcome = run_instances(loaded, "crown")[0]
    assert outcome.result == "unknown" and "not unsafe on onnxruntime" in outcome.reason
