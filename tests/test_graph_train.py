"""Training graph models: every method and mode, exact resume, and `vst train` of a config graph."""

import subprocess
import sys

import pytest
import torch

from helpers import tiny_config, tiny_mnist
from toolchain.compact import compact, max_abs_diff
from toolchain.config import config_from_dict
from toolchain.models import layers as L
from toolchain.models.modelfile import load_model
from toolchain.train import trainer

# conv -> depthwise -> pointwise, a residual Add over the block, average pooling,
# global average pooling, linear: every new operator in one small network
LAYERS = [
    {"kind": "conv2d", "out_channels": 6, "kernel": 3, "stride": 2, "padding": 1},
    {"kind": "batchnorm"}, {"kind": "relu", "name": "stem"},
    {"kind": "conv2d", "out_channels": 6, "kernel": 3, "padding": 1, "groups": 6},
    {"kind": "batchnorm"}, {"kind": "relu"},
    {"kind": "conv2d", "out_channels": 6, "kernel": 1}, {"kind": "batchnorm"},
    {"kind": "add", "input": "stem"}, {"kind": "relu"},
    {"kind": "avgpool2d", "kernel": 2},
    {"kind": "conv2d", "out_channels": 8, "kernel": 3, "padding": 1}, {"kind": "relu"},
    {"kind": "globalavgpool"}, {"kind": "linear"},
]
TRAIN = {"epochs": 3, "warmup_epochs": 1, "ramp_epochs": 1, "batch_size": 40, "val_size": 40}


def write_config(path, head: str) -> None:
    """``head`` (TOML sections) then LAYERS as [[model.layers]] tables."""
    lines = [head, "[model]"]
    for table in LAYERS:
        lines.append("[[model.layers]]")
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return tiny_mnist(tmp_path_factory.mktemp("data") / "tiny.npz", n_train=200, n_test=40)


def _cfg(data_path, **sparsity):
    base = tiny_config(data_path, train=TRAIN, sparsity={
        "update_every": 2, "hydra_score_epochs": 1, "hydra_finetune_epochs": 1, **sparsity})
    return config_from_dict({**{k: v for k, v in base.to_dict().items() if k != "model"},
                             "model": {"layers": LAYERS}})


@pytest.mark.parametrize("method,mode", [
    ("verisparse-gradual", "structured"), ("verisparse-gradual", "unstructured"),
    ("verisparse", "structured"), ("verisparse", "unstructured"),
    ("hydra", "structured"), ("hydra", "unstructured"), ("dense", "structured")])
def test_every_method_trains_a_graph_model(data_path, tmp_path, method, mode):
    torch.set_num_threads(1)
    model = trainer.train(_cfg(data_path, method=method, mode=mode), tmp_path,
                          show_progress=False)
    assert not model.network.is_chain
    assert any(isinstance(layer, L.Add) for layer in model.network.layers)
    density = model.record["density"]
    assert density == 1.0 if method == "dense" else density == pytest.approx(0.3, abs=0.06)
    for name, mask in model.masks.items():                 # the masks hold on the weights
        assert not model.state[name][mask == 0].any(), name
    assert all(torch.isfinite(v).all() for v in model.state.values())
    small, report = compact(model)
    x = torch.rand(40, 1, 28, 28)
    assert max_abs_diff(model, small, x) <= 1e-5
    if mode == "structured" and method != "dense":
        assert report["after"]["macs"] < 0.6 * report["before"]["macs"]


@pytest.mark.parametrize("method", ["verisparse", "verisparse-gradual"])
def test_graph_training_resumes_bit_exact(data_path, tmp_path, method):
    torch.set_num_threads(1)
    cfg = _cfg(data_path, method=method, update_every=3)
    full = trainer.train(cfg, tmp_path / "full", show_progress=False)
    trainer.train(cfg, tmp_path / "cut", show_progress=False, stop_after=2)
    resumed = trainer.train(cfg, tmp_path / "cut", resume=True, show_progress=False)
    assert resumed.weights_hash() == full.weights_hash()
    assert all(torch.equal(resumed.masks[k], full.masks[k]) for k in full.masks)


def test_vst_train_of_a_config_graph_end_to_end(data_path, tmp_path):
    write_config(tmp_path / "vst.toml", f'[data]\ndataset = "{data_path}"\n[train]\nepochs = 2\n'
                 'warmup_epochs = 1\nramp_epochs = 1\nbatch_size = 50\nval_size = 40\nthreads = 1\n')
    res = subprocess.run([sys.executable, "-m", "toolchain", "-q", "train", "--config",
                          "vst.toml", "--out", "run"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr
    model = load_model(tmp_path / "run" / "model.vst")
    assert model.network.inputs[8] == (2, 7)                # the Add: stem + the block
    assert model.record["config"]["model"]["arch"] == "custom"
    assert 0.2 < model.record["density"] < 0.4 and model.masks
