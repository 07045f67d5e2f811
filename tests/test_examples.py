"""The worked examples in examples/: each config validates and runs on a tiny schedule.

The full schedules are measured in benchmarks/sensor_examples.py; here each
example trains for a few epochs and is verified on a slice of its test split,
and one goes through `vst build` end to end (QEMU included).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import require_tools
from toolchain.config import config_from_dict, load_config
from toolchain.data import BUILTIN

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))
TINY = {"epochs": 2, "warmup_epochs": 1, "ramp_epochs": 1, "threads": 1}


def test_the_worked_examples_exist():
    assert {p.stem for p in EXAMPLES} >= {"japanesevowels", "basicmotions"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_config_validates(path):
    cfg = load_config(path)
    assert cfg.data.dataset == path.stem and cfg.data.dataset in BUILTIN
    assert cfg.model.arch == "conv1d" and cfg.target.name == "cortex-m4"
    assert (cfg.sparsity.mode, cfg.sparsity.density) == ("structured", 0.3)
    assert cfg.train.val_size < BUILTIN[path.stem].n_train  # leaves training data
    assert f"vst build --config examples/{path.name} --target cortex-m4" in path.read_text()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_trains_and_verifies_on_a_tiny_schedule(path, tmp_path):
    from toolchain.data import load_dataset
    from toolchain.train.trainer import train
    from toolchain.verify import verify_model

    raw = tomllib.loads(path.read_text())
    raw["train"].update(TINY)
    cfg = config_from_dict(raw)
    model = train(cfg, tmp_path, show_progress=False)
    data = load_dataset(cfg.data.dataset)
    assert model.network.input_shape == data.input_shape
    assert model.record["dataset"] == path.stem
    assert model.record["input_scaling"] == data.scaling_info()
    assert abs(model.record["density"] - cfg.sparsity.density) < 0.02
    (res,) = verify_model(model, data, [cfg.verify.eps], cfg.verify.method, 20,
                          show_progress=False)
    assert res.n == 20 and res.eps == cfg.verify.eps
    assert {s.verdict for s in res.samples} <= {"verified", "falsified", "unknown"}


@pytest.mark.slow
@pytest.mark.toolchain
def test_basicmotions_example_builds_end_to_end(tmp_path):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    text = (Path(__file__).resolve().parents[1] / "examples" / "basicmotions.toml").read_text()
    for key in ("epochs", "warmup_epochs", "ramp_epochs"):
        text, n = re.subn(rf"^{key} = \d+", f"{key} = {TINY[key]}", text, flags=re.M)
        assert n == 1, key
    text = text.replace("[train]\n", "[train]\nthreads = 1\n")
    (tmp_path / "vst.toml").write_text(text)
    res = subprocess.run([sys.executable, "-m", "toolchain", "-q", "build", "--config",
                          str(tmp_path / "vst.toml"), "--target", "cortex-m4", "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dataset"] == "basicmotions" and summary["model"] == "conv1d"
    assert summary["input_scaling"]["range"] == list(BUILTIN["basicmotions"].scaling().range)
    assert summary["verify"]["n"] == 40 and summary["target"]["benched"]
    assert summary["target"]["instructions_per_inference"] > 0
    assert "eps in the data's own units" in (tmp_path / "out" / "report.md").read_text()
