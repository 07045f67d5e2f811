"""End to end: `vst build` on a tiny config, with the firmware run in QEMU."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import require_tools
from helpers import tiny_mnist

SUMMARY_KEYS = {
    "dataset": None, "model": None, "eps": None,
    "sparsity": {"mode", "density", "params_total", "params_nonzero"},
    "train": {"seconds", "epochs", "clean_acc", "device", "threads", "cpus"},
    "verify": {"method", "eps", "n", "clean_acc", "verified_acc"},
    "compact": {"params_before", "params_after", "macs_before", "macs_after", "max_abs_diff",
                "verified_acc"},
    "export": {"onnx", "tflite_float", "tflite_int8", "c_dir", "onnx_max_abs_diff",
               "tflite_int8_agreement"},
    "target": {"name", "flash_bytes", "ram_bytes", "instructions_per_inference",
               "parity_max_abs_diff", "top1_agreement"},
    "artifacts": {"model", "compact_model", "certificate", "report"},
    "seconds": None,
}


def config(tmp_path, min_verified=0.0, formats=None, gates=""):
    data = tiny_mnist(tmp_path / "tiny.npz")
    export = "" if formats is None else f"formats = {json.dumps(formats)}"
    text = f"""
[data]
dataset = "{data}"
[model]
arch = "cnn_small"
channels = [4, 8]
widths = [16]
[sparsity]
update_every = 5
[train]
epochs = 6
warmup_epochs = 3
ramp_epochs = 2
batch_size = 32
lr = 0.002
val_size = 64
eps = 0.06
[verify]
eps = 0.02
[export]
vnnlib_n = 5
{export}
[gates]
min_verified = {min_verified}
{gates}
"""
    path = tmp_path / f"vst_{min_verified}_{len(export)}_{len(gates)}.toml"
    path.write_text(text)
    return path


def vst(*args):
    return subprocess.run([sys.executable, "-m", "toolchain", "-q", *map(str, args)],
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    root = tmp_path_factory.mktemp("build")
    res = vst("build", "--config", config(root), "--target", "cortex-m4", "--out", root / "out")
    return root, res


def test_build_writes_everything(built):
    root, res = built
    assert res.returncode == 0, res.stderr[-2000:]
    out = root / "out"
    summary = json.loads((out / "summary.json").read_text())
    for key, sub in SUMMARY_KEYS.items():
        assert key in summary, key
        if sub:
            assert sub <= set(summary[key]), (key, sub - set(summary[key]))
    for rel in summary["artifacts"].values():
        assert (out / rel).exists(), rel
    for rel in (summary["export"][k] for k in ("onnx", "tflite_float", "tflite_int8", "c_dir")):
        assert (out / rel).exists(), rel
    assert summary["compact"]["params_after"] < summary["compact"]["params_before"]
    assert summary["compact"]["max_abs_diff"] <= 1e-5
    assert summary["export"]["onnx_max_abs_diff"] <= 1e-5
    # the firmware really ran in QEMU and agreed with the host
    t = summary["target"]
    assert t["name"] == "cortex-m4" and t["instructions_per_inference"] > 1000
    assert t["top1_agreement"] == 1.0 and 0 < t["flash_bytes"] < t["flash_budget"]
    for frac in ("verified_acc", "clean_acc"):
        assert 0.0 <= summary["verify"][frac] <= 1.0
    assert "vst build" in (out / "report.html").read_text()
    assert (out / "plots" / "verify.png").stat().st_size > 5000
    # DSP kernels on cortex-m4, bit-exact, timed per operator, in the report too
    assert summary["export"]["c"]["int8"]["kernels"] == "dsp"
    assert t["int8_parity_max_steps"] == 0
    layers = t["variants"]["int8"]["layers"]
    assert [op["kind"] for op in layers] == ["conv", "conv", "fc", "fc"]
    assert sum(op["instructions"] for op in layers) <= t["instructions_per_inference"]
    report = (out / "report.md").read_text()
    assert f"int8 {layers[0]['name']} (" in report and "per MAC" in report
    # the int8 network as flashed has its own certificate, naming the .tflite and C
    cert = json.loads((out / "certificate_int8.json").read_text())
    assert cert["format"] == "vst-certificate-int8" and cert["c_source"]["sha256"]
    assert cert["results"][0]["verified_acc"] == summary["verify"]["int8_verified_acc"]
    assert 0.0 <= summary["verify"]["int8_verified_acc"] <= summary["export"]["int8_acc"]
    assert "int8 network as flashed" in report


def test_unchanged_inputs_are_skipped_and_gate_fails(built):
    root, _ = built
    res = vst("build", "--config", config(root, min_verified=0.999), "--target", "cortex-m4",
              "--out", root / "out")
    assert res.returncode == 1, res.stderr[-2000:]
    assert "gate failed: verified" in res.stderr.strip().splitlines()[-1]
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert summary["stages"]["ran"] == []          # only the gate changed
    assert set(summary["stages"]["skipped"]) >= {"train", "verify", "compact", "export", "bench"}
    assert summary["gates"]["passed"] is False
    # a cached re-run says so and keeps the real cost of what it reused
    times = summary["stages"]["times"]
    assert times["train"]["reused"] and times["train"]["seconds"] > 1 and times["train"]["at"]
    assert summary["seconds"] >= times["train"]["seconds"] > summary["run_seconds"]
    assert summary["stages"]["reused"].startswith("reused train (")
    assert "this run" in (root / "out" / "report.md").read_text()


def test_bad_target_and_config_exit_2(tmp_path):
    res = vst("build", "--target", "cortex-m5", "--out", tmp_path / "o")
    assert res.returncode == 2 and "did you mean 'cortex-m" in res.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochs = -1\n")
    res = vst("build", "--config", bad, "--out", tmp_path / "o")
    assert res.returncode == 2 and "train.epochs must be >= 1" in res.stderr
    assert not (tmp_path / "o" / "summary.json").exists()


def _numbers(out):
    """verified_acc per certificate in ``out`` and in its summary.json."""
    read = lambda name: json.loads((out / name).read_text())  # noqa: E731
    summary = read("summary.json")
    return ((summary["verify"]["verified_acc"], summary["compact"]["verified_acc"],
             summary["verify"]["int8_verified_acc"]),
            tuple(read(c)["results"][0]["verified_acc"] for c in
                  ("certificate_sparse.json", "certificate.json", "certificate_int8.json")))


def test_reused_stages_read_their_numbers_from_their_artifacts(built):
    """The memo holds keys and hashes, not numbers: copies of numbers in it are
    ignored, an entry of the wrong shape reruns its stage, and an artifact edited
    behind the memo's back (hash differs) is made again."""
    root, _ = built
    out = root / "out"
    memo = json.loads((out / ".vst-stages.json").read_text())
    for stage in ("reverify", "verify_int8"):      # numbers planted as an old memo held them
        memo[stage]["result"] = {"verified_acc": 1.0, "eps": 0.02, "n": 80, "clean_acc": 1.0,
                                 "counts": {}, "seconds": 1.0}
    memo["verify"] = {"key": 5, "outputs": "everything", "seconds": "a while"}
    memo["compact"]["seconds"] = float("inf")
    (out / ".vst-stages.json").write_text(json.dumps(memo))
    cert = json.loads((out / "certificate_int8.json").read_text())
    cert["results"][0]["verified_acc"] = 1.0        # edited: no longer what the stage wrote
    (out / "certificate_int8.json").write_text(json.dumps(cert))
    res = vst("build", "--config", config(root), "--target", "cortex-m4", "--out", out)
    assert res.returncode == 0, res.stderr[-2000:]
    summary, certs = _numbers(out)
    assert summary == certs and 1.0 not in certs
    stages = json.loads((out / "summary.json").read_text())["stages"]
    assert {"verify", "compact", "verify_int8"} <= set(stages["ran"])
    assert {"train", "reverify", "export", "bench"} <= set(stages["skipped"])


@pytest.mark.parametrize("memo", ["[1, 2]", '{"s": [1]}', '{"s": {"key": "k", "outputs": [], '
                                  '"seconds": 1, "at": "x"}}', "\u00ff{", '"text"'])
def test_a_memo_of_the_wrong_shape_reruns_the_stage(tmp_path, memo):
    from toolchain.stage_memo import MEMO_FILE, Stages

    (tmp_path / "a.txt").write_text("artifact")
    (tmp_path / MEMO_FILE).write_text(memo)
    runs = []
    stages = Stages(tmp_path)
    number = stages.run("s", "k", [tmp_path / "a.txt"], lambda: runs.append(1),
                        lambda: (tmp_path / "a.txt").read_text())
    assert runs == [1] and stages.ran == ["s"] and number == "artifact"
    again = Stages(tmp_path)             # the memo it wrote is reused, with the artifact's hash
    assert again.run("s", "k", [tmp_path / "a.txt"], lambda: runs.append(2), lambda: 7) == 7
    assert runs == [1] and again.skipped == ["s"]


def test_onnx_only_export_builds_with_nulls(built, tmp_path):
    """[export] formats = ["onnx"]: no .tflite, so no int8 numbers (null), no int8
    stage, and nothing left of an earlier export with more formats."""
    root, _ = built
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)        # train .. reverify are reused
    res = vst("build", "--config", config(root, formats=["onnx"]), "--no-bench", "--out", out)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"]["ran"] == ["export"]
    e = summary["export"]
    assert e["onnx"] and e["onnx_max_abs_diff"] <= 1e-5
    for key in ("tflite_float", "tflite_int8", "c_dir", "tflite_int8_agreement", "int8_acc"):
        assert key in e and e[key] is None, key
    assert summary["verify"]["int8_verified_acc"] is None
    assert sorted(p.name for p in (out / "export").iterdir()) == ["export.json", "model.onnx"]
    assert not (out / "certificate_int8.json").exists()


@pytest.mark.parametrize("formats,flags,gates,needle", [
    (["onnx"], [], "", 'add "c" to [export] formats'),
    (["onnx", "vnnlib"], ["--no-bench"], "min_int8_verified = 0.5",
     "[gates] min_int8_verified needs the int8 .tflite"),
    (["onnx"], ["--no-bench"], "min_int8_agreement = 0.9",
     "[gates] min_int8_agreement needs the int8 .tflite")])
def test_impossible_export_plans_exit_2_before_training(tmp_path, formats, flags, gates, needle):
    out = tmp_path / "o"
    res = vst("build", "--config", config(tmp_path, formats=formats, gates=gates), *flags,
              "--out", out)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
